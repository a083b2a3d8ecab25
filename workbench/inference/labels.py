"""Labels at an image's size from probabilities at the model's, without the (K, H, W) full-size tensor.

A 150-class model's probabilities on a 12 MP photo would take 7 GB in fp32; the labels take 12 MB.
``argmax_resized`` gives the same labels as ``F.interpolate(probs, size, "bilinear").argmax(0)`` (the
evaluation's rule) by resizing a band of output rows at a time: bilinear resizing is separable, so each
band needs only the two source rows around each of its rows, then a resize along the width.
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


def argmax_resized(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel class (H, W) int64 of probabilities ``probs`` (K, h, w) resized bilinearly to ``size``,
    computed band by band: memory O(K * h * w + H * W), not O(K * H * W)."""
    height, width = size
    if tuple(probs.shape[-2:]) == (height, width):
        return probs.argmax(0)
    rows = max(1, BAND_BYTES // max(1, probs.shape[0] * width * 4))
    labels = torch.empty(size, dtype=torch.int64, device=probs.device)
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        labels[start:stop] = resized_band(probs.float(), size, start, stop).argmax(0)
    return labels
