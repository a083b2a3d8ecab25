"""Captum attributions of "class c over region R" (workbench.viz.attribution)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.tiny import tiny_gpvit_segmentor, tiny_setr
from workbench.viz.attribution import METHODS, attribute, region_mask

SIZE = 16


class ReadsSomePixels(nn.Module):
    """Segmentor-like toy: each pixel's logits read that pixel only, and only where ``reads`` is set."""

    def __init__(self, reads: torch.Tensor, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("reads", reads.float())
        self.decode_head = nn.Module()
        self.decode_head.classifier = nn.Conv2d(3, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_head.classifier(torch.tanh(images * self.reads))


def _score(model, images, target_class, mask):
    with torch.no_grad():
        return (model(images)[:, target_class] * mask).sum(dim=(-2, -1))


@pytest.fixture
def toy():
    reads = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    reads[:, ::2] = True  # every other column
    return ReadsSomePixels(reads)


def test_integrated_gradients_are_complete_on_a_smooth_model(toy):
    images = torch.randn(2, 3, SIZE, SIZE)
    box = (2, 3, 12, 14)
    result = attribute(toy, images, 1, box, n_steps=50, internal_batch_size=7)
    mask = region_mask(box, 2, (SIZE, SIZE))
    gain = _score(toy, images, 1, mask) - _score(toy, torch.zeros_like(images), 1, mask)
    assert result.map.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(result.map.sum(dim=(1, 2)), gain, atol=1e-3, rtol=1e-3)
    assert result.delta.abs().max() < 1e-3


def test_integrated_gradients_delta_is_the_completeness_gap_on_setr():
    model = tiny_setr("setr_naive_vit_large")
    images = torch.randn(2, 3, 32, 32)
    result = attribute(model, images, 2, (4, 4, 28, 20), n_steps=8, internal_batch_size=16)
    mask = region_mask((4, 4, 28, 20), 2, (32, 32))
    model.eval()
    gain = _score(model, images, 2, mask) - _score(model, torch.zeros_like(images), 2, mask)
    torch.testing.assert_close(result.delta, result.map.sum(dim=(1, 2)) - gain, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"n_steps": 8}),
        # One column wide and aligned with the box: no window straddles read and unread pixels.
        ("occlusion", {"window": (2, 1), "stride": (2, 1)}),
        ("saliency", {}),
    ],
)
def test_attributions_vanish_outside_the_pixels_the_score_reads(toy, method, options):
    images = torch.rand(1, 3, SIZE, SIZE) + 0.5  # away from zero: every read pixel matters
    box = (4, 6, 10, 12)
    result = attribute(toy, images, 0, box, method, **options)
    inside = region_mask(box, 1, (SIZE, SIZE)).bool() & toy.reads.bool()
    assert result.map[~inside].abs().max() == 0
    assert (result.map[inside] != 0).all()


def test_grad_cam_vanishes_where_the_last_feature_map_is_zero(toy):
    result = attribute(toy, torch.rand(1, 3, SIZE, SIZE) + 0.5, 0, (0, 0, SIZE, SIZE), "grad_cam", relu=False)
    # The toy's feature map is zero on unread columns; bilinear upsampling from the same size keeps it.
    assert result.map[0][:, 1::2].abs().max() == 0
    assert (result.map[0][:, ::2] != 0).all()


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", ["setr", "gpvit"])
def test_every_method_runs_on_tiny_models(family, method):
    # The cheapest heads of each family (tiny PUP and UPerNet still decode with 256-512 channels).
    model = tiny_setr("setr_naive_vit_large") if family == "setr" else tiny_gpvit_segmentor("segformer")
    model.train()
    options = {"integrated_gradients": {"n_steps": 4}, "occlusion": {"window": 16, "stride": 16}}
    pixel = np.zeros((32, 32), dtype=bool)
    pixel[10, 20] = True
    result = attribute(model, torch.randn(2, 3, 32, 32), 1, pixel, method, **options.get(method, {}))
    assert result.map.shape == (2, 32, 32)
    assert torch.isfinite(result.map).all() and result.map.abs().sum() > 0
    assert (result.delta is not None) == (method == "integrated_gradients")
    assert model.training  # its mode comes back


def test_pixel_region_equals_one_pixel_box(toy):
    images = torch.rand(2, 3, SIZE, SIZE)
    pixel = attribute(toy, images, 2, (5, 6), "saliency").map
    box = attribute(toy, images, 2, (5, 6, 6, 7), "saliency").map
    torch.testing.assert_close(pixel, box)
    assert pixel[:, 5, 6].abs().min() > 0 and pixel.abs().sum() == pixel[:, 5, 6].abs().sum()


@pytest.mark.parametrize(
    ("region", "target_class", "method", "options", "message"),
    [
        ((0, 0, 0, 4), 0, "saliency", {}, "empty or outside"),
        ((0, 0, 4, SIZE + 1), 0, "saliency", {}, "empty or outside"),
        ((SIZE, 0), 0, "saliency", {}, "empty or outside"),
        ((1, 2, 3), 0, "saliency", {}, "a box"),
        (np.zeros((SIZE, SIZE), dtype=bool), 0, "saliency", {}, "selects no pixel"),
        (np.ones((SIZE, 8), dtype=bool), 0, "saliency", {}, "bool of shape"),
        (np.ones((SIZE, SIZE)), 0, "saliency", {}, "bool of shape"),
        ((2, 2), 3, "saliency", {}, r"target_class must lie in \[0, 3\)"),
        ((2, 2), 1.0, "saliency", {}, "int class index"),
        ((2, 2), 0, "lime", {}, "method must be one of"),
        ((2, 2), 0, "saliency", {"window": 4}, "saliency takes options"),
        ((2, 2), 0, "occlusion", {"window": 0}, "window must be a positive int"),
    ],
)
def test_bad_requests_get_one_line_errors(toy, region, target_class, method, options, message):
    with pytest.raises(ValueError, match=message) as error:
        attribute(toy, torch.rand(1, 3, SIZE, SIZE), target_class, region, method, **options)
    assert "\n" not in str(error.value)
