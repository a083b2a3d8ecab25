"""The inference package at the user's scale: the model left as given, a session per image,
probabilities at the model's resolution (labels still exact at the photo's), releases at their
paper's test recipe, one-line refusals, 16-bit label maps."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from workbench import Predictor, load_predictor
from workbench.build import classes_of, eval_transform
from workbench.cli import main
from workbench.config import load_config
from workbench.data.transforms import EvalTransform
from workbench.inference.labels import argmax_resized
from workbench.inference.recipes import recipe_for
from workbench.interop.checkpoint import save_weights
from workbench.models.registry import model_info

from .tiny import tiny_gpvit_segmentor, tiny_setr


def _photo(seed: int, size=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_the_given_model_keeps_its_mode_layout_and_weights():
    model = tiny_gpvit_segmentor("upernet")  # training mode, contiguous, as built
    before = {name: value.clone() for name, value in model.state_dict().items()}
    predictor = Predictor(model, channels_last=True)
    predictor(_photo(0))
    assert model.training and predictor.model is not model and not predictor.model.training
    assert "training mode" in predictor.note
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous()
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    model.eval()
    same = Predictor(model)
    assert same.model is model and same.note == "" and same.device == torch.device("cpu")


def test_a_model_in_bf16_weights_gets_bf16_inputs():
    model = tiny_setr("setr_naive_vit_base").eval().to(torch.bfloat16)
    prediction = Predictor(model)(_photo(1))
    assert prediction.labels.shape == (48, 64) and prediction.probs.dtype == torch.float32


def test_two_sessions_live_side_by_side():
    predictor = Predictor(tiny_setr("setr_naive_vit_base").eval())
    first, second = predictor.open(_photo(2)), predictor.open(_photo(3))
    alone = Predictor(predictor.model).open(_photo(2))
    torch.testing.assert_close(first.attention_at(10, 20, 3), alone.attention_at(10, 20, 3))
    assert not torch.equal(first.attention_at(10, 20, 3), second.attention_at(10, 20, 3))
    np.testing.assert_array_equal(first.prediction.labels, alone.prediction.labels)


@pytest.mark.parametrize("size", [(375, 500), (1080, 1920), (31, 17)])
def test_labels_from_model_scale_probabilities_equal_the_full_size_arg_max(size):
    torch.manual_seed(0)
    probs = torch.randn(150, 32, 43).softmax(0)
    full = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    labels = argmax_resized(probs, size)
    assert (labels != full).float().mean() < 1e-5  # ties may round apart


def test_a_class_that_wins_only_between_source_pixels_is_found():
    """Class 2 is no source pixel's first, yet wins halfway between two: the bound catches it."""
    probs = torch.tensor([[0.55, 0.0], [0.0, 0.55], [0.45, 0.45]])[:, None, :].expand(3, 2, 2)
    full = F.interpolate(probs[None], size=(4, 8), mode="bilinear", align_corners=False)[0].argmax(0)
    assert (full == 2).any()
    torch.testing.assert_close(argmax_resized(probs, (4, 8), candidates_per_pixel=1), full)


def test_probabilities_stay_at_the_model_input_and_labels_at_the_image():
    model = tiny_setr("setr_naive_vit_base", num_classes=7).eval()
    predictor = Predictor(model, transform=EvalTransform((96, 64)))  # short side 64 at the test scale
    photo = _photo(4, (300, 400))
    prediction = predictor(photo)
    assert tuple(prediction.probs.shape) == (7, 64, 85)
    assert prediction.labels.shape == (300, 400)
    on_image = prediction.probs_on_image()
    assert tuple(on_image.shape) == (7, 300, 400)
    assert (on_image.argmax(0).numpy() == prediction.labels).mean() > 0.9999


def test_a_classifier_or_a_timm_vit_is_refused_in_one_line():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=1)
    with pytest.raises(ValueError, match=r"^VisionTransformer is a classifier .*create_segmentor") as caught:
        Predictor(vit)
    assert "\n" not in str(caught.value)


def test_a_release_predicts_at_its_papers_test_recipe(tmp_path):
    """A SETR release of 150 classes is an ADE20K model: short side 512, sliding 512 windows, ADE20K's
    classes (SETR's ADE20K recipe); a GPViT one whole images at the same scale."""
    tiny = model_info("setr_naive_vit_base").tiny
    setr = tiny_setr("setr_naive_vit_base", num_classes=150)
    torch.save(setr.state_dict(), tmp_path / "setr.pth")
    predictor = load_predictor(tmp_path / "setr.pth", model="setr_naive_vit_base", num_classes=150, **tiny)
    assert predictor.transform.scale == (2048, 512)
    assert (predictor.eval_cfg.mode, predictor.eval_cfg.window, predictor.eval_cfg.stride) == (
        "slide",
        512,
        341,
    )
    assert predictor.classes.names[:3] == ("wall", "building", "sky")
    recipe = recipe_for("gpvit_l1_upernet", 150)
    assert recipe.eval.mode == "whole" and tuple(recipe.data.scale) == (2048, 512)
    assert recipe_for("gpvit_l1_upernet", 7) is None
    with pytest.raises(ValueError, match="dataset must be one of ade20k, cityscapes, pascal_context"):
        recipe_for("gpvit_l1_upernet", 150, "coco")


def test_labels_above_256_classes_are_written_as_16_bit_png(tmp_path):
    cfg = load_config("tiny_setr", ["data.num_classes=300"])
    model = timm.create_model(cfg.model.name, num_classes=300, **cfg.model.kwargs)
    with torch.no_grad():  # a bias that makes class 299 win everywhere
        model.decode_head.classifier.bias.fill_(0.0)
        model.decode_head.classifier.bias[299] = 1e4
    (tmp_path / "run").mkdir()
    save_weights(tmp_path / "run", model, cfg)
    Image.fromarray(_photo(5, (64, 64))).save(tmp_path / "photo.png")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "photo.png"),
                "--checkpoint",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    written = Image.open(tmp_path / "out" / "photo_labels.png")
    assert written.mode == "I;16" and np.unique(np.asarray(written)).tolist() == [299]


def test_occlusion_windows_are_sized_from_the_model_input(tmp_path, monkeypatch):
    from apps.handlers import Workbench
    from apps.settings import ATTRIBUTIONS, Settings
    from workbench.inference.session import Session

    from .tiny import tiny_checkpoint

    workbench = Workbench(Settings(precision="fp32"), str(tiny_checkpoint(tmp_path / "run")))
    workbench.default.predictor.transform = EvalTransform((48, 32))  # the model sees 32x48
    Image.fromarray(_photo(6, (96, 144))).save(tmp_path / "photo.png")
    asked = {}

    def attribute(self, target, region, method, **options):
        asked.update(options, view=self.view.size)
        return torch.zeros(self.size)

    monkeypatch.setattr(Session, "attribute", attribute)
    workbench.attribution(workbench.default.key, str(tmp_path / "photo.png"), (10, 20), "occlusion")
    assert asked["view"] == (32, 48)
    assert (
        asked["window"]
        == ATTRIBUTIONS["occlusion"]((32, 48))["window"]
        != ATTRIBUTIONS["occlusion"]((96, 144))["window"]
    )


def test_the_recipe_classes_and_transform_come_from_the_preset():
    cfg = recipe_for("setr_hlg_small", 19)
    assert cfg.eval.mode == "slide" and cfg.eval.window == 768
    assert eval_transform(cfg).scale == (2048, 1024) and len(classes_of(cfg)) == 19


def test_both_predictors_follow_the_one_protocol():
    from workbench.inference import DetectionPredictor, ImagePredictor
    from workbench.models.detection import create_detector, detector_info

    segmentor = Predictor(tiny_setr("setr_naive_vit_base").eval())
    info = detector_info("gpvit_l1_retinanet")
    detector = DetectionPredictor(create_detector("gpvit_l1_retinanet", num_classes=3, **info.tiny).eval())
    for predictor in (segmentor, detector):
        assert isinstance(predictor, ImagePredictor) and predictor.note == ""
