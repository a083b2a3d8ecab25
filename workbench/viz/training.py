"""Live training curves: a ``workbench.train`` callback that draws loss, learning rate and mIoU.

    plot = TrainingPlot()                      # in JupyterLab: the figure appears and updates in place
    workbench.train(cfg, callbacks=[plot])
    plot.figure()                              # the final curves, a matplotlib Figure

The training loop calls every callback with ``("step", {"step", "losses", "lr", ...})`` after each
optimiser step and ``("eval", {"step", "metrics"})`` after each evaluation; nothing is read back from
log files. The plot keeps the history and re-draws one display (an IPython display handle updated in
place) every ``every`` steps and after every evaluation, so a notebook cell shows one live figure.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure


class TrainingPlot:
    """A ``train(cfg, callbacks=[...])`` callback: live loss / learning rate / validation metric curves.

    Args:
        metric: the validation figure to plot (a key of the evaluation's metrics, e.g. "mIoU").
        every: re-draw every this many steps (evaluations always re-draw).
        display: show the figure in the notebook (an IPython display updated in place); False keeps
            only the history (scripts, tests).
    """

    def __init__(self, metric: str = "mIoU", every: int = 10, display: bool = True) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.metric, self.every, self.display = metric, every, display
        self.steps: list[int] = []
        self.losses: dict[str, list[float]] = {}  # name -> one value per step in ``steps``
        self.lr: list[float] = []
        self.eval_steps: list[int] = []
        self.values: list[float] = []  # ``metric`` at ``eval_steps``
        self.redraws = 0
        self._handle: Any = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "step":
            self.steps.append(int(info["step"]))
            for name, value in info["losses"].items():
                self.losses.setdefault(name, []).append(float(value))
            self.lr.append(float(info["lr"]))
            if info["step"] % self.every == 0:
                self.refresh()
        elif event == "eval":
            if self.metric not in info["metrics"]:
                raise ValueError(
                    f"the evaluation reports {sorted(k for k in info['metrics'] if isinstance(info['metrics'][k], float))}, "
                    f"not {self.metric!r}: pass TrainingPlot(metric=...)"
                )
            self.eval_steps.append(int(info["step"]))
            self.values.append(float(info["metrics"][self.metric]))
            self.refresh()

    def figure(self) -> Figure:
        """Three panels against the step: the losses, the learning rate and the validation metric."""
        figure = Figure(figsize=(11, 3.2), layout="constrained")
        loss_axes, lr_axes, metric_axes = figure.subplots(1, 3)
        for name, values in self.losses.items():
            loss_axes.plot(self.steps, values, label=name, linewidth=1.2 if name == "loss" else 0.8)
        loss_axes.set(xlabel="step", ylabel="loss", title="training losses")
        if self.losses:
            loss_axes.legend(fontsize="x-small")
        lr_axes.plot(self.steps, self.lr, color="tab:green")
        lr_axes.set(xlabel="step", ylabel="learning rate", title="learning rate")
        lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        metric_axes.plot(self.eval_steps, self.values, "o-", color="tab:red")
        metric_axes.set(xlabel="step", ylabel=self.metric, title=f"validation {self.metric}")
        if self.steps:
            for axes in (loss_axes, lr_axes, metric_axes):
                axes.set_xlim(0, max(self.steps[-1], 1))
        return figure

    def refresh(self) -> None:
        """Re-draw the notebook display (created on the first call); nothing when ``display`` is off."""
        self.redraws += 1
        if not self.display:
            return
        from IPython.display import Image, display

        from workbench.viz.explorers import figure_png

        picture = Image(figure_png(self.figure()))
        if self._handle is None:
            self._handle = display(picture, display_id=True)
        else:
            self._handle.update(picture)
