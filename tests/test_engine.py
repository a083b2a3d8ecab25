"""Metrics, inference modes, Predictor, checkpoints, configs, optimiser groups and schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.build import build_model
from workbench.config import (
    Config,
    EvalConfig,
    OptimConfig,
    ScheduleConfig,
    apply_overrides,
    load_config,
    save_config,
)
from workbench.engine import ConfusionMatrix, load_weights, predict_probs, save_checkpoint
from workbench.engine.evaluate import slide_logits
from workbench.engine.optim import learning_rate, param_groups
from workbench.interop.checkpoint import latest_checkpoint, load_state

from .tiny import tiny_gpvit_segmentor, tiny_setr

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_confusion_matrix_metrics():
    matrix = ConfusionMatrix(3)
    target = torch.tensor([0, 0, 1, 1, 255, 0])
    prediction = torch.tensor([0, 1, 1, 1, 2, 0])
    matrix.update(prediction, target)
    metrics = matrix.metrics(("a", "b", "c"))
    # class a: TP 2, FN 1, FP 0 -> 2/3; class b: TP 2, FP 1 -> 2/3; class c: never present -> left out
    assert metrics["IoU"]["a"] == pytest.approx(200 / 3) and metrics["IoU"]["b"] == pytest.approx(200 / 3)
    assert math.isnan(metrics["IoU"]["c"])
    assert metrics["mIoU"] == pytest.approx(200 / 3) and metrics["aAcc"] == pytest.approx(80.0)
    assert metrics["Acc"]["a"] == pytest.approx(200 / 3) and metrics["Acc"]["b"] == pytest.approx(100.0)


class _Pointwise(nn.Module):
    """A per-pixel model (1x1 conv): every inference mode must agree with whole-image inference."""

    num_classes, size_divisor, min_size = 4, 1, 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_sliding_window_and_flip_agree_with_whole_image_for_a_pointwise_model():
    model = _Pointwise().eval()
    images = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        whole = predict_probs(model, images, EvalConfig(mode="whole"), 4)
        torch.testing.assert_close(slide_logits(model, images, 32, 21, 4), model(images))
        slide = predict_probs(model, images, EvalConfig(mode="slide", window=32, stride=21, flip=True), 4)
        torch.testing.assert_close(slide, whole)


def test_multi_scale_averages_probabilities_and_respects_the_minimum_short_side():
    seen = []

    class Recorder(_Pointwise):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    model = Recorder().eval()
    with torch.no_grad():
        probs = predict_probs(
            model,
            torch.randn(1, 3, 40, 60),
            EvalConfig(scales=(0.5, 1.0, 1.5), flip=True, min_short_side=32),
            4,
        )
    assert seen == [(32, 48), (32, 48), (40, 60), (40, 60), (60, 90), (60, 90)]
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 40, 60))


def test_whole_inference_pads_to_the_size_divisor():
    model = tiny_setr("setr_naive_vit_base").eval()
    with torch.no_grad():
        probs = predict_probs(model, torch.randn(1, 3, 50, 37), EvalConfig(), model.num_classes)
    assert probs.shape == (1, 5, 50, 37)


def test_checkpoint_round_trip_and_mismatch_report(tmp_path):
    model = tiny_gpvit_segmentor("segformer")
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(
        tmp_path, 7, model, Config(), {"optimizer": optimizer.state_dict(), "rng_cpu": torch.get_rng_state()}
    )
    assert latest_checkpoint(tmp_path) == path and not list((tmp_path / "checkpoints").glob(".saving-*"))
    clone = tiny_gpvit_segmentor("segformer")
    load_weights(clone, tmp_path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), clone.state_dict().values(), strict=True)
    )
    assert load_state(path)["step"] == 7
    other = tiny_gpvit_segmentor("upernet")
    with pytest.raises(
        ValueError,
        match=r"(?s)does not fit GPViTSegmentor; nothing was loaded.*missing \d+: aux_heads.*unexpected \d+: decode_head\.convs",
    ):
        load_weights(other, path)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        load_weights(other, tmp_path / "nothing")


def test_config_yaml_round_trip_and_overrides(tmp_path):
    cfg = load_config(
        "configs/tiny_gpvit.yaml", ["optim.lr=0.01", "eval.scales=[0.5, 1.0]", "model.kwargs.depth=2"]
    )
    assert cfg.optim.lr == 0.01 and cfg.eval.scales == (0.5, 1.0) and cfg.model.kwargs["depth"] == 2
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    with pytest.raises(ValueError, match="unknown key 'lrr'"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        apply_overrides(cfg, ["iters"])
    with pytest.raises(ValueError, match=r"override 'iters=many': iters: expected int, got 'many'"):
        apply_overrides(cfg, ["iters=many"])
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# The recipes' groups as published (mmseg's paramwise_cfg, the official GPViT / HLG configs): LR x
# head_lr_mult for names containing "head", no weight decay for 1-D tensors and these name parts.
PUBLISHED_NO_DECAY = ("norm", "bias", "pos_embed", "group_tokens", "query_token", "cls_token")


@pytest.mark.parametrize(
    "preset",
    [
        "setr_naive_vit_large_pascal_context.yaml",
        "setr_pup_vit_large_cityscapes.yaml",
        "setr_mla_vit_large_ade20k.yaml",
        "gpvit_l1_upernet_ade20k.yaml",
        "gpvit_l1_segformer_ade20k.yaml",
        "setr_hlg_small_cityscapes.yaml",
        "setr_hlg_medium_ade20k.yaml",
        "gpvit_l1_imagenet.yaml",
    ],
)
def test_parameter_groups_from_the_models_equal_the_recipes_groups(preset):
    """``param_groups`` reads the head / backbone split from ``group_matcher`` and the no-decay names
    from ``no_weight_decay``; each group holds exactly the parameters the published rule puts there."""
    cfg = load_config(CONFIGS / preset)
    cfg.data.num_classes = cfg.data.num_classes or 7
    with torch.device("meta"):
        model = build_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, OptimConfig(head_lr_mult=10.0, weight_decay=0.05))
    found = {(g["lr_mult"], g["weight_decay"]): {names[id(p)] for p in g["params"]} for g in groups}
    published: dict[tuple[float, float], set[str]] = {}
    for name, param in model.named_parameters():
        decays = param.ndim > 1 and not any(part in name for part in PUBLISHED_NO_DECAY)
        published.setdefault((10.0 if "head" in name else 1.0, 0.05 if decays else 0.0), set()).add(name)
    assert found == published


def test_learning_rate_schedules():
    poly = ScheduleConfig(policy="poly", power=0.9, min_lr=1e-4)
    assert learning_rate(0, 100, 0.01, poly) == pytest.approx(0.01)
    assert learning_rate(50, 100, 0.01, poly) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert learning_rate(100, 100, 0.01, poly) == pytest.approx(1e-4)
    warm = ScheduleConfig(policy="poly", power=1.0, warmup_iters=10, warmup_ratio=1e-6)
    assert learning_rate(0, 100, 1.0, warm) == pytest.approx(1e-6)
    assert learning_rate(5, 100, 1.0, warm) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert learning_rate(50, 100, 1.0, ScheduleConfig(policy="cosine")) == pytest.approx(0.5)


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads_and_builds(preset):
    """Each recipe in configs/ parses and builds its model (on the meta device: no memory used)."""
    cfg = load_config(CONFIGS / preset)
    if cfg.task == "classification":
        cfg.data.num_classes = 1000
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.num_classes == (
        cfg.data.num_classes
        or {"cityscapes": 19, "ade20k": 150, "pascal_context": 59, "demo": 6}[cfg.data.dataset]
    )
