"""The fast path's settings: channels-last inference, fused optimizers, and the fp32-vs-bf16 agreement
measurement used for the demo models' fidelity figures."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workbench import Predictor
from workbench.config import EvalConfig, OptimConfig
from workbench.engine.evaluate import evaluate, precision_agreement, predict_probs
from workbench.engine.optim import build_optimizer
from workbench.precision import autocast, resolve_precision, use_channels_last

from .tiny import tiny_gpvit_segmentor, tiny_setr_hlg


def test_channels_last_lays_out_convolutions_and_keeps_the_predictions():
    torch.manual_seed(0)
    model = tiny_gpvit_segmentor("upernet").eval()
    photo = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    plain = Predictor(model, device="cpu")
    assert not plain.channels_last and plain.model is model
    expected = plain(photo).probs
    fast = Predictor(model, device="cpu", channels_last=True)
    assert fast.channels_last and fast.model is not model  # its own copy: the given model is as it was
    conv = next(m for m in fast.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    given = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert given.weight.is_contiguous()
    torch.testing.assert_close(fast(photo).probs, expected, atol=1e-5, rtol=1e-4)


def test_channels_last_leaves_a_model_without_convolutions_alone():
    assert not use_channels_last(nn.Sequential(nn.Linear(4, 4)))


def test_fused_adamw_takes_the_same_step_as_the_loop():
    torch.manual_seed(0)
    models = [tiny_setr_hlg().eval(), tiny_setr_hlg().eval()]  # eval: no drop-path draws
    models[1].load_state_dict(models[0].state_dict())
    start = [p.detach().clone() for p in models[0].parameters()]
    images, targets = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    cfg = OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05)
    optimizers = [build_optimizer(models[0], cfg), build_optimizer(models[1], cfg)]
    assert optimizers[0].defaults["fused"]
    for group in optimizers[1].param_groups:  # the per-tensor loop, for reference
        group["fused"] = None
    for model, optimizer in zip(models, optimizers, strict=True):
        model.losses(images, targets)["loss"].backward()  # the same gradients: one step compares
        optimizer.step()  # the updates (a second step would amplify rounding through tiny v)
    for fused, loop in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(fused, loop, atol=1e-6, rtol=1e-5)  # 0.1% of a 1e-3 step
    assert not optimizers[1].param_groups[0]["fused"]
    assert any(not torch.equal(p, q) for p, q in zip(models[0].parameters(), start, strict=True))


class _Set:
    """Three random images and labels (with an ignored region), normalised like a data set's items."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(3):
            labels = torch.randint(0, 5, (48, 64), generator=generator)
            labels[:4] = 255
            self.items.append((torch.randn(3, 48, 64, generator=generator), labels))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def test_precision_agreement_counts_the_pixels_both_precisions_label_alike():
    torch.manual_seed(0)
    model = tiny_setr_hlg().eval()
    data, cfg = _Set(), EvalConfig()
    result = precision_agreement(model, data, cfg, 5, precision="bf16")
    same = counted = 0
    with torch.no_grad():
        for image, labels in data:
            labels_of = {}
            for name in ("fp32", "bf16"):
                with autocast(resolve_precision(name, "cpu"), "cpu"):
                    labels_of[name] = predict_probs(model, image[None], cfg, 5)[0].argmax(0)
            valid = labels != 255
            same += int((labels_of["fp32"] == labels_of["bf16"])[valid].sum())
            counted += int(valid.sum())
    assert result["pixels"] == counted == 3 * 44 * 64
    assert result["agreement"] == 100.0 * same / counted
    assert result["agreement"] < 100.0  # a random tiny model has near-ties that bf16 flips
    reference = evaluate(model, data, cfg, 5, progress=False)
    assert abs(result["mIoU_fp32"] - reference["mIoU"]) < 1e-9
    assert result["delta_mIoU"] == result["mIoU_bf16"] - result["mIoU_fp32"]


def test_compile_setting_is_resolved_with_its_reason():
    from workbench.fast_path import resolve_compile

    auto_cpu = resolve_compile("auto", "cpu")
    assert (
        not auto_cpu.enabled
        and "eager on a CPU" in auto_cpu.reason
        and "docs/fast_path.md" in auto_cpu.reason
    )
    assert resolve_compile("auto", "cuda").enabled  # no GPU needed to decide
    assert resolve_compile("yes", "cpu").enabled and resolve_compile(True, "cpu").enabled
    assert not resolve_compile("no", "cuda").enabled and not resolve_compile(False, "cpu").enabled
    try:
        resolve_compile("fast", "cpu")
    except ValueError as error:
        assert str(error) == "compile must be one of auto, yes, no, got 'fast'"
    else:
        raise AssertionError("an unknown compile setting was accepted")
    predictor = Predictor(tiny_setr_hlg().eval(), device="cpu")
    assert not predictor.compile.enabled and "eager" in predictor.fast_path and "fp32" in predictor.fast_path


def test_a_compiled_predictor_predicts_as_eager_with_the_models_current_weights():
    """compile='yes' runs predictions through torch.compile: the same labels as eager; weights changed
    in place afterwards (a notebook training on) are the ones it predicts with (no frozen copy); a
    second image size recompiles and still agrees; explain sessions run the model itself."""
    from .tiny import tiny_setr

    torch.manual_seed(0)
    model = tiny_setr("setr_naive_vit_base").eval()
    rng = np.random.default_rng(1)
    photo, other = (rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in ((48, 64), (40, 72)))
    eager, fast = Predictor(model, device="cpu", compile="no"), Predictor(model, device="cpu", compile="yes")
    assert fast.model is model and "compiled (asked for)" in fast.fast_path
    np.testing.assert_array_equal(fast(photo).labels, eager(photo).labels)
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(-1)  # in place, as an optimizer step does
    flipped = eager(photo).labels
    np.testing.assert_array_equal(fast(photo).labels, flipped)
    np.testing.assert_array_equal(fast(other).labels, eager(other).labels)
    session = fast.open(photo)
    assert session.sites() and np.array_equal(session.prediction.labels, flipped)
