"""Training and evaluation engine (inference lives in ``workbench.inference``)."""

from workbench.build import build_model
from workbench.engine.evaluate import ConfusionMatrix, evaluate, predict_probs
from workbench.engine.train import train
from workbench.interop import load_weights
from workbench.interop.checkpoint import latest_checkpoint, save_checkpoint

__all__ = [
    "ConfusionMatrix",
    "build_model",
    "evaluate",
    "latest_checkpoint",
    "load_weights",
    "predict_probs",
    "save_checkpoint",
    "train",
]
