"""Models and explain sessions the app keeps: each checkpoint loaded once and shared by every user, its
lock (one model call at a time), and the sessions of the images segmented, bounded and keyed by the model
and the file's bytes, so a click on a segmented image runs no forward pass."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.settings import Settings
from workbench import Predictor
from workbench.data.image import DecodedImage, open_image
from workbench.inference.detection_predictor import DetectionPredictor
from workbench.interop.checkpoint import is_checkpoint


@dataclass
class Loaded:
    """A predictor shared by every user, its lock (one model call at a time) and what loading said."""

    key: str
    predictor: Predictor | DetectionPredictor
    lock: threading.Lock
    report: str

    @property
    def detects(self) -> bool:
        return isinstance(self.predictor, DetectionPredictor)


def load_predictor(
    checkpoint: str, model: str = "", num_classes: int | None = None, **kwargs
) -> Predictor | DetectionPredictor:
    """A Predictor for a run folder or checkpoint (``Predictor.from_checkpoint``; a DetectionPredictor
    for a detection run), or for a released file with the segmentor or detector ``model`` and its class
    count (``Predictor.from_pretrained``)."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise ValueError(f"{checkpoint}: no such file or folder; expected a run folder or a checkpoint file")
    if is_checkpoint(path):
        return Predictor.from_checkpoint(path, **kwargs)
    if not model or not num_classes:
        raise ValueError(
            f"{checkpoint} is not a workbench checkpoint: give the segmentor or detector it belongs to and "
            "its class count (e.g. gpvit_l1_upernet, 150) to load it as a released checkpoint"
        )
    return Predictor.from_pretrained(path, model, int(num_classes), **kwargs)


class Models:
    """Predictors by checkpoint, each loaded once; the ``keep`` most recently used stay in memory."""

    def __init__(self, settings: Settings, keep: int = 2) -> None:
        self.settings, self.keep = settings, keep
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, checkpoint: str, model: str = "", num_classes: int | None = None) -> Loaded:
        key = f"{Path(checkpoint).expanduser().resolve()}|{model}|{num_classes or ''}"
        with self._lock:
            if key not in self._loaded:
                predictor = load_predictor(
                    checkpoint,
                    model,
                    num_classes,
                    device=self.settings.device,
                    precision=self.settings.precision,
                )
                report = "\n".join(
                    [
                        str(predictor.load_report),
                        f"device {predictor.device}, precision {predictor.precision.name} "
                        f"({predictor.precision.reason}), {predictor.num_classes} classes",
                    ]
                )
                self._loaded[key] = Loaded(key, predictor, threading.Lock(), report)
            self._loaded.move_to_end(key)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return self._loaded[key]

    def find(self, key: str) -> Loaded:
        with self._lock:
            if key not in self._loaded:
                raise ValueError("that model was unloaded to make room for another: load it again")
            return self._loaded[key]


@dataclass
class Entry:
    """One image with a model: the image as read and the predictor's explain session (its prediction),
    or a detector's detections (every one the detector keeps: a threshold filters them later)."""

    decoded: DecodedImage
    session: Any

    def frame(self) -> dict:
        """What an API answer says of the image it read: the size its labels or boxes are in (images
        over the pixel budget are downscaled), the file's own size, and the reader's notes."""
        height, width = self.decoded.pixels.shape[:2]
        return {
            "height": int(height),
            "width": int(width),
            "original_size": list(self.decoded.size),
            "notes": list(self.decoded.notes),
        }


class Sessions:
    """Explain sessions by (model, image file bytes), the last ``size`` kept: a click on an image that
    was segmented runs no forward pass. An evicted image is segmented again on its next query."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, loaded: Loaded, path: str) -> Entry:
        if not path:
            raise ValueError("no image: upload one or pick an example")
        key = (loaded.key, hashlib.sha256(Path(path).read_bytes()).hexdigest())
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        settings = self.settings
        try:
            decoded = open_image(
                path,
                max_pixels=settings.max_pixels,
                pixel_budget=settings.pixel_budget,
                min_side=settings.min_side,
            )
        except ValueError as error:  # name the file as the user knows it, not by Gradio's upload folder
            raise ValueError(str(error).replace(str(path), Path(path).name)) from None
        with loaded.lock:
            if loaded.detects:
                entry = Entry(decoded, loaded.predictor(decoded.pixels, score_threshold=0.0))
            else:
                entry = Entry(decoded, loaded.predictor.open(decoded.pixels, probs=False))  # labels suffice
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > settings.sessions:
                self._entries.popitem(last=False)
        return entry
