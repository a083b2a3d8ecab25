"""A research workbench for vision transformers that do dense prediction: SETR, HLG and GPViT."""

from workbench import viz
from workbench.models import Segmentor, create_segmentor, list_models

__version__ = "0.1.0"
__all__ = ["Segmentor", "__version__", "create_segmentor", "list_models", "viz"]
