"""A research workbench for vision transformers that do dense prediction: SETR, HLG and GPViT."""

from workbench import viz
from workbench.engine import train
from workbench.inference import DetectionPredictor, Predictor, ViTPredictor, load_predictor
from workbench.interop import export, load_pretrained
from workbench.models import Segmentor, create_segmentor, list_models
from workbench.models.detection import create_detector, list_detectors

__version__ = "0.1.0"
__all__ = [
    "DetectionPredictor",
    "Predictor",
    "Segmentor",
    "ViTPredictor",
    "__version__",
    "create_detector",
    "create_segmentor",
    "export",
    "list_detectors",
    "list_models",
    "load_predictor",
    "load_pretrained",
    "train",
    "viz",
]
