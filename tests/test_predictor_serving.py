"""What a server needs from the Predictor: sessions kept per user and set back, the load report,
released checkpoints without a workbench config, attributions of a clicked region on the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import Predictor
from workbench.interop import export_state
from workbench.models import model_info

from .tiny import tiny_checkpoint, tiny_gpvit_segmentor, tiny_setr


def _photo(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_a_kept_session_answers_again_without_a_forward_pass():
    predictor = Predictor(tiny_setr("setr_naive_vit_base"), device="cpu")
    predictor.set_image(_photo(0))
    first = predictor.session
    before = predictor.attention_at(10, 20, layer=3)
    predictor.set_image(_photo(1))
    assert not torch.equal(predictor.attention_at(10, 20, layer=3), before)
    calls = []
    predictor.model.register_forward_pre_hook(lambda *_: calls.append(1))
    predictor.session = first
    torch.testing.assert_close(predictor.attention_at(10, 20, layer=3), before)
    assert calls == []
    with pytest.raises(ValueError, match=r"expected a session opened by this predictor"):
        predictor.session = "image.png"


def test_from_checkpoint_keeps_the_load_report(tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path), device="cpu")
    assert predictor.load_report.clean and predictor.load_report.format == "workbench"
    assert len(predictor.load_report.loaded) == len(predictor.model.state_dict())


def test_from_pretrained_loads_a_released_layout(tmp_path):
    model = tiny_gpvit_segmentor("upernet", num_classes=7)
    torch.save(export_state(model, "gpvit"), tmp_path / "release.pth")
    tiny = model_info("gpvit_l1_upernet").tiny
    predictor = Predictor.from_pretrained(
        tmp_path / "release.pth", "gpvit_l1_upernet", 7, device="cpu", **tiny
    )
    assert predictor.load_report.format == "gpvit" and predictor.load_report.clean
    photo = _photo(2, 64)
    np.testing.assert_array_equal(
        predictor(photo).labels, Predictor(model.eval(), device="cpu")(photo).labels
    )


def test_attribute_maps_a_region_on_the_image_back_to_the_image():
    predictor = Predictor(tiny_setr("setr_naive_vit_base"), device="cpu")
    photo = _photo(3, 40)  # 40 px: padded to the model's 16-pixel grid inside, cropped back
    predictor.set_image(photo)
    region = np.zeros((40, 40), bool)
    region[5:15, 20:30] = True
    heat = predictor.attribute(1, region, "occlusion", window=8, stride=8)
    assert heat.shape == (40, 40) and torch.isfinite(heat).all() and heat.abs().sum() > 0
    with pytest.raises(ValueError, match="the region is empty"):
        predictor.attribute(1, np.zeros((40, 40), bool))
    with pytest.raises(ValueError, match=r"region must be an \(H, W\) mask of the image"):
        predictor.attribute(1, np.ones((8, 8), bool))
