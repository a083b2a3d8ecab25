"""Joint image + label transforms of the segmentation recipes (mmseg semantics), on torch tensors.

Images are (3, H, W) uint8 until ``normalize``; labels (H, W) int64 with 255 as the ignore label.
Every random choice draws from the ``torch.Generator`` passed in, so a sample's augmentation is a
function of its seed (what makes an interrupted run resume exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.config import IMAGENET_MEAN, IMAGENET_STD

IGNORE_INDEX = 255


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=rng).item()


def resize(image: torch.Tensor, labels: torch.Tensor | None, size: tuple[int, int]):
    """Bilinear for the image, nearest for the labels."""
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    image = resized.round().clamp(0, 255).to(image.dtype) if image.dtype == torch.uint8 else resized
    if labels is not None:
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, labels


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Keep the aspect ratio; long side <= max(scale) and short side <= min(scale) (mmcv rescale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def random_crop(image, labels, crop: int, cat_max_ratio: float, rng: torch.Generator):
    """A crop of at most ``crop`` x ``crop`` in which no single class covers more than ``cat_max_ratio``
    of the labelled pixels (up to 10 tries, as mmseg)."""
    height, width = labels.shape
    ch, cw = min(crop, height), min(crop, width)
    for _ in range(10):
        top = int(torch.randint(0, height - ch + 1, (), generator=rng))
        left = int(torch.randint(0, width - cw + 1, (), generator=rng))
        window = labels[top : top + ch, left : left + cw]
        counts = torch.bincount(window[window != IGNORE_INDEX].flatten())
        if cat_max_ratio >= 1 or (len(counts) > 1 and counts.max() < cat_max_ratio * counts.sum()):
            break
    return image[:, top : top + ch, left : left + cw], window


def photometric_distortion(image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """mmseg PhotoMetricDistortion: brightness, contrast (before or after), saturation, hue."""
    x = image.float()

    def coin() -> bool:
        return bool(torch.randint(0, 2, (), generator=rng))

    if coin():
        x = x + _uniform(rng, -32, 32)
    contrast_first = coin()
    contrast = _uniform(rng, 0.5, 1.5) if coin() else None
    if contrast_first and contrast is not None:
        x = x * contrast
    x = x.clamp(0, 255)
    if coin() or coin():
        hsv = _rgb_to_hsv(x / 255)
        if coin():
            hsv[1] = (hsv[1] * _uniform(rng, 0.5, 1.5)).clamp(0, 1)
        if coin():
            hsv[0] = (hsv[0] + _uniform(rng, -18, 18) / 180) % 1.0
        x = _hsv_to_rgb(hsv) * 255
    if not contrast_first and contrast is not None:
        x = (x * contrast).clamp(0, 255)
    return x.round().clamp(0, 255).to(torch.uint8)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb
    maxc, minc = rgb.max(0).values, rgb.min(0).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r, (g - b) / safe % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack([hue, saturation, maxc])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6])
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """(3, H, W) uint8 -> float, channel-wise (x - mean) / std on the 0-255 scale."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image.float() - mean_t) / std_t


def pad_to(image: torch.Tensor, labels: torch.Tensor | None, size: tuple[int, int]):
    """Pad at the bottom and right to ``size``: image with 0, labels with the ignore label."""
    ph, pw = size[0] - image.shape[-2], size[1] - image.shape[-1]
    if ph <= 0 and pw <= 0:
        return image, labels
    image = F.pad(image, (0, max(pw, 0), 0, max(ph, 0)), value=0)
    if labels is not None:
        labels = F.pad(labels, (0, max(pw, 0), 0, max(ph, 0)), value=IGNORE_INDEX)
    return image, labels


@dataclass
class TrainTransform:
    """Resize with a random ratio, crop (category-max-ratio), flip, photometric distortion,
    normalise, pad to the crop: the recipes' training pipeline."""

    crop_size: int
    scale: tuple[int, int]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, image: torch.Tensor, labels: torch.Tensor, rng: torch.Generator):
        ratio = _uniform(rng, *self.ratio_range)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, labels = resize(image, labels, rescale_size(*labels.shape, target))
        image, labels = random_crop(image, labels, self.crop_size, self.cat_max_ratio, rng)
        if torch.rand((), generator=rng).item() < self.flip:
            image, labels = image.flip(-1), labels.flip(-1)
        if self.photometric:
            image = photometric_distortion(image, rng)
        return pad_to(normalize(image, self.mean, self.std), labels, (self.crop_size, self.crop_size))


@dataclass
class EvalTransform:
    """Resize to the test scale (keep ratio) and normalise; labels stay at their original size."""

    scale: tuple[int, int] | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, image: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None):
        if self.scale is not None:
            image, _ = resize(image, None, rescale_size(*image.shape[-2:], self.scale))
        return normalize(image, self.mean, self.std), labels


def ceil_to(value: int, divisor: int) -> int:
    return math.ceil(value / divisor) * divisor
