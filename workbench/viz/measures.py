"""Numbers that summarise maps: how far a receptive field reaches, how far uniform attention would
look, and how much attribution methods agree.

- ``receptive_field_radius``: the radius around a pixel that holds a given share of an effective
  receptive field's mass (``workbench.viz.rollout.effective_receptive_field``), in pixels.
- ``uniform_attention_distance``: the mean attention distance of attention spread evenly over every
  token of a grid, the reference for "a full receptive field" (SETR's claim for its first layer).
- ``attribution_agreement``: Spearman rank correlation and top-k overlap between attribution maps.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from workbench.models.explain import TokenGrid
from workbench.viz.distance import token_centres


def receptive_field_radius(
    field: torch.Tensor, point: tuple[int, int] | None = None, mass: float = 0.5
) -> float:
    """The smallest radius (pixels) of a disc around ``point`` (y, x; default the centre pixel) that
    holds ``mass`` of the non-negative map ``field`` (H, W)'s total."""
    if field.ndim != 2:
        raise ValueError(f"field must be a (H, W) map, got shape {tuple(field.shape)}")
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    weights = field.detach().double().clamp_min(0)
    total = weights.sum()
    if total <= 0:
        raise ValueError("field is zero everywhere: it has no radius")
    height, width = weights.shape
    y, x = point if point is not None else (height // 2, width // 2)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    distance = ((yy - y) ** 2 + (xx - x) ** 2).double().sqrt().flatten()
    order = distance.argsort()
    cumulative = weights.flatten()[order].cumsum(0) / total
    reached = int(torch.searchsorted(cumulative, torch.tensor(mass, dtype=torch.float64) - 1e-12))
    return float(distance[order][min(reached, distance.numel() - 1)])


def uniform_attention_distance(tokens: TokenGrid) -> float:
    """Mean distance (input pixels) between a query and its keys when every query attends to every
    token of ``tokens`` equally: what a "full receptive field" scores in ``mean_attention_distance``."""
    centres = token_centres(tokens)
    return float(torch.cdist(centres, centres).mean())


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of ``values`` (ties broken by position; attribution maps have few exact ties)."""
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks


def attribution_agreement(
    maps: Mapping[str, torch.Tensor | np.ndarray], top: float = 0.1, absolute: bool = True
) -> dict[str, np.ndarray]:
    """How much attribution maps (name -> (H, W), one shape) agree, pairwise:

    - ``"spearman"`` (M, M): rank correlation of the maps over all pixels, in [-1, 1];
    - ``"top_overlap"`` (M, M): IoU of the ``top`` share of pixels each map ranks highest, in [0, 1].

    ``absolute`` compares magnitudes (a pixel that matters either way), since Grad-CAM is ReLU-ed and
    integrated gradients signed; rows and columns follow the order of ``maps``.
    """
    if len(maps) < 2:
        raise ValueError("agreement needs at least two maps")
    if not 0 < top <= 1:
        raise ValueError(f"top must lie in (0, 1], got {top}")
    flat = []
    for name, values in maps.items():
        array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        if array.ndim != 2:
            raise ValueError(f"maps[{name!r}] must be (H, W), got shape {array.shape}")
        flat.append(np.abs(array).ravel() if absolute else array.ravel())
    if len({values.size for values in flat}) != 1:
        raise ValueError("every map must have the same shape")
    count = max(1, round(top * flat[0].size))
    ranks = [_ranks(values) for values in flat]
    tops = [set(np.argsort(-values, kind="stable")[:count].tolist()) for values in flat]
    size = len(flat)
    spearman, overlap = np.eye(size), np.eye(size)
    for i in range(size):
        for j in range(i + 1, size):
            spearman[i, j] = spearman[j, i] = np.corrcoef(ranks[i], ranks[j])[0, 1]
            overlap[i, j] = overlap[j, i] = len(tops[i] & tops[j]) / len(tops[i] | tops[j])
    return {"spearman": spearman, "top_overlap": overlap}


def object_pixel(
    labels: np.ndarray | torch.Tensor, background: int = 0, ignore_index: int = 255
) -> tuple[int, int]:
    """A pixel (y, x) well inside the largest labelled object of ``labels`` (H, W): the middle of its
    mask's pixels in raster order (a row through the object's centre); the image centre when every pixel
    is background or ignored. Where the notebooks click by default."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    objects = (labels != background) & (labels != ignore_index)
    if not objects.any():
        return labels.shape[0] // 2, labels.shape[1] // 2
    classes, counts = np.unique(labels[objects], return_counts=True)
    ys, xs = np.nonzero(labels == classes[counts.argmax()])
    middle = len(ys) // 2  # np.nonzero lists pixels in raster order
    return int(ys[middle]), int(xs[middle])
