"""The contract every registered model keeps (timm's test_models.py style), on its tiny settings.

Each model in ``list_models()``: builds through timm with the tiny settings declared at its
registration, runs forward and backward on an odd input size without NaN, gives every parameter a
gradient, records every attention site (outputs within the stated tolerance), and round-trips its
weights through the workbench checkpoint format and through its official release layout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.config import Config, ModelConfig
from workbench.interop import export_state, load_pretrained
from workbench.interop.checkpoint import save_weights
from workbench.models import list_models, model_info
from workbench.models.explain import EXPLICIT_ATOL, EXPLICIT_RTOL
from workbench.viz import record

from .tiny import tiny

NUM_CLASSES = 3
# The layout each family was released in (SETR: the official fudan-zvg code, our default flavour).
OFFICIAL_LAYOUT = {"SETR": "setr_official", "GPViT": "gpvit", "HLG": "hlg"}


def _odd_size(model) -> tuple[int, int]:
    """An odd input size the model takes: SETR needs multiples of its 16-pixel patch (an odd 3x5 grid)."""
    return (48, 80) if getattr(model, "size_divisor", 1) > 1 else (50, 37)


def _loss(model, images: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "losses"):  # segmentors: main and auxiliary losses, so aux heads get gradients
        targets = torch.randint(0, NUM_CLASSES, (images.shape[0], *images.shape[-2:]))
        return model.losses(images, targets)["loss"]
    return F.cross_entropy(model(images), torch.arange(images.shape[0]) % NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_keeps_the_contract(name, tmp_path):
    info = model_info(name)
    assert info.tiny, f"{name} declares no tiny settings at registration"
    model = tiny(name, NUM_CLASSES)
    assert model.pretrained_cfg["architecture"] == name
    images = torch.randn(2, 3, *_odd_size(model))

    # Forward and backward: finite, and every parameter takes part.
    model.train()
    loss = _loss(model, images)
    assert torch.isfinite(loss)
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not silent, f"parameters without a finite gradient: {silent[:5]}"

    # Inference: the output shape, and every attention site recorded on the forward path.
    model.eval()
    with torch.no_grad():
        plain = model(images)
        expected = (2, NUM_CLASSES, *images.shape[-2:]) if info.task == "segmentation" else (2, NUM_CLASSES)
        assert plain.shape == expected and torch.isfinite(plain).all()
        with record(model) as rec:
            recorded = model(images)
    torch.testing.assert_close(recorded, plain, atol=EXPLICIT_ATOL, rtol=EXPLICIT_RTOL)
    assert list(rec.attention) == list(model.attention_sites()) and rec.attention

    # Weights through the workbench format into a fresh build: the same outputs.
    cfg = Config(task=info.task, model=ModelConfig(name, dict(info.tiny)))
    save_weights(tmp_path, model, cfg)
    fresh = tiny(name, NUM_CLASSES).eval()
    report = load_pretrained(fresh, tmp_path)
    assert report.clean, str(report)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), plain)

    # ... and through the official layout (HLG's release has no segmentation heads: backbone only).
    torch.save(export_state(model, OFFICIAL_LAYOUT[info.family]), tmp_path / "official.pth")
    fresh = tiny(name, NUM_CLASSES).eval()
    report = load_pretrained(fresh, tmp_path / "official.pth", format=OFFICIAL_LAYOUT[info.family])
    assert report.clean, str(report)
    backbone_only = info.family == "HLG" and info.task == "segmentation"
    assert bool(report.kept) == backbone_only
    if backbone_only:
        fresh.load_state_dict({**model.state_dict(), **fresh.backbone.state_dict(prefix="backbone.")})
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), plain)
