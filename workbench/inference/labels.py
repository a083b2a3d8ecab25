"""Labels at an image's size from probabilities at the model's, without the (K, H, W) full-size tensor.

A 150-class model's probabilities on a 12 MP photo would take 7 GB in fp32; the labels take 12 MB.
``argmax_resized`` gives the same labels as ``F.interpolate(probs, size, "bilinear").argmax(0)`` (the
evaluation's rule) by resizing a band of output rows at a time (bilinear resizing is separable, so each
band needs only the source rows its rows fall between), and only the classes that can win.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BAND_BYTES = 64 * 2**20  # the most one band's resized probabilities take


def source_rows(out_rows: int, in_rows: int, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    """For output rows [start, stop) of a bilinear resize (align_corners=False) from ``in_rows``: the
    lower source row, the upper one and the upper one's weight, as PyTorch's kernel computes them."""
    scale = torch.tensor(in_rows / out_rows, dtype=torch.float32)  # in float32, as the kernel
    source = (scale * (torch.arange(start, stop, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
    lower = source.long().clamp(max=in_rows - 1)
    upper = (lower + 1).clamp(max=in_rows - 1)
    return lower, upper, source - lower


def resized_band(probs: torch.Tensor, size: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of ``probs`` (K, h, w) resized bilinearly to ``size`` (H, W): (K, stop-start, W)."""
    lower, upper, weight = source_rows(size[0], probs.shape[-2], start, stop)
    first, last = int(lower[0]), int(upper[-1]) + 1
    # Along the width first, then between rows: the kernel's order, so the sums round alike.
    rows = F.interpolate(
        probs[None, :, first:last], size=(last - first, size[1]), mode="bilinear", align_corners=False
    )[0]
    weight = weight.to(probs.device)[:, None]
    return (
        rows[:, (lower - first).to(probs.device)] * (1 - weight)
        + rows[:, (upper - first).to(probs.device)] * weight
    )


def _bands(height: int, channels: int, width: int) -> list[tuple[int, int]]:
    """Row bands [start, stop) whose resized probabilities take at most ``BAND_BYTES``."""
    rows = max(1, BAND_BYTES // max(1, channels * width * 4))
    return [(start, min(height, start + rows)) for start in range(0, height, rows)]


def _resized_max(probs: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Arg-max and max over the channels of ``probs`` (C, h, w) resized to ``size``: (H, W) each."""
    labels = torch.empty(size, dtype=torch.int64, device=probs.device)
    best = torch.empty(size, dtype=torch.float32, device=probs.device)
    for start, stop in _bands(size[0], probs.shape[0], size[1]):
        best[start:stop], labels[start:stop] = resized_band(probs, size, start, stop).max(0)
    return labels, best


def argmax_resized(probs: torch.Tensor, size: tuple[int, int], candidates_per_pixel: int = 2) -> torch.Tensor:
    """Per-pixel class (H, W) int64 of probabilities ``probs`` (K, h, w) resized bilinearly to ``size``:
    memory O(K * h * w + H * W), not O(K * H * W).

    Only the classes among some source pixel's ``candidates_per_pixel`` most probable are resized (a
    trained model's handful, not all 150). Exact all the same: resizing takes non-negative weights of
    the source pixels, so the resized maximum of the other classes' per-pixel maximum bounds every
    other class, and a pixel whose candidate does not beat that bound strictly is resized in full.
    """
    probs = probs.float()
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs.argmax(0)
    top = probs.topk(min(candidates_per_pixel, probs.shape[0]), dim=0).indices.unique()
    others = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
    others[top] = False
    labels, best = _resized_max(probs[top], size)
    labels = top[labels]
    if not others.any():
        return labels
    _, bound = _resized_max(probs[others].amax(0, keepdim=True), size)
    unsure = best <= bound
    for start, stop in _bands(size[0], probs.shape[0], size[1]):
        rows = unsure[start:stop]
        if rows.any():  # rare: resize every class for this band, keep its unsure pixels
            labels[start:stop][rows] = resized_band(probs, size, start, stop).argmax(0)[rows]
    return labels
