"""What a front end shows beside the pictures: each class's area with its legend colour, a clicked
pixel's attention as a distribution over the image's pixels, and the region a click picks.

    for area in class_areas(prediction.labels, predictor.classes):
        print(area.name, area.hex, f"{area.percent:.1f}%")
    weights = attention_distribution(predictor.attention_at(y, x, layer))  # sums to 1 over (H, W)
    region = clicked_region(prediction.labels, y, x)  # (H, W) bool: the clicked object
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.data.classes import Classes


@dataclass(frozen=True)
class ClassArea:
    """One class of a label map: its index, name, legend colour (R, G, B), pixel count and share (%)."""

    index: int
    name: str
    colour: tuple[int, int, int]
    pixels: int
    percent: float

    @property
    def hex(self) -> str:
        """The colour as "#rrggbb", as HTML and Gradio's colour maps take it."""
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


def class_areas(labels: np.ndarray, classes: Classes, ignore_index: int | None = 255) -> list[ClassArea]:
    """The classes present in ``labels`` (H, W), largest first (ties by index): the legend and the
    per-class area table of a segmentation. Pixels equal to ``ignore_index`` are left out of both the
    counts and the total the percentages are of."""
    values = np.asarray(labels).ravel()
    if ignore_index is not None:
        values = values[values != ignore_index]
    if values.size and (values.min() < 0 or values.max() >= len(classes)):
        raise ValueError(f"labels must lie in [0, {len(classes)}) for {len(classes)} classes")
    counts = np.bincount(values, minlength=len(classes)) if values.size else np.zeros(len(classes), int)
    order = sorted(np.flatnonzero(counts), key=lambda index: (-counts[index], index))
    return [
        ClassArea(
            int(index),
            classes.names[index],
            tuple(int(c) for c in classes.palette[index]),
            int(counts[index]),
            100.0 * counts[index] / values.size,
        )
        for index in order
    ]


def attention_distribution(weights: torch.Tensor) -> torch.Tensor:
    """A pixel's attention on the image (H, W), each pixel its token's weight (``Predictor.attention_at``)
    -> the same map scaled to sum to one over the image's pixels (float32), what an API returns.

    Refuses maps that cannot be one: negative or non-finite weights, or all zero."""
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("attention weights must be finite and non-negative")
    total = weights.sum(dtype=torch.float64)
    if total <= 0:
        raise ValueError("the attention map is zero everywhere: nothing to normalise")
    return (weights.double() / total).float()


def clicked_region(labels: np.ndarray, y: int, x: int) -> np.ndarray:
    """The connected region (4-neighbours) of pixel (y, x)'s class in ``labels`` (H, W) that holds the
    pixel: (H, W) bool. The region an app attributes "this object's class" over on a click."""
    from scipy import ndimage

    labels = np.asarray(labels)
    height, width = labels.shape
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"pixel ({y}, {x}) is outside the {width}x{height} label map")
    components, _ = ndimage.label(labels == labels[y, x])
    return components == components[y, x]
