"""Model families (each module registers its variants with timm and the workbench on import)."""

from typing import Any

from torch import nn

from workbench.models import gpvit, hlg, registry, setr
from workbench.models.gpvit import GPViT, GPViTSegmentor
from workbench.models.hlg import HLG, SETRHLG
from workbench.models.registry import PaperFigures, list_models, model_info
from workbench.models.segmentor import Segmentor
from workbench.models.setr import SETR
from workbench.models.setr_timm import DECODER_NAMES, TimmSETR, create_timm_segmentor


def create_segmentor(
    name: str, *, num_classes: int, encoder: str | None = None, **overrides: Any
) -> nn.Module:
    """Build a segmentor: a registered one, e.g. ``create_segmentor("setr_pup_vit_large", num_classes=19)``
    (keyword arguments override the variant's defaults), or, with ``encoder=`` a timm ViT name, a SETR
    decoder on that encoder: ``create_segmentor("setr_pup", encoder="vit_base_patch14_reg4_dinov2",
    num_classes=150)`` (``workbench.models.setr_timm``)."""
    if encoder is not None or name in DECODER_NAMES:
        return create_timm_segmentor(name, encoder=encoder, num_classes=num_classes, **overrides)
    return registry.create_segmentor(name, num_classes=num_classes, **overrides)


__all__ = [
    "HLG",
    "SETR",
    "SETRHLG",
    "GPViT",
    "GPViTSegmentor",
    "PaperFigures",
    "Segmentor",
    "TimmSETR",
    "create_segmentor",
    "gpvit",
    "hlg",
    "list_models",
    "model_info",
    "setr",
]
