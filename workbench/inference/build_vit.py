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

import timm

from workbench.inference.vit_predictor import ViTPredictor
from workbench.interop.files import first_line
from workbench.models.any_vit import ExplainedViT
from workbench.precision import resolve_device


def _create(name: str, pretrained: bool, options: dict):
    """timm.create_model with ``dynamic_img_size=True`` where the model's class takes it (BEiT's does
    not: it then takes its own input size only)."""
    try:
        return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True, **options)
    except TypeError as error:
        if "dynamic_img_size" not in str(error):
            raise
        return timm.create_model(name, pretrained=pretrained, **options)


def create_vit(
    name: str,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    **kwargs,
):
    """A timm ViT named ``name`` with the weights of ``checkpoint`` (a file), of timm's own release
    (``pretrained=True``: timm downloads it) or random (neither); one-line errors."""
    if checkpoint is not None and pretrained:
        raise ValueError("give checkpoint=FILE or pretrained=True, not both")
    if name.split(".")[0] not in timm.list_models():
        raise ValueError(
            f"unknown timm model {name!r}; e.g. vit_small_patch16_224.dino, eva02_small_patch14_224"
        )
    options = dict(kwargs)
    if num_classes is not None:
        options["num_classes"] = num_classes
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ValueError(f"checkpoint {str(checkpoint)!r} is not a file")
        options["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return _create(name, checkpoint is not None or pretrained, options)
    except (RuntimeError, OSError, KeyError, ValueError, TypeError) as error:
        where = f"from {checkpoint}" if checkpoint is not None else "from timm's release"
        raise ValueError(f"could not build {name} {where}: {first_line(error)}") from None


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
    vit = create_vit(name, checkpoint, pretrained, num_classes, **kwargs)
    vit = vit.to(resolve_device(device)).eval()
    predictor = ViTPredictor(ExplainedViT(vit), size=size, precision=precision)
    if checkpoint is None and not pretrained:
        predictor.note = "random weights: no checkpoint was given"
    return predictor
