"""Inference: predictors for segmentors and detectors, explain sessions, and building them.

predictor = workbench.load_predictor(run_folder_or_release)  # workbench.inference.build
prediction = predictor(photo)
session = predictor.open(photo)                               # segmentors: explain queries
ViTPredictor(timm_vit).open(photo).class_attention()          # any timm ViT: DINO's maps
"""

from workbench.inference.build import load_predictor, load_run
from workbench.inference.build_vit import create_vit, load_vit_predictor
from workbench.inference.detection_predictor import DetectionPredictor, Detections
from workbench.inference.folder import FolderSummary, predict_folder
from workbench.inference.predictor import Prediction, Predictor
from workbench.inference.protocol import ImagePredictor
from workbench.inference.recipes import recipe_for
from workbench.inference.session import Session
from workbench.inference.vit_predictor import ViTDescription, ViTPredictor, ViTSession

__all__ = [
    "DetectionPredictor",
    "Detections",
    "FolderSummary",
    "ImagePredictor",
    "Prediction",
    "Predictor",
    "Session",
    "ViTDescription",
    "ViTPredictor",
    "ViTSession",
    "create_vit",
    "load_predictor",
    "load_run",
    "load_vit_predictor",
    "predict_folder",
    "recipe_for",
]
