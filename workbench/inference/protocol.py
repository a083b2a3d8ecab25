"""The one protocol both predictors follow, so callers (the CLI, the app, notebooks) treat them alike.

predictor = workbench.load_predictor(source)  # a Predictor or a DetectionPredictor
result = predictor(photo)                     # a Prediction (labels) or Detections (boxes)
predictor.classes, predictor.device, predictor.precision.reason, predictor.load_report
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from workbench.data.classes import Classes
from workbench.data.image import ImageSource
from workbench.precision import Precision

if TYPE_CHECKING:
    from workbench.interop import LoadReport


@runtime_checkable
class ImagePredictor(Protocol):
    """Inference on one image at a time with a built model, used as given (``note`` says where the
    predictor works on its own copy instead)."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    precision: Precision
    classes: Classes
    num_classes: int
    load_report: LoadReport | None
    note: str

    def __call__(self, image: ImageSource) -> Any:
        """A ``Prediction`` (segmentors) or ``Detections`` (detectors) of one image."""
        ...
