"""Model families (each module registers its variants with timm and the workbench on import)."""

from workbench.models import setr
from workbench.models.registry import PaperFigures, create_segmentor, list_models, model_info
from workbench.models.segmentor import Segmentor
from workbench.models.setr import SETR

__all__ = ["SETR", "PaperFigures", "Segmentor", "create_segmentor", "list_models", "model_info", "setr"]
