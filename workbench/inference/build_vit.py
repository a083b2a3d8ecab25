"""Building a ``ViTPredictor`` from a timm model name and, optionally, a weights file.

    predictor = load_vit_predictor("vit_small_patch14_reg4_dinov2", checkpoint="dinov2_vits14_reg4.pth")
    predictor = load_vit_predictor("vit_base_patch16_224.dino", pretrained=True)   # timm's own download

The file is read as timm reads its pretrained files (``pretrained_cfg_overlay=dict(file=...)``): a
plain state dict, timm's ``save_checkpoint`` layout (``state_dict`` / ``state_dict_ema``), or a
release's own layout that timm's loader for that model converts (e.g. Facebook's DINOv2 files); the
classifier is kept or dropped as the file and ``num_classes`` say. Models are built with
``dynamic_img_size=True`` where the class takes it, so any image size works.
"""

from __future__ import annotations

from pathlib import Path

from workbench.inference.vit_predictor import ViTPredictor
from workbench.models.any_vit import ExplainedViT, create_vit
from workbench.precision import resolve_device


def load_vit_predictor(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    size: int | None = None,
    device: str | None = None,
    precision: str = "fp32",
    **kwargs,
) -> ViTPredictor:
    """A ``ViTPredictor`` for timm model ``name`` (``create_vit``), in eval mode on ``device`` (None:
    the GPU when there is one). ``note`` says when the weights are random."""
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    vit = create_vit(name, checkpoint, pretrained=pretrained, **kwargs)
    vit = vit.to(resolve_device(device)).eval()
    predictor = ViTPredictor(ExplainedViT(vit), size=size, precision=precision)
    if checkpoint is None and not pretrained:
        predictor.note = "random weights: no checkpoint was given"
    return predictor
