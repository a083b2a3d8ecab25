"""Anchors as the released GPViT and HLG detectors make them: mmdet 2.x's ``AnchorGenerator``.

torchvision's ``AnchorGenerator`` derives each level's stride as padded image size // feature size
and rounds base anchors to whole pixels; mmdet uses the configured strides and keeps base anchors
fractional. On an 800 x 1344 batch the stride-64 level is 13 x 21, so torchvision steps 61 px down it
instead of 64 and the released weights' coarsest boxes shift by up to 36 px (84 px at stride 128).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


class ReleasedAnchorGenerator(AnchorGenerator):
    """mmdet 2.x's ``AnchorGenerator(strides, ratios, scales)`` with ``base_sizes`` = strides,
    ``center_offset=0`` and ``scale_major=True``, in torchvision's interface.

    Level i has anchors ``strides[i] * scale`` wide for every ratio (height / width) and scale,
    centred on ``(x, y) * strides[i]``. They come per location, row by row, and at a location ratios
    outer, scales inner: mmdet's order, which is torchvision's, and that of the heads' channels.
    """

    def __init__(
        self, strides: Sequence[int], scales: Sequence[float], ratios: Sequence[float] = (0.5, 1.0, 2.0)
    ) -> None:
        self.strides = tuple(strides)
        sizes = tuple(tuple(stride * scale for scale in scales) for stride in self.strides)
        super().__init__(sizes, (tuple(ratios),) * len(self.strides))

    def generate_anchors(
        self,
        scales: Sequence[float],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        """Zero-centred (len(ratios) * len(scales), 4) anchors, ``scales`` their sizes in pixels.

        Not rounded, unlike torchvision's; computed in double so that, once shifted, float32 anchors
        stay within one float32 step of mmdet's definition (1.2e-4 px on a 2000 px image).
        """
        sizes = torch.as_tensor(scales, dtype=torch.float64)
        h_ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64).sqrt()
        half_widths = (0.5 * sizes[None, :] / h_ratios[:, None]).reshape(-1)
        half_heights = (0.5 * sizes[None, :] * h_ratios[:, None]).reshape(-1)
        base = torch.stack([-half_widths, -half_heights, half_widths, half_heights], dim=1)
        return base.to(dtype=dtype, device=device)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Per image, the anchors of all levels, (sum of H_i * W_i * anchors per location, 4) x1 y1 x2 y2."""
        self.set_cell_anchors(feature_maps[0].dtype, feature_maps[0].device)
        grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
        levels = self.grid_anchors(grid_sizes, [[stride, stride] for stride in self.strides])
        return [torch.cat(levels) for _ in image_list.image_sizes]


def rpn_anchors() -> ReleasedAnchorGenerator:
    """Mask R-CNN's RPNHead: scales [8], ratios 0.5, 1, 2, strides 4 .. 64 (32 to 512 px)."""
    return ReleasedAnchorGenerator((4, 8, 16, 32, 64), (8,))


def retinanet_anchors() -> ReleasedAnchorGenerator:
    """RetinaHead: octave_base_scale 4, scales_per_octave 3 (scales 4 x 2^(i/3)), ratios 0.5, 1, 2,
    strides 8 .. 128."""
    return ReleasedAnchorGenerator((8, 16, 32, 64, 128), tuple(4 * 2 ** (i / 3) for i in range(3)))
