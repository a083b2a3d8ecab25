"""Anchors as the released detectors make them (mmdet 2.x ``AnchorGenerator``, as configured by the
GPViT and HLG detection releases): configured strides, fractional base anchors, mmdet's order. The
reference is mmdet's definition written out as loops, independently of the code under test."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from workbench.models.detection import create_detector, detector_info, list_detectors

# The released configs: RPNHead (scales [8]) and RetinaHead (octave_base_scale 4, scales_per_octave 3).
RELEASED = {
    "maskrcnn": dict(strides=(4, 8, 16, 32, 64), scales=(8.0,)),
    "retinanet": dict(strides=(8, 16, 32, 64, 128), scales=tuple(4 * 2 ** (i / 3) for i in range(3))),
}
RATIOS = (0.5, 1.0, 2.0)  # height / width
# COCO test images after mmdet's Resize((1333, 800), keep_ratio): 800 x 1333, 608 x 1088 (a 640 x 1146
# photo), and an odd width 800 x 1199 (427 x 640) whose coarsest levels are not whole (9.5 -> 10).
COCO_SIZES = [(800, 1333), (608, 1088), (800, 1199)]


def _padded(size: int, divisor: int = 32) -> int:
    """mmdet's Pad(size_divisor=32), as torchvision's transform pads a batch."""
    return -(-size // divisor) * divisor


def _level_sizes(height: int, width: int, strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """Feature map sizes of a padded image: each stride-2 step rounds up (3x3 convs with padding 1,
    and torchvision's max-pool P6 on an even map)."""
    return [(-(-height // stride), -(-width // stride)) for stride in strides]


@cache
def mmdet_anchors(kind: str, level_sizes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """mmdet 2.x ``AnchorGenerator.grid_priors`` of all levels, concatenated, (N, 4) x1 y1 x2 y2.

    Base size = stride; center_offset 0, so an anchor is centred on (x, y) * stride; width
    stride * scale / sqrt(ratio), height stride * scale * sqrt(ratio), no rounding; per location
    row by row, and at a location ratios outer, scales inner (``scale_major=True``).
    """
    strides, scales = RELEASED[kind]["strides"], RELEASED[kind]["scales"]
    rows = []
    for stride, (height, width) in zip(strides, level_sizes, strict=True):
        for y in range(height):
            for x in range(width):
                for ratio in RATIOS:
                    for scale in scales:
                        half_w = 0.5 * stride * scale / math.sqrt(ratio)
                        half_h = 0.5 * stride * scale * math.sqrt(ratio)
                        cx, cy = x * stride, y * stride
                        rows.append((cx - half_w, cy - half_h, cx + half_w, cy + half_h))
    return np.array(rows)


def _anchor_generator(model: torch.nn.Module) -> torch.nn.Module:
    return model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator


@pytest.fixture(scope="module")
def generators() -> dict[str, torch.nn.Module]:
    """The anchor generator of every registered detector (tiny builds: anchors do not depend on width)."""
    return {
        name: _anchor_generator(create_detector(name, num_classes=5, **detector_info(name).tiny))
        for name in list_detectors()
    }


def _anchors(generator: torch.nn.Module, image: tuple[int, int], padded: tuple[int, int], kind: str):
    sizes = _level_sizes(*padded, RELEASED[kind]["strides"])
    images = ImageList(torch.zeros(1, 3, *padded), [image])
    (anchors,) = generator(images, [torch.zeros(1, 1, *size) for size in sizes])
    return anchors, tuple(sizes)


@pytest.mark.parametrize("image", COCO_SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("kind", ["maskrcnn", "retinanet"])
def test_every_detector_has_the_released_anchors_at_coco_sizes(generators, kind, image):
    padded = (_padded(image[0]), _padded(image[1]))
    names = [name for name in list_detectors() if detector_info(name).kind == kind]
    for name in names:
        anchors, sizes = _anchors(generators[name], image, padded, kind)
        expected = mmdet_anchors(kind, sizes)
        assert anchors.dtype == torch.float32 and anchors.shape == expected.shape, name
        np.testing.assert_allclose(anchors.numpy(), expected, rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", ["gpvit_l1_maskrcnn", "gpvit_l1_retinanet", "hlg_small_retinanet"])
def test_a_forward_uses_the_released_anchors_on_its_own_feature_maps(name):
    """The maps the detector makes for an odd photo have the sizes assumed above, and its RPN or
    RetinaNet head places the released anchors on them."""
    kind = detector_info(name).kind
    model = create_detector(name, num_classes=5, **detector_info(name).tiny).eval()
    seen = {}
    _anchor_generator(model).register_forward_hook(
        lambda _, inputs, output: seen.update(
            padded=inputs[0].tensors.shape[-2:], maps=inputs[1], anchors=output
        )
    )
    with torch.no_grad():
        model([torch.rand(3, 75, 101)])
    sizes = tuple(tuple(level.shape[-2:]) for level in seen["maps"])
    assert sizes == tuple(_level_sizes(*seen["padded"], RELEASED[kind]["strides"]))
    (anchors,) = seen["anchors"]
    np.testing.assert_allclose(anchors.numpy(), mmdet_anchors(kind, sizes), rtol=0, atol=1e-4)
