"""Matplotlib figures of what the models see: masks, heat maps, attention grids, GP groups, distances.

Every function builds a ``matplotlib.figure.Figure`` directly, never through pyplot: no global figure
state, nothing shown as a side effect, nothing left open. Notebooks display the returned figure, scripts
call ``figure.savefig``, the app converts it. Images are uint8 RGB arrays (H, W, 3); maps are
tensors or arrays at the image's resolution (``TokenGrid.to_image`` / ``View.to_image`` bring token
maps there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from workbench.data.classes import Classes, default_palette
from workbench.viz.overlay import colorize, overlay

ArrayLike = np.ndarray | torch.Tensor


def mask_figure(
    image: ArrayLike,
    labels: ArrayLike,
    classes: Classes,
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
    title: str | None = None,
) -> Figure:
    """Label map (H, W) blended over ``image`` (H, W, 3) in ``classes``' palette, with a legend of the
    classes present; ``ignore_index`` pixels show the bare image."""
    image, labels = _rgb(image), _numpy(labels).astype(np.int64)
    _check_size(image, labels, "labels")
    ignored = labels == ignore_index
    present = np.unique(labels[~ignored])
    if present.size and (present[0] < 0 or present[-1] >= len(classes)):
        raise ValueError(f"labels must lie in [0, {len(classes)}) or equal ignore_index {ignore_index}")
    blended = overlay(image, colorize(np.where(ignored, 0, labels), classes.palette), alpha)
    figure = Figure(layout="constrained")
    axes = figure.subplots()
    axes.imshow(np.where(ignored[..., None], image, blended))
    _bare(axes, title)
    handles = [
        Patch(facecolor=np.asarray(classes.palette[c]) / 255, edgecolor="black", label=classes.names[c])
        for c in present
    ]
    if handles:
        axes.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize="small",
            ncols=math.ceil(len(handles) / 25),  # long lists (ADE20K scenes) wrap into columns
        )
    return figure


def heatmap_figure(
    image: ArrayLike | None,
    heat: ArrayLike,
    *,
    alpha: float = 0.5,
    signed: bool = False,
    cmap: str | None = None,
    title: str | None = None,
    label: str | None = None,
) -> Figure:
    """Heat map (H, W) over ``image`` (H, W, 3) (or alone for None), with a colour bar titled ``label``.

    ``signed`` (attributions) centres a diverging colour map on zero, so that the sign reads from the
    colour; otherwise the map spans [min, max] of ``heat``.
    """
    heat = _numpy(heat).astype(np.float64)
    if heat.ndim != 2:
        raise ValueError(f"heat must be a (H, W) map, got shape {heat.shape}")
    figure = Figure(layout="constrained")
    axes = figure.subplots()
    if image is not None:
        image = _rgb(image)
        _check_size(image, heat, "heat")
        axes.imshow(image)
    else:
        alpha = 1.0
    if signed:
        bound = float(np.abs(heat).max()) or 1.0
        shown = axes.imshow(heat, cmap=cmap or "RdBu_r", vmin=-bound, vmax=bound, alpha=alpha)
    else:
        shown = axes.imshow(heat, cmap=cmap or "inferno", alpha=alpha)
    figure.colorbar(shown, ax=axes, label=label)
    _bare(axes, title)
    return figure


def click_figure(
    image: ArrayLike,
    maps: Mapping[str, ArrayLike],
    point: tuple[int, int],
    *,
    alpha: float = 0.6,
    cmap: str = "inferno",
    panel_size: float = 2.6,
) -> Figure:
    """Where one clicked pixel looks: the image with the click marked, then one panel per map
    (``maps``: title -> (H, W), e.g. one per model family) over the image, each on its own scale."""
    image = _rgb(image)
    if not maps:
        raise ValueError("maps is empty: expected at least one (H, W) map")
    y, x = point
    if not (0 <= y < image.shape[0] and 0 <= x < image.shape[1]):
        raise ValueError(f"point {point} is outside the {image.shape[0]}x{image.shape[1]} image")
    figure = Figure(figsize=(panel_size * (len(maps) + 1), panel_size), layout="constrained")
    panels = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
    panels[0].imshow(image)
    _bare(panels[0], "clicked pixel")
    for axes, (title, heat) in zip(panels[1:], maps.items(), strict=True):
        heat = _numpy(heat).astype(np.float64)
        _check_size(image, heat, f"map {title!r}")
        axes.imshow(image)
        axes.imshow(heat, cmap=cmap, alpha=alpha)
        _bare(axes, title)
    for axes in panels:
        axes.plot([x], [y], marker="+", color="cyan", markersize=12, markeredgewidth=2)
    return figure


def attention_grid_figure(
    maps: Mapping[str, ArrayLike],
    image: ArrayLike | None = None,
    *,
    alpha: float = 0.6,
    cmap: str = "inferno",
    cell_size: float = 1.6,
) -> Figure:
    """A grid of attention maps, one row per layer (``maps``: name -> (heads, H, W)) and one column per
    head, each map on its own colour scale (heads differ by orders of magnitude), over ``image``.

    Layers with fewer heads than the widest leave their last cells empty.
    """
    if not maps:
        raise ValueError("maps must name at least one layer")
    stacks = {name: _numpy(stack) for name, stack in maps.items()}
    for name, stack in stacks.items():
        if stack.ndim != 3:
            raise ValueError(f"maps[{name!r}] must be (heads, H, W), got shape {stack.shape}")
    heads = max(stack.shape[0] for stack in stacks.values())
    figure = Figure(figsize=(cell_size * heads, cell_size * len(stacks)), layout="constrained")
    grid = figure.subplots(len(stacks), heads, squeeze=False)
    rgb = None if image is None else _rgb(image)
    for row, (name, stack) in enumerate(stacks.items()):
        for head in range(heads):
            axes = grid[row, head]
            _bare(axes, f"head {head}" if row == 0 else None)
            if head == 0:
                axes.set_ylabel(name, fontsize="small")
            if head >= stack.shape[0]:
                axes.set_frame_on(False)
                continue
            if rgb is not None:
                _check_size(rgb, stack[head], f"maps[{name!r}]")
                axes.imshow(rgb)
            axes.imshow(stack[head], cmap=cmap, alpha=alpha if rgb is not None else 1.0)
    return figure


def group_assignment_figure(
    image: ArrayLike,
    assignments: Sequence[ArrayLike],
    *,
    titles: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> Figure:
    """Hard group assignments (H, W) of integer group ids, one panel per GP block, over ``image``.

    Group g has the same colour in every panel and every figure (the VOC colour scheme from its second
    colour on), so a reader can follow a group from block to block.
    """
    if not assignments:
        raise ValueError("assignments must hold at least one (H, W) map")
    titles = [f"GP block {i}" for i in range(len(assignments))] if titles is None else list(titles)
    if len(titles) != len(assignments):
        raise ValueError(f"{len(assignments)} assignment maps but {len(titles)} titles")
    image = _rgb(image)
    groups = [_numpy(a).astype(np.int64) for a in assignments]
    for index, assigned in enumerate(groups):
        _check_size(image, assigned, f"assignments[{index}]")
        if assigned.min() < 0:
            raise ValueError(f"assignments[{index}] holds negative group ids")
    # The VOC scheme's first colour is black, which reads as "no group": group g takes colour g + 1.
    palette = default_palette(max(int(a.max()) for a in groups) + 2)[1:]
    figure = Figure(figsize=(3 * len(groups), 3.2), layout="constrained")
    for axes, assigned, title in zip(
        figure.subplots(1, len(groups), squeeze=False)[0], groups, titles, strict=True
    ):
        axes.imshow(overlay(image, colorize(assigned, palette), alpha))
        _bare(axes, f"{title} ({np.unique(assigned).size} groups)")
    return figure


def attention_distance_figure(
    distances: Mapping[str, ArrayLike], *, title: str | None = None, label: str | None = None
) -> Figure:
    """Mean attention distance in pixels per head against network depth (the ViT paper's Figure 7):
    ``distances`` maps each layer name, input to output, to its heads' distances (heads,)."""
    if not distances:
        raise ValueError("distances must name at least one layer")
    figure = Figure(figsize=(max(4.0, 0.35 * len(distances)), 3.5), layout="constrained")
    axes = figure.subplots()
    depth, values = [], []
    for layer, (name, per_head) in enumerate(distances.items()):
        per_head = _numpy(per_head).astype(np.float64)
        if per_head.ndim != 1:
            raise ValueError(f"distances[{name!r}] must be (heads,), got shape {per_head.shape}")
        depth.extend([layer] * per_head.size)
        values.extend(per_head.tolist())
    axes.scatter(depth, values, s=14, alpha=0.8, label=label)
    axes.set_xticks(range(len(distances)), list(distances), rotation=90, fontsize="x-small")
    axes.set_xlabel("network depth (layer)")
    axes.set_ylabel("mean attention distance (pixels)")
    axes.set_ylim(bottom=0)
    if title:
        axes.set_title(title)
    return figure


def _numpy(values: ArrayLike) -> np.ndarray:
    """A tensor from any device, in any dtype (numpy has no bfloat16: those become float32), or an array."""
    if not isinstance(values, torch.Tensor):
        return np.asarray(values)
    values = values.detach().cpu()
    return (values.float() if values.dtype == torch.bfloat16 else values).numpy()


def _rgb(image: ArrayLike) -> np.ndarray:
    image = _numpy(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _check_size(image: np.ndarray, values: np.ndarray, name: str) -> None:
    if values.shape != image.shape[:2]:
        raise ValueError(f"{name} must be (H, W) = {image.shape[:2]} like the image, got {values.shape}")


def _bare(axes: Axes, title: str | None) -> None:
    """No ticks on a picture; an optional title."""
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize="small")
