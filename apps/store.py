"""Models and explain sessions the app keeps, in bytes against one memory budget: each checkpoint
loaded once and shared by every user, with its lock (one model call at a time), and the sessions of the
images segmented, keyed by the model and the file's bytes, so a click on a segmented image runs no
forward pass. The least recently used go first; the app's own model (pinned) never does."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apps.settings import Settings
from workbench import Predictor
from workbench import load_predictor as workbench_predictor
from workbench.data.image import DecodedImage, open_image
from workbench.inference.detection_predictor import DetectionPredictor, Detections
from workbench.interop.checkpoint import is_checkpoint

LOADING_OFF = (
    "loading models from the page is off: start the app with --allow-load DIR ... (the folders it may "
    "load from) to turn it on"
)
# the same words whether the path exists or not: the load box is no oracle of the server's files
REFUSED = "refused: this app loads models only from the folders it was started with (--allow-load)"


@dataclass
class Loaded:
    """A predictor shared by every user, its lock (one model call at a time) and what loading said.
    ``key`` names the checkpoint, the model and the class count: what ``Models.find`` reloads it from."""

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
    """``workbench.load_predictor`` for a run folder or checkpoint (a DetectionPredictor for a detection
    run), or for a released file with the segmentor or detector ``model`` and its class count."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise ValueError(f"{checkpoint}: no such file or folder; expected a run folder or a checkpoint file")
    if is_checkpoint(path):
        return workbench_predictor(path, **kwargs)
    if not model or not num_classes:
        raise ValueError(
            f"{checkpoint} is not a workbench checkpoint: give the segmentor or detector it belongs to and "
            "its class count (e.g. gpvit_l1_upernet, 150) to load it as a released checkpoint"
        )
    return workbench_predictor(path, model=model, num_classes=int(num_classes), **kwargs)


def loadable(checkpoint: str, folders: Iterable[str]) -> Path:
    """``checkpoint`` resolved (symlinks followed) if it lies in one of ``folders``, else a one-line
    refusal that reads the same whether it exists or not (``LOADING_OFF`` where there are no folders)."""
    folders = list(folders)
    if not folders:
        raise ValueError(LOADING_OFF)
    try:
        path = Path(checkpoint).expanduser().resolve()
        allowed = [Path(folder).expanduser().resolve() for folder in folders]
    except (OSError, RuntimeError):  # a symlink loop, an unknown ~user
        raise ValueError(REFUSED) from None
    if not any(path.is_relative_to(folder) for folder in allowed):
        raise ValueError(REFUSED)
    return path


def nbytes(*values: Any) -> int:
    """Bytes held by arrays and tensors (None skipped), each storage counted once (q and k may be
    views of one buffer)."""
    seen, total = set(), 0
    for value in values:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            key, size = ("tensor", storage.data_ptr()), storage.nbytes()
        elif isinstance(value, np.ndarray):
            base = value
            while isinstance(base.base, np.ndarray):
                base = base.base
            key, size = ("array", id(base)), base.nbytes
        else:
            continue
        if key not in seen:
            seen.add(key)
            total += size
    return total


class Memory:
    """What the app holds against one budget of ``budget`` bytes, models and sessions alike: each entry
    its value, bytes and owner (a session's model: dropping a model drops its sessions, which hold it).
    Putting an entry drops the least recently used others until the total fits; pinned ones never."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._held: OrderedDict[Hashable, tuple[Any, int, Hashable | None]] = OrderedDict()
        self._pinned: set[Hashable] = set()
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return sum(size for _, size, _ in self._held.values())

    def held(self) -> list[Hashable]:
        """What is held, least recently used first."""
        with self._lock:
            return list(self._held)

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._held:
                return None
            self._held.move_to_end(key)
            return self._held[key][0]

    def put(self, key: Hashable, value: Any, size: int, owner: Hashable = None, pinned: bool = False) -> None:
        """Holds ``value`` (unless its owner was dropped meanwhile: nothing would free that model), then
        drops the least recently used unpinned others while the total is over budget."""
        with self._lock:
            if owner is not None and owner not in self._held:
                return
            self._held[key] = (value, size, owner)
            self._held.move_to_end(key)
            if pinned:
                self._pinned.add(key)
            used = sum(held_size for _, held_size, _ in self._held.values())
            for old in list(self._held):
                if used <= self.budget:
                    break
                if old != key and old not in self._pinned and old in self._held:
                    used -= self._drop(old)

    def drop(self, key: Hashable) -> None:
        with self._lock:
            if key in self._held:
                self._drop(key)

    def _drop(self, key: Hashable) -> int:
        """Forgets ``key`` and what it owns; the bytes freed."""
        freed = self._held.pop(key)[1]
        for owned in [other for other, (_, _, owner) in self._held.items() if owner == key]:
            freed += self._held.pop(owned)[1]
        return freed


class Models:
    """Predictors by checkpoint, each loaded once, counted in ``memory`` (parameters and buffers).
    Loading runs outside the store's lock: a second request for the same model waits for the first
    load; lookups and loads of other models go on meanwhile."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.memory = Memory(settings.memory_budget_mb * 2**20)
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards _loading only: held for no load

    def pin(self, checkpoint: str, model: str = "", num_classes: int | None = None) -> Loaded:
        """The app's own model, from its command line: loaded without the folder check, never dropped."""
        path = Path(checkpoint).expanduser().resolve()
        return self._load(path, model, num_classes, pinned=True)

    def get(self, checkpoint: str, model: str = "", num_classes: int | None = None) -> Loaded:
        """The model of ``checkpoint`` (a path in the folders ``Settings.allow_load`` names), loaded
        if it is not held."""
        return self._load(loadable(checkpoint, self.settings.allow_load), model, num_classes)

    def find(self, key: str) -> Loaded:
        """The model of ``key`` (a ``Loaded.key``), loaded again if it was dropped to make room."""
        loaded = self.memory.get(key)
        if loaded is not None:
            return loaded
        try:
            checkpoint, model, classes = key.rsplit("|", 2)
            num_classes = int(classes) if classes else None
        except ValueError:
            raise ValueError("unknown model: load it in the model box") from None
        return self.get(checkpoint, model, num_classes)

    def _load(self, path: Path, model: str, num_classes: int | None, pinned: bool = False) -> Loaded:
        key = f"{path}|{model}|{num_classes or ''}"
        loaded = self.memory.get(key)
        if loaded is not None:
            return loaded
        with self._lock:
            load_lock = self._loading.setdefault(key, threading.Lock())
        try:
            with load_lock:  # one load per model; the one waiting finds it held
                loaded = self.memory.get(key)
                if loaded is not None:
                    return loaded
                settings = self.settings
                predictor = load_predictor(
                    str(path), model, num_classes, device=settings.device, precision=settings.precision
                )
                report = "\n".join(
                    [
                        str(predictor.load_report),
                        f"device {predictor.device}, precision {predictor.precision.name} "
                        f"({predictor.precision.reason}), {predictor.num_classes} classes",
                    ]
                )
                loaded = Loaded(key, predictor, threading.Lock(), report)
                module = predictor.model
                self.memory.put(key, loaded, nbytes(*module.parameters(), *module.buffers()), pinned=pinned)
                return loaded
        finally:
            with self._lock:  # the first to finish forgets the lock; those waiting on it hold it still
                if self._loading.get(key) is load_lock:
                    del self._loading[key]


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

    def nbytes(self) -> int:
        """The image's pixels, the cached q, k and masks, the labels (a detector's arrays)."""
        session = self.session
        if isinstance(session, Detections):
            held = [session.boxes, session.labels, session.scores, session.masks]
        else:
            held = [session.image, session.prediction.labels, session.prediction.probs]
            held += [tensor for site in session.cached.values() for tensor in (site.q, site.k, site.mask)]
        return nbytes(self.decoded.pixels, *held)


class Sessions:
    """Explain sessions by (model, image file bytes), counted in the models' memory (and at most
    ``Settings.sessions`` of them): a click on an image that was segmented runs no forward pass. A
    dropped image is segmented again on its next query."""

    def __init__(self, settings: Settings, models: Models) -> None:
        self.settings, self.memory = settings, models.memory

    def get(self, loaded: Loaded, path: str) -> Entry:
        if not path:
            raise ValueError("no image: upload one or pick an example")
        key = (loaded.key, hashlib.sha256(Path(path).read_bytes()).hexdigest())
        entry = self.memory.get(key)
        if entry is not None:
            return entry
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
        self.memory.put(key, entry, entry.nbytes(), owner=loaded.key)
        sessions = [held for held in self.memory.held() if isinstance(held, tuple)]
        for old in sessions[: max(0, len(sessions) - settings.sessions)]:
            self.memory.drop(old)
        return entry
