"""Inference: predictors for segmentors and detectors, explain sessions, and building them.

predictor = workbench.load_predictor(run_folder_or_release)  # workbench.inference.build
prediction = predictor(photo)
session = predictor.open(photo)                               # segmentors: explain queries
"""

from workbench.inference.build import load_predictor, load_run
from workbench.inference.detection_predictor import DetectionPredictor, Detections
from workbench.inference.predictor import Prediction, Predictor
from workbench.inference.protocol import ImagePredictor
from workbench.inference.recipes import recipe_for
from workbench.inference.session import Session

__all__ = [
    "DetectionPredictor",
    "Detections",
    "ImagePredictor",
    "Prediction",
    "Predictor",
    "Session",
    "load_predictor",
    "load_run",
    "recipe_for",
]
