"""Text tables of models and metrics, for the CLI, the notebooks and the app alike."""

from __future__ import annotations

import fnmatch

from workbench.models import list_models, model_info
from workbench.models.complexity import build_on_meta, count_gmacs, count_params


def _diff(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{(ours / paper - 1) * 100:+.2f}%"


def _setting(kwargs: dict) -> str:
    return ", ".join(
        f"{value}px" if key == "img_size" else f"{value} {key.replace('num_', '')}"
        for key, value in kwargs.items()
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def models_table(pattern: str = "*") -> str:
    """Every registered model matching ``pattern``: measured parameters and GFLOPs beside the paper's."""
    names = [name for name in list_models() if fnmatch.fnmatch(name, pattern)]
    if not names:
        raise ValueError(f"no registered model matches {pattern!r}; models are: {', '.join(list_models())}")
    header = ("model", "params M", "paper", "diff", "GFLOPs", "paper", "diff", "counted at", "GFLOPs at")
    rows, notes = [], {}
    for name in names:
        info = model_info(name)
        paper = info.paper
        params = count_params(build_on_meta(name, **paper.params_setting())) / 1e6
        gflops = count_gmacs(build_on_meta(name, **paper.build_setting()), paper.input_size)
        if paper.note:
            notes.setdefault(paper.note, len(notes) + 1)
        mark = f" [{notes[paper.note]}]" if paper.note else ""
        rows.append(
            (
                name + mark,
                f"{params:.2f}",
                _fmt(paper.params_m),
                _diff(params, paper.params_m),
                f"{gflops:.2f}",
                _fmt(paper.gflops),
                _diff(gflops, paper.gflops),
                _setting(paper.params_setting()),
                f"{paper.input_size}px, {paper.num_classes} classes",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    lines.append("params: learnable parameters. GFLOPs: multiply-adds (10^9) of one forward pass, eval mode.")
    lines += [f"[{number}] {note}" for note, number in notes.items()]
    return "\n".join(lines)


def metrics_table(metrics: dict) -> str:
    """Per-class IoU / accuracy and the summary figures (or top-1 / top-5 for classifiers), as text."""
    if "IoU" not in metrics:
        return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
    width = max(len(name) for name in metrics["IoU"])
    lines = [f"{'class'.ljust(width)}    IoU    Acc"]
    for name, iou in metrics["IoU"].items():
        lines.append(f"{name.ljust(width)}  {iou:5.2f}  {metrics['Acc'][name]:5.2f}")
    lines.append(f"mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}  mAcc {metrics['mAcc']:.2f}")
    return "\n".join(lines)
