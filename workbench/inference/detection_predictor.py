"""Detection on single images, for notebooks, ``workbench predict`` and the app.

    predictor = Predictor.from_checkpoint(run_folder)            # a detection run: a DetectionPredictor
    detections = predictor(photo)                                # boxes, labels, scores, masks
    Image.fromarray(detections.draw(photo)).save("detections.png")
    detections.above(0.5).to_json()                              # [{"label", "score", "box"}, ...]

Images go through the one image reader (``read_image``); the detector resizes them itself (its
``min_size`` / ``max_size``) and returns boxes and masks in image pixels. Device and precision are
the segmentation ``Predictor``'s: the model is used as given (``workbench.inference.placement``), in
``workbench.precision``'s setting. Building from runs and releases: ``workbench.inference.build``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from workbench.data.classes import Classes, default_palette
from workbench.data.image import ImageSource, read_image
from workbench.inference.placement import as_given
from workbench.models.detection.detectors import DetectorMixin
from workbench.precision import autocast, model_device_dtype, resolve_precision


@dataclass
class Detections:
    """The detections of one image above ``score_threshold``: ``boxes`` (N, 4) x1 y1 x2 y2 in pixels,
    ``labels`` (N,) in 1..K, ``scores`` (N,), ``masks`` (N, H, W) bool or None (RetinaNet)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None
    classes: Classes = field(repr=False)

    def names(self) -> list[str]:
        return [self.classes.names[label] for label in self.labels]

    def above(self, score_threshold: float) -> Detections:
        """The detections scoring at least ``score_threshold``."""
        keep = self.scores >= score_threshold
        masks = None if self.masks is None else self.masks[keep]
        return Detections(self.boxes[keep], self.labels[keep], self.scores[keep], masks, self.classes)

    def to_json(self) -> list[dict[str, Any]]:
        """One entry per detection: class, score, box (masks are left to the drawing)."""
        return [
            {"label": name, "score": round(float(score), 4), "box": [round(float(v), 1) for v in box]}
            for name, score, box in zip(self.names(), self.scores, self.boxes, strict=True)
        ]

    def draw(self, image: np.ndarray, alpha: float = 0.45) -> np.ndarray:
        """``image`` (H, W, 3) uint8 with every mask blended in its class colour, every box outlined
        and labelled "class score"."""
        canvas = image.astype(np.float32)
        colours = [self.classes.palette[label] for label in self.labels]
        if self.masks is not None:
            for mask, colour in zip(self.masks, colours, strict=True):
                canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.array(colour, np.float32)
        drawn = Image.fromarray(canvas.round().astype(np.uint8))
        pen = ImageDraw.Draw(drawn)
        for box, colour, name, score in zip(self.boxes, colours, self.names(), self.scores, strict=True):
            pen.rectangle([float(v) for v in box], outline=tuple(colour), width=2)
            pen.text((float(box[0]) + 2, float(box[1]) + 1), f"{name} {score:.2f}", fill=tuple(colour))
        return np.asarray(drawn)


class DetectionPredictor:
    """Single-image inference with a detector (``workbench.create_detector`` or a detection run).

    Args:
        model: a detector from ``create_detector`` (labels 1..``num_classes``, 0 the background).
        classes: names and palette, the background first; numbered classes when absent or of another count.
        device: None (the model's own), "cpu", "cuda" or "cuda:N" (refused without a GPU); the model is
            used as given, or an eval-mode copy where it is elsewhere or in training mode
            (``self.note`` says why).
        precision: "fp32" (the default), "bf16", "fp16" or "auto" (``workbench.precision``).
        score_threshold: detections scoring less are left out (a call can ask for another); the
            detector's own ``box_score_thresh`` / ``score_thresh`` (0.05) has applied before.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Classes | None = None,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        score_threshold: float = 0.3,
    ) -> None:
        if not isinstance(model, DetectorMixin):  # the workbench's Mask R-CNN and RetinaNet
            raise ValueError(f"expected a detector (Mask R-CNN or RetinaNet), got {type(model).__name__}")
        self.model, self.note = as_given(model, device)
        self.device, self.dtype = model_device_dtype(self.model)
        self.precision = resolve_precision(precision, self.device)
        self.num_classes = model.num_classes
        if classes is None or len(classes) != self.num_classes + 1:
            names = ("background", *(str(i) for i in range(1, self.num_classes + 1)))
            classes = Classes(names, default_palette(self.num_classes + 1))
        self.classes = classes
        self.score_threshold = score_threshold
        self.load_report = None  # the LoadReport of the weights, set by from_checkpoint / from_pretrained

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> DetectionPredictor:
        """``workbench.inference.build.load_predictor(path, ...)`` for a detection run."""
        from workbench.inference.build import load_predictor

        predictor = load_predictor(path, **options)
        if not isinstance(predictor, cls):
            raise ValueError(f"{path} is a segmentation run, not a detection run: use workbench.Predictor")
        return predictor

    @classmethod
    def from_pretrained(
        cls, source: str | Path, model: str, num_classes: int, **options: Any
    ) -> DetectionPredictor:
        """``workbench.inference.build.load_predictor(source, model=..., num_classes=...)`` for a
        released detector (the mmdet layout of GPViT's and HLG's releases)."""
        from workbench.inference.build import load_predictor

        return load_predictor(source, model=model, num_classes=num_classes, **options)

    @torch.no_grad()
    def __call__(self, source: ImageSource, score_threshold: float | None = None) -> Detections:
        """Detect in one image (a path, PIL image or array; any mode the image reader takes), keeping
        the detections scoring at least ``score_threshold`` (None: the predictor's own)."""
        pixels = read_image(source)
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(self.device, self.dtype).div(255)
        with autocast(self.precision, self.device):
            found = self.model([image])[0]
        threshold = self.score_threshold if score_threshold is None else score_threshold
        keep = found["scores"] >= threshold  # before the masks leave the device: (N, H, W) each
        masks = found["masks"][keep, 0].float().cpu().numpy() > 0.5 if "masks" in found else None
        return Detections(
            found["boxes"][keep].float().cpu().numpy(),
            found["labels"][keep].cpu().numpy(),
            found["scores"][keep].float().cpu().numpy(),
            masks,
            self.classes,
        )
