"""Training and evaluation engine."""

from workbench.engine.checkpoint import latest_checkpoint, load_weights, save_checkpoint
from workbench.engine.evaluate import ConfusionMatrix, Prediction, Predictor, evaluate, predict_probs
from workbench.engine.train import build_model, train

__all__ = [
    "ConfusionMatrix",
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
