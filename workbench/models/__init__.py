"""Model families (each module registers its variants with timm and the workbench on import)."""

from workbench.models import gpvit, hlg, setr
from workbench.models.gpvit import GPViT, GPViTSegmentor
from workbench.models.hlg import HLG, SETRHLG
from workbench.models.registry import PaperFigures, create_segmentor, list_models, model_info
from workbench.models.segmentor import Segmentor
from workbench.models.setr import SETR

__all__ = [
    "HLG",
    "SETR",
    "SETRHLG",
    "GPViT",
    "GPViTSegmentor",
    "PaperFigures",
    "Segmentor",
    "create_segmentor",
    "gpvit",
    "hlg",
    "list_models",
    "model_info",
    "setr",
]
