"""``workbench convert`` writes the paper's test recipe into the converted checkpoint's config.yaml, so
``workbench predict`` on it runs at the recipe's scale and inference mode with the data set's classes."""

from __future__ import annotations

import pytest
import timm
import torch

import workbench
from workbench.cli import main
from workbench.config import Config, ModelConfig
from workbench.interop import export_state
from workbench.interop.checkpoint import checkpoint_config
from workbench.models import model_info

ADE20K_FIRST_CLASSES = ("wall", "building", "sky")


def _tiny_kwargs(name: str) -> dict:
    """The variant's tiny build arguments as config.yaml holds them (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model_info(name).tiny.items()}


def _tiny_args(name: str) -> list[str]:
    """``--model-arg key=value`` for each of the variant's tiny build arguments (YAML values)."""
    return [arg for key, value in _tiny_kwargs(name).items() for arg in ("--model-arg", f"{key}={value}")]


@pytest.fixture(scope="module")
def setr_release(tmp_path_factory):
    """A tiny 150-class SETR-Naive in the official release layout."""
    model = workbench.create_segmentor(
        "setr_naive_vit_base", num_classes=150, **model_info("setr_naive_vit_base").tiny
    )
    path = tmp_path_factory.mktemp("release") / "setr_naive_ade20k.pth"
    torch.save({"state_dict": export_state(model, "setr_official")}, path)
    return path


def _convert(source, out, name: str, *extra: str) -> None:
    assert main(["convert", str(source), str(out), "--model", name, *_tiny_args(name), *extra]) == 0


def test_a_150_class_setr_converts_with_the_ade20k_test_recipe(setr_release, tmp_path, capsys):
    out = tmp_path / "setr"
    _convert(setr_release, out, "setr_naive_vit_base", "--num-classes", "150")
    assert "ade20k test recipe" in capsys.readouterr().out
    predictor = workbench.load_predictor(out, device="cpu")
    assert predictor.transform.scale == (2048, 512)
    assert (predictor.eval_cfg.mode, predictor.eval_cfg.window) == ("slide", 512)
    assert len(predictor.classes) == 150 and predictor.classes.names[:3] == ADE20K_FIRST_CLASSES
    cfg = checkpoint_config(out)
    model = ("setr_naive_vit_base", _tiny_kwargs("setr_naive_vit_base"), 150)
    assert (cfg.model.name, cfg.model.kwargs, cfg.data.num_classes) == model


def test_dataset_picks_the_recipe_where_the_class_count_does_not(setr_release, tmp_path, capsys):
    out = tmp_path / "setr"
    _convert(setr_release, out, "setr_naive_vit_base", "--num-classes", "150", "--dataset", "cityscapes")
    predictor = workbench.load_predictor(out, device="cpu")
    assert predictor.transform.scale == (2048, 1024)
    assert (predictor.eval_cfg.mode, predictor.eval_cfg.window) == ("slide", 768)
    assert predictor.classes.names[:3] == ("0", "1", "2")  # 150 classes are not Cityscapes' 19
    command = ["convert", str(setr_release), str(tmp_path / "x"), "--model", "setr_naive_vit_base"]
    with pytest.raises(SystemExit, match="2"):
        main([*command, "--dataset", "coco"])
    assert "invalid choice: 'coco'" in capsys.readouterr().err


def test_without_a_known_recipe_the_config_is_the_model_alone(tmp_path):
    """A class count of no known data set: whole images at their own size, as before."""
    out = tmp_path / "setr"
    model = workbench.create_segmentor(
        "setr_naive_vit_base", num_classes=7, **model_info("setr_naive_vit_base").tiny
    )
    torch.save({"state_dict": export_state(model, "setr_official")}, tmp_path / "seven.pth")
    _convert(tmp_path / "seven.pth", out, "setr_naive_vit_base", "--num-classes", "7")
    expected = Config(
        task="segmentation", model=ModelConfig("setr_naive_vit_base", _tiny_kwargs("setr_naive_vit_base"))
    )
    expected.data.num_classes = 7
    assert checkpoint_config(out) == expected
    predictor = workbench.load_predictor(out, device="cpu")
    assert predictor.transform.scale is None and predictor.eval_cfg.mode == "whole"


def test_a_classifier_converts_as_before_and_takes_no_dataset(tmp_path, capsys):
    classifier = timm.create_model("gpvit_l1", num_classes=1000, **model_info("gpvit_l1").tiny)
    torch.save(classifier.state_dict(), tmp_path / "gpvit.pth")
    out = tmp_path / "gpvit"
    _convert(tmp_path / "gpvit.pth", out, "gpvit_l1")
    expected = Config(task="classification", model=ModelConfig("gpvit_l1", _tiny_kwargs("gpvit_l1")))
    expected.data.num_classes = 1000
    assert checkpoint_config(out) == expected
    capsys.readouterr()
    command = ["convert", str(tmp_path / "gpvit.pth"), str(tmp_path / "x"), "--model", "gpvit_l1"]
    assert main([*command, "--dataset", "ade20k"]) == 2
    assert (
        capsys.readouterr().err
        == "workbench: --dataset picks a segmentation test recipe; gpvit_l1 is a classification model\n"
    )
