"""A row (or grid) of titled maps: one figure for many comparisons.

The notebooks compare maps side by side again and again: one pixel's attention in each HLG layer kind,
each GP group's soft map, the effective receptive field of each family, the attribution of each
captum method, the GP mixers' group-to-group matrices. ``panels_figure`` draws any of them: maps
(H, W) over an image, or bare (matrices), each panel on its own colour scale with its own colour bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from workbench.viz.figures import ArrayLike, _bare, _check_size, _numpy, _rgb


def panels_figure(
    maps: Mapping[str, ArrayLike],
    image: ArrayLike | None = None,
    *,
    columns: int | None = None,
    signed: bool = False,
    cmap: str | None = None,
    alpha: float = 0.6,
    point: tuple[int, int] | None = None,
    panel_size: float = 2.6,
    colorbar: bool = True,
    title: str | None = None,
) -> Figure:
    """One panel per map (``maps``: title -> (H, W)), ``columns`` per row (default: all in one row).

    With ``image`` (H, W, 3) uint8 each map is drawn over it (maps of the image's size); without, the
    maps are drawn alone (any 2-D shape: matrices too). ``signed`` centres a diverging colour map on
    zero (attributions, signed weights); ``point`` (y, x) marks a clicked pixel on every panel.
    """
    if not maps:
        raise ValueError("maps is empty: expected at least one (H, W) map")
    arrays = {name: _numpy(values).astype(np.float64) for name, values in maps.items()}
    for name, values in arrays.items():
        if values.ndim != 2:
            raise ValueError(f"maps[{name!r}] must be 2-D (H, W), got shape {values.shape}")
    rgb = None if image is None else _rgb(image)
    columns = len(arrays) if columns is None else max(1, min(columns, len(arrays)))
    rows = math.ceil(len(arrays) / columns)
    figure = Figure(
        figsize=(panel_size * columns * (1.25 if colorbar else 1), panel_size * rows), layout="constrained"
    )
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (name, values) in zip(grid.flat, arrays.items(), strict=False):
        opacity = 1.0
        if rgb is not None:
            _check_size(rgb, values, f"maps[{name!r}]")
            axes.imshow(rgb)
            opacity = alpha
        if signed:
            bound = float(np.nanmax(np.abs(values))) or 1.0
            shown = axes.imshow(values, cmap=cmap or "RdBu_r", vmin=-bound, vmax=bound, alpha=opacity)
        else:
            shown = axes.imshow(values, cmap=cmap or "inferno", alpha=opacity)
        if colorbar:
            figure.colorbar(shown, ax=axes, shrink=0.8)
        if point is not None:
            axes.plot([point[1]], [point[0]], marker="+", color="cyan", markersize=10, markeredgewidth=2)
        _bare(axes, name)
    for axes in list(grid.flat)[len(arrays) :]:
        axes.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure
