"""Notebook explorers: click a pixel, see where it looks, which group holds it, what decides its class.

Three ipywidgets views over a Predictor's explain session (``workbench.engine.Predictor``: passed in,
never imported, so viz stays below the engine), each a thin layer over functions that exist already:

- ``AttentionExplorer``: attention of a clicked pixel per layer and head (``Predictor.attention_at``),
  through the groups at GPViT ungrouping sites (``Predictor.effective_attention_at``), or its attention
  rollout through a ViT (``Predictor.rollout_at``).
- ``GroupExplorer``: a GPViT GP block's hard group assignment (``Predictor.group_assignment``,
  ``group_assignment_figure``) or one group's soft map (``Predictor.group_maps``, ``heatmap_figure``).
- ``AttributionExplorer``: captum attribution of "class c over a pixel, a box or the predicted mask"
  (``workbench.viz.attribution.attribute``, ``heatmap_figure(signed=True)``).

    explorer = AttentionExplorer(predictor, "photo.jpg")
    explorer.widget          # display in JupyterLab; click the left image
    explorer.click(120, 40)  # what a click does, for scripts and tests: returns the (H, W) map

Each explorer is a plain object holding its widgets; the methods a click or a control calls are public,
so it works headless. Clicks are real browser clicks, caught by ``ipyevents`` on the left image (the
image at its own resolution); the right image shows the result. A bad action in the browser (a class
with no predicted pixel, say) shows its one-line error in the status line rather than in the kernel log.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
import matplotlib
import numpy as np
import torch
from ipyevents import Event
from matplotlib.figure import Figure
from PIL import Image

from workbench.models.layers import pad_for
from workbench.viz.attribution import METHODS, Attribution, attribute
from workbench.viz.figures import group_assignment_figure, heatmap_figure
from workbench.viz.groups import gp_sites
from workbench.viz.overlay import overlay

# Integrated gradients' default 50 path points make a click take many seconds; 16 keep the explorer
# interactive (the convergence delta in ``explorer.attribution.delta`` says how close that is).
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"integrated_gradients": {"n_steps": 16}}

MEAN = "mean"  # the head selector's "average over heads" entry

# The colour the explorers mark a clicked pixel, a box or a selected group with.
MARK = np.array([0, 255, 255], dtype=np.uint8)


def pixel_of_click(event: Mapping[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    """Image pixel (y, x) of an ipyevents click on an image widget showing an image of ``size`` (H, W).

    For an ``Image`` widget ipyevents sends ``dataX``/``dataY`` already in the picture's natural pixels
    (it scales the click by natural over displayed size in the browser), and the explorers' pictures
    are the image at its own resolution, so those are image pixels. Without them (another front end)
    the widget-relative ``relativeX``/``relativeY`` are scaled by the displayed ``boundingRectWidth``/
    ``Height``. Rounding in the browser can land one past the last pixel: clamped.
    """
    height, width = size
    if "dataX" in event and "dataY" in event:
        x, y = float(event["dataX"]), float(event["dataY"])
    elif {"relativeX", "relativeY", "boundingRectWidth", "boundingRectHeight"} <= set(event):
        x = float(event["relativeX"]) * width / max(float(event["boundingRectWidth"]), 1.0)
        y = float(event["relativeY"]) * height / max(float(event["boundingRectHeight"]), 1.0)
    else:
        raise ValueError(
            f"a click event needs dataX/dataY or relativeX/Y with boundingRectWidth/Height, got {sorted(event)}"
        )
    return min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)


def png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes for an ``ipywidgets.Image``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def figure_png(figure: Figure, dpi: int = 80) -> bytes:
    """A matplotlib figure -> PNG bytes (Agg, no pyplot)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def heat_overlay(
    image: np.ndarray, heat: torch.Tensor, cmap: str = "inferno", alpha: float = 0.5
) -> np.ndarray:
    """Heat map (H, W) coloured on [min, max] with ``cmap`` and blended over ``image`` (H, W, 3) uint8:
    the click path's picture, milliseconds where a matplotlib figure with a colour bar takes ~0.1 s."""
    values = heat.detach().cpu().float().numpy()
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    colours = (matplotlib.colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)
    return overlay(image, colours, alpha)


def mark_pixel(image: np.ndarray, y: int, x: int, arm: int = 3) -> np.ndarray:
    """A copy of ``image`` with a cross of half-length ``arm`` pixels at (y, x)."""
    marked = image.copy()
    marked[max(y - arm, 0) : y + arm + 1, x] = MARK
    marked[y, max(x - arm, 0) : x + arm + 1] = MARK
    return marked


def mark_box(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of ``image`` with the outline of ``box`` (top, left, bottom, right; exclusive ends)."""
    top, left, bottom, right = box
    marked = image.copy()
    marked[[top, bottom - 1], left:right] = MARK
    marked[top:bottom, [left, right - 1]] = MARK
    return marked


def mark_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A copy of ``image`` with the pixels of ``mask`` (H, W) bool tinted."""
    tinted = image.copy()
    tinted[mask] = overlay(image[mask][None], np.broadcast_to(MARK, (1, int(mask.sum()), 3)), alpha)[0]
    return tinted


def _heads(site: Any) -> list[tuple[str, str | int]]:
    """Head selector options of a cached site: the mean, then each head (q is (B, heads, N, d))."""
    return [(MEAN, MEAN)] + [(f"head {h}", h) for h in range(site.q.shape[1])]


class _Explorer:
    """What the three explorers share: the session, the clickable image, the result and a status line."""

    def __init__(self, predictor: Any, image: Any, display_width: int) -> None:
        self.predictor = predictor
        self.prediction = predictor.set_image(image)
        self.session = predictor.session
        self.image: np.ndarray = self.session.image  # (H, W, 3) uint8, as read
        layout = widgets.Layout(width=f"{display_width}px")
        self.picture = widgets.Image(value=png(self.image), format="png", layout=layout)
        self.output = widgets.Image(value=png(self.image), format="png", layout=layout)
        self.status = widgets.Label()
        self._settling = False
        self.events = Event(source=self.picture, watched_events=["click"])
        self.events.on_dom_event(self.on_event)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[:2]

    def click(self, y: int, x: int) -> Any:
        raise NotImplementedError

    def on_event(self, event: Mapping[str, Any]) -> None:
        """The ipyevents handler: a click on the picture does ``click`` at the image pixel under it."""
        if event.get("type") == "click":
            self._report(lambda: self.click(*pixel_of_click(event, self.size)))

    def _report(self, action: Callable[[], Any]) -> None:
        """Run a browser-side action; its ValueError goes to the status line, where the user sees it."""
        try:
            action()
        except ValueError as error:
            self.status.value = f"⚠ {error}"
        else:
            self.status.value = ""

    def _on_change(self, *controls: widgets.Widget) -> None:
        """Re-draw when any of ``controls`` changes value (unless ``_settle`` is resetting them)."""
        for control in controls:
            control.observe(lambda _: self._settling or self._report(self.render), names="value")

    @contextmanager
    def _settle(self) -> Iterator[None]:
        """Change several controls (new options reset values) and re-draw once, after all of them."""
        self._settling = True
        try:
            yield
        finally:
            self._settling = False
        self._report(self.render)

    def _own_session(self) -> None:
        """Queries read the predictor's session: take it back if another explorer set another image."""
        if self.predictor.session is not self.session:
            self.predictor.set_image(self.image)
            self.session = self.predictor.session

    def _check_pixel(self, y: int, x: int) -> tuple[int, int]:
        height, width = self.size
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f"pixel ({y}, {x}) is outside the {height}x{width} image")
        return int(y), int(x)

    def render(self) -> None:
        raise NotImplementedError


class AttentionExplorer(_Explorer):
    """Where a clicked pixel looks: per layer, one head or their mean, or rolled out through a ViT.

    Layers are the predictor's attention sites that a pixel queries: every site but GPViT's grouping
    (group tokens query there; ``GroupExplorer`` shows them). At a GPViT ungrouping site the map is the
    pixel's effective attention through the groups (the mixer left out). Rollout (all layers, heads
    averaged) is offered where every site is self-attention (SETR, a ViT), and disabled otherwise.
    """

    def __init__(
        self,
        predictor: Any,
        image: Any,
        *,
        cmap: str = "inferno",
        alpha: float = 0.5,
        display_width: int = 384,
    ) -> None:
        super().__init__(predictor, image, display_width)
        self.cmap, self.alpha = cmap, alpha
        cached = self.session.cached
        self.sites = {name: site for name, site in cached.items() if site.layout.kind != "grouping"}
        if not self.sites:
            raise ValueError(f"{type(predictor.model).__name__} has no attention site that a pixel queries")
        can_roll = all(site.layout.kind == "self" for site in cached.values())
        first = next(iter(self.sites))
        self.layer = widgets.Dropdown(options=list(self.sites), value=first, description="layer")
        self.head = widgets.Dropdown(options=_heads(self.sites[first]), value=MEAN, description="head")
        self.rollout = widgets.ToggleButton(
            value=False,
            description="rollout",
            disabled=not can_roll,
            tooltip="attention rollout through all layers"
            if can_roll
            else "rollout needs self-attention (a ViT)",
        )
        self.query: tuple[int, int] | None = None
        self.heat: torch.Tensor | None = None
        self.layer.observe(self._on_layer, names="value")
        self.rollout.observe(self._on_rollout, names="value")
        self._on_change(self.head)
        controls = widgets.HBox([self.layer, self.head, self.rollout])
        self.widget = widgets.VBox([controls, widgets.HBox([self.picture, self.output]), self.status])

    def _on_layer(self, change: Mapping[str, Any]) -> None:
        with self._settle():  # the new layer's heads; the mean again
            self.head.options = _heads(self.sites[change["new"]])
            self.head.value = MEAN

    def _on_rollout(self, change: Mapping[str, Any]) -> None:
        self.layer.disabled = self.head.disabled = change["new"]
        self._report(self.render)

    def click(self, y: int, x: int) -> torch.Tensor:
        """Query image pixel (y, x): its map (H, W) under the current controls, shown on the right."""
        self.query = self._check_pixel(y, x)
        self.render()
        return self.heat

    def attention(self, y: int, x: int) -> torch.Tensor:
        """(H, W) on the image: pixel (y, x)'s rollout, effective attention or attention at the layer."""
        self._own_session()
        head = None if self.head.value == MEAN else self.head.value
        layer = self.layer.value
        if self.rollout.value:
            return self.predictor.rollout_at(y, x)
        if self.sites[layer].layout.kind == "ungrouping":
            return self.predictor.effective_attention_at(y, x, layer.removesuffix(".ungrouping"), head)
        return self.predictor.attention_at(y, x, layer, head)

    def render(self) -> None:
        """Re-draw the right image for the current query and controls (the bare image before a click)."""
        if self.query is None:
            return
        self.heat = self.attention(*self.query)
        self.output.value = png(
            mark_pixel(heat_overlay(self.image, self.heat, self.cmap, self.alpha), *self.query)
        )


class GroupExplorer(_Explorer):
    """GPViT's group tokens: a GP block's hard assignment of the pixels or one group's soft map.

    Click a pixel to select the group that holds it (hard assignment, spec §5) and see its pixels lit on
    the left; the right shows every group (hard) or the selected group's grouping attention (soft).
    """

    def __init__(self, predictor: Any, image: Any, *, alpha: float = 0.5, display_width: int = 384) -> None:
        blocks = list(gp_sites(dict.fromkeys(predictor.sites())))  # refused before the forward pass
        if not blocks:
            raise ValueError(
                f"{type(predictor.model).__name__} has no GP blocks (grouping + ungrouping sites): "
                "the group explorer needs a GPViT"
            )
        super().__init__(predictor, image, display_width)
        self.alpha = alpha
        self._assignments: dict[str, torch.Tensor] = {}
        self._maps: dict[str, torch.Tensor] = {}
        self._hard_png: dict[str, bytes] = {}
        self.block = widgets.Dropdown(options=blocks, value=blocks[0], description="GP block")
        self.mode = widgets.ToggleButtons(options=["hard", "soft"], value="hard")
        grouping = self.session.cached[f"{blocks[0]}.grouping"]
        self.head = widgets.Dropdown(options=_heads(grouping), value=MEAN, description="head")
        self.group = widgets.BoundedIntText(value=0, min=0, max=self.groups - 1, description="group")
        self.block.observe(self._on_block, names="value")
        self._on_change(self.mode, self.head, self.group)
        controls = widgets.HBox([self.block, self.mode, self.head, self.group])
        self.widget = widgets.VBox([controls, widgets.HBox([self.picture, self.output]), self.status])
        self.render()

    def assignment(self) -> torch.Tensor:
        """The current block's hard assignment (H, W) int64 on the image (computed once per block)."""
        block = self.block.value
        if block not in self._assignments:
            self._own_session()
            self._assignments[block] = self.predictor.group_assignment(block)
        return self._assignments[block]

    def group_maps(self) -> torch.Tensor:
        """The current block's grouping attention (heads, G, H, W) on the image (once per block)."""
        block = self.block.value
        if block not in self._maps:
            self._own_session()
            self._maps[block] = self.predictor.group_maps(f"{block}.grouping")
        return self._maps[block]

    @property
    def groups(self) -> int:
        """G, the number of group tokens of the current block."""
        return self.group_maps().shape[1]

    def _on_block(self, change: Mapping[str, Any]) -> None:
        with self._settle():
            self.head.options = _heads(self.session.cached[f"{change['new']}.grouping"])
            self.head.value = MEAN
            self.group.max = self.groups - 1  # clamps the selected group into the block's G

    def select_group(self, group: int) -> None:
        """Select group ``group`` of the current block and re-draw."""
        if isinstance(group, bool) or not isinstance(group, int | np.integer) or not 0 <= group < self.groups:
            raise ValueError(
                f"group must be an int in [0, {self.groups}) for {self.block.value}, got {group!r}"
            )
        if self.group.value == group:
            self.render()
        self.group.value = int(group)  # re-renders through the observer

    def select_group_at(self, y: int, x: int) -> int:
        """Select the group that holds image pixel (y, x) in the current block; returns it."""
        y, x = self._check_pixel(y, x)
        group = int(self.assignment()[y, x])
        self.select_group(group)
        return group

    click = select_group_at

    def render(self) -> None:
        """Left: the selected group's pixels lit. Right: all groups (hard) or the group's soft map."""
        block, group = self.block.value, self.group.value
        self.picture.value = png(mark_mask(self.image, (self.assignment() == group).numpy(), self.alpha))
        if self.mode.value == "hard":
            if block not in self._hard_png:
                figure = group_assignment_figure(
                    self.image, [self.assignment()], titles=[block], alpha=self.alpha
                )
                self._hard_png[block] = figure_png(figure)
            self.output.value = self._hard_png[block]
            return
        maps = self.group_maps()
        heads = maps.mean(0) if self.head.value == MEAN else maps[self.head.value]
        figure = heatmap_figure(
            self.image,
            heads[group],
            alpha=self.alpha,
            title=f"{block}, group {group}",
            label="grouping attention",
        )
        self.output.value = figure_png(figure)


class AttributionExplorer(_Explorer):
    """What makes the model call a region class c: captum attributions on the image, signed.

    The region is a clicked pixel, a box from two clicks (opposite corners), or the pixels predicted as
    the class (a click there picks the class under the pixel). ``method`` is one of
    ``attribution.METHODS``; the default, saliency, is one backward pass, so "run on click" stays fast.
    ``options``: per method, keywords for ``attribute`` (default ``DEFAULT_OPTIONS``).
    """

    def __init__(
        self,
        predictor: Any,
        image: Any,
        *,
        method: str = "saliency",
        options: Mapping[str, Mapping[str, Any]] | None = None,
        alpha: float = 0.6,
        display_width: int = 384,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        unknown = sorted(set(options or {}) - set(METHODS))
        if unknown:
            raise ValueError(f"options are keyed by method, one of {sorted(METHODS)}; got {unknown}")
        super().__init__(predictor, image, display_width)
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.alpha = alpha
        self.inputs = pad_for(predictor.model, predictor.preprocess(self.image)[1])
        names = predictor.classes.names
        present = np.bincount(self.prediction.labels.ravel(), minlength=len(names))
        self.target = widgets.Dropdown(
            options=[(name, index) for index, name in enumerate(names)],
            value=int(present.argmax()),
            description="class",
        )
        self.region_mode = widgets.ToggleButtons(options=["pixel", "box", "mask"], value="pixel")
        self.method = widgets.Dropdown(options=list(METHODS), value=method, description="method")
        self.run_on_click = widgets.Checkbox(value=True, description="run on click")
        self.button = widgets.Button(description="run", button_style="primary")
        self.button.on_click(lambda _: self._report(self.run))
        self.region: tuple[int, ...] | None = None  # image pixels: (y, x) or (top, left, bottom, right)
        self.corner: tuple[int, int] | None = None  # the first corner of a box being drawn
        self.attribution: Attribution | None = None
        self.heat: torch.Tensor | None = None
        self.region_mode.observe(self._on_region_mode, names="value")
        self.target.observe(lambda _: self._report(self._show_region), names="value")
        controls = widgets.HBox([self.target, self.region_mode, self.method, self.button, self.run_on_click])
        self.widget = widgets.VBox([controls, widgets.HBox([self.picture, self.output]), self.status])

    def _on_region_mode(self, _: Mapping[str, Any]) -> None:
        self.region = self.corner = None
        self._report(self._show_region)

    def click(self, y: int, x: int) -> Attribution | None:
        """What a click at image pixel (y, x) does in the current region mode; runs the attribution when
        the region is complete and "run on click" is on (returns it, else None)."""
        y, x = self._check_pixel(y, x)
        mode = self.region_mode.value
        if mode == "pixel":
            self.region = (y, x)
        elif mode == "mask":
            self.target.value = int(self.prediction.labels[y, x])
        elif self.corner is None:
            self.corner, self.region = (y, x), None
        else:
            (y0, x0), self.corner = self.corner, None
            self.region = (min(y, y0), min(x, x0), max(y, y0) + 1, max(x, x0) + 1)
        self._show_region()
        if self.run_on_click.value and self.corner is None:
            return self.run()
        return None

    def region_mask(self) -> np.ndarray:
        """(H, W) bool on the image: the current region (a pixel, a box or the predicted class's mask)."""
        mask = np.zeros(self.size, dtype=bool)
        if self.region_mode.value == "mask":
            return self.prediction.labels == self.target.value
        if self.region is None:
            raise ValueError("no region yet: click a pixel (or two corners of a box), or choose 'mask'")
        if len(self.region) == 2:
            mask[self.region] = True
        else:
            top, left, bottom, right = self.region
            mask[top:bottom, left:right] = True
        return mask

    def _input_region(self) -> tuple[int, ...] | torch.Tensor:
        """The region in the model input's pixels, where ``attribute`` works (``View.from_image``)."""
        view = self.session.view
        if self.region_mode.value == "mask":
            mask = torch.from_numpy(self.region_mask())
            if not mask.any():
                name = self.predictor.classes.names[self.target.value]
                raise ValueError(
                    f"no pixel is predicted as {name!r}: pick another class or a pixel/box region"
                )
            return self.session.region_on_input(mask.numpy(), self.inputs.shape[-2:])
        self.region_mask()  # refuses a missing region
        if len(self.region) == 2:
            return view.from_image(*self.region, self.size)
        top, left, bottom, right = self.region
        (top, left), (bottom, right) = (
            view.from_image(top, left, self.size),
            view.from_image(bottom - 1, right - 1, self.size),
        )
        return top, left, bottom + 1, right + 1

    def run(self) -> Attribution:
        """Attribute "class ``target`` over the region" with ``method``; the map (on the image) on the right."""
        self._own_session()
        attribution = attribute(
            self.predictor.model,
            self.inputs,
            int(self.target.value),
            self._input_region(),
            self.method.value,
            **self.options.get(self.method.value, {}),
        )
        self.attribution = attribution
        self.heat = self.session.view.to_image(attribution.map.cpu(), self.size, mode="bilinear")[0]
        self.render()
        return attribution

    def _show_region(self) -> None:
        """Left: the region drawn over the image (the first corner of a box as a cross)."""
        shown = self.image
        if self.corner is not None:
            shown = mark_pixel(shown, *self.corner)
        elif self.region_mode.value == "mask":
            shown = mark_mask(shown, self.region_mask(), 0.4)
        elif self.region is not None:
            shown = mark_pixel(shown, *self.region) if len(self.region) == 2 else mark_box(shown, self.region)
        self.picture.value = png(shown)

    def render(self) -> None:
        """Right: the last attribution, signed, over the image."""
        if self.heat is None:
            return
        name = self.predictor.classes.names[self.target.value]
        figure = heatmap_figure(
            self.image,
            self.heat,
            signed=True,
            alpha=self.alpha,
            title=f"{name}: {self.method.value}",
            label="attribution",
        )
        self.output.value = figure_png(figure)
