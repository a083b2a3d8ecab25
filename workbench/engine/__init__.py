"""Training and evaluation engine."""

from workbench.build import build_model
from workbench.engine.detection_predictor import DetectionPredictor, Detections
from workbench.engine.evaluate import ConfusionMatrix, evaluate, predict_probs
from workbench.engine.predictor import Prediction, Predictor
from workbench.engine.train import train
from workbench.interop import load_weights
from workbench.interop.checkpoint import latest_checkpoint, save_checkpoint

__all__ = [
    "ConfusionMatrix",
    "DetectionPredictor",
    "Detections",
    "Prediction",
    "Predictor",
    "build_model",
    "evaluate",
    "latest_checkpoint",
    "load_weights",
    "predict_probs",
    "save_checkpoint",
    "train",
]
