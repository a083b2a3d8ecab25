"""Precision settings: what "auto" resolves to and why, bad values refused, bf16 predictions faithful."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench import Predictor
from workbench import precision as precision_module
from workbench.precision import autocast, resolve_precision, run_precision
from workbench.viz import record

from .tiny import tiny_gpvit_segmentor, tiny_setr, tiny_setr_hlg

# Random tiny models put near-ties everywhere (median top-2 margin 0.005 for GPViT), so label
# agreement alone says little: the bound is on the probabilities. bf16 moves one by at most 0.0005
# (GPViT) to 0.002 (SETR, HLG) at 64x96, measured; 0.01 leaves headroom and is still 5x below the
# median margin of SETR and HLG. Labels then agree on 99.0-99.8% of pixels (measured); 98% is asked.
PROB_ATOL = 0.01


def _photo(height: int = 64, width: int = 96) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("asked", "expected"), [("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("none", "fp32")]
)
def test_explicit_precisions_are_kept(asked, expected):
    assert resolve_precision(asked, "cpu").name == expected


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16_and_says_why(monkeypatch, native, expected):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == expected and chosen.reason.startswith("auto:") and "bf16" in chosen.reason


@pytest.mark.parametrize("bad", ["fp8", "half", "BF16", ""])
def test_bad_precisions_are_refused_in_one_line(bad):
    with pytest.raises(ValueError, match=r"^precision must be one of auto, fp32, bf16, fp16, got") as error:
        resolve_precision(bad, "cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(tiny_setr("setr_naive_vit_base"), device="cpu", precision=bad)


@pytest.mark.parametrize(("name", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_runs_linear_layers_in_the_resolved_dtype(name, dtype):
    with autocast(resolve_precision(name, "cpu"), "cpu"):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == dtype


@pytest.mark.parametrize(
    "build",
    [lambda: tiny_setr("setr_naive_vit_base"), lambda: tiny_gpvit_segmentor("segformer"), tiny_setr_hlg],
    ids=["setr", "gpvit", "hlg"],
)
def test_bf16_predictions_agree_with_fp32(build):
    torch.manual_seed(0)
    model = build()
    photo = _photo()
    fp32 = Predictor(model, device="cpu")(photo)
    bf16 = Predictor(model, device="cpu", precision="bf16")(photo)
    assert bf16.probs.dtype == torch.float32
    gap = (fp32.probs - bf16.probs).abs().max().item()
    assert 0 < gap < PROB_ATOL  # bf16 did run, and moved no probability by more than the bound
    assert (bf16.labels == fp32.labels).mean() >= 0.98


def test_recorded_attention_stays_fp32_under_bf16_autocast():
    """The explicit path's softmax runs in fp32: rows sum to one and match the fp32 maps."""
    torch.manual_seed(0)
    model = tiny_gpvit_segmentor("segformer").eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), record(model) as fp32:
        model(images)
    with torch.no_grad(), record(model) as bf16, autocast(resolve_precision("bf16", "cpu"), "cpu"):
        model(images)
    assert fp32.attention.keys() == bf16.attention.keys()
    for name, low in bf16.attention.items():
        probs = low.probs
        assert probs.dtype == torch.float32 and torch.isfinite(probs).all(), name
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(probs, fp32.attention[name].probs, atol=0.02, rtol=0)


def test_explain_queries_answer_under_bf16():
    torch.manual_seed(0)
    model = tiny_gpvit_segmentor("segformer")
    photo = _photo(48, 64)
    answers = []
    for name in ("fp32", "bf16"):
        predictor = Predictor(model, device="cpu", precision=name)
        predictor.set_image(photo)
        answers.append(
            (
                predictor.attention_at(20, 30, "blocks.0.vertical"),
                predictor.attention_at(20, 30, "blocks.1.ungrouping"),
                predictor.group_maps("blocks.1.grouping"),
            )
        )
    for fp32, bf16 in zip(*answers, strict=True):
        assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
        torch.testing.assert_close(bf16, fp32, atol=0.02, rtol=0)


@pytest.mark.parametrize("native", [True, False])
def test_training_on_a_cpu_stays_fp32_under_auto_and_honours_an_explicit_bf16(monkeypatch, native):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    assert run_precision("auto", "cpu").name == "fp32"
    assert run_precision("bf16", "cpu").name == "bf16"
    assert run_precision("none", "cpu").name == "fp32"
    assert run_precision("fp16", "cpu").name == "fp32"  # the GPU recipes' fp16 has no CPU fast path
