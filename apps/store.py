"""Models and explain sessions the app keeps, in bytes against one memory budget: each checkpoint
loaded once and shared by every user, with its lock (one model call at a time), and the sessions of the
images segmented, keyed by the model and the file's bytes, so a click on a segmented image runs no
forward pass. The least recently used go first; the app's own model (pinned) never does."""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from workbench.inference.build_vit import load_vit_predictor
from workbench.inference.detection_predictor import DetectionPredictor, Detections
from workbench.inference.vit_predictor import ViTPredictor
from workbench.interop.checkpoint import is_checkpoint

LOADING_OFF = (
    "loading models from the page is off: start the app with --allow-load DIR ... (the folders it may "
    "load from) to turn it on"
)
# the same words whether the path exists or not: the load box is no oracle of the server's files
REFUSED = "refused: this app loads models only from the folders it was started with (--allow-load)"
TIMM = "timm:"  # a model name starting so is a timm ViT: "timm:NAME", its weights file apart or "@FILE"
# what the model box may pass to a timm ViT; the command line passes any load_vit_predictor keyword
PAGE_TIMM_OPTIONS = {"num_classes"}
TIMM_RANDOM_FROM_PAGE = (
    "give the timm model's weights file too (timm:NAME@FILE, or the file in the checkpoint box): "
    "random weights only from the command line"
)


@dataclass
class Loaded:
    """A predictor shared by every user, its lock (one model call at a time) and what loading said.
    ``key`` names the checkpoint, the model and the class count (a timm ViT's: ``timm_key``): what
    ``Models.find`` reloads it from."""

    key: str
    predictor: Predictor | DetectionPredictor | ViTPredictor
    lock: threading.Lock
    report: str

    @property
    def detects(self) -> bool:
        return isinstance(self.predictor, DetectionPredictor)

    @property
    def vit(self) -> bool:
        """A timm plain ViT (``ViTPredictor``): a backbone or classifier, no segmentation head."""
        return isinstance(self.predictor, ViTPredictor)


def timm_key(name: str, weights: str | Path | None = None, options: dict | None = None) -> str:
    """The store's key of timm ViT ``name``: ``timm:NAME``, ``@FILE`` (resolved) where a weights file
    is given, ``|{json}`` where ``load_vit_predictor`` options (``num_classes``, timm kwargs) are."""
    key = TIMM + name + (f"@{Path(weights).expanduser().resolve()}" if weights else "")
    return key + (f"|{json.dumps(options, sort_keys=True)}" if options else "")


def parse_timm_key(key: str) -> tuple[str, str | None, dict]:
    """``timm_key``'s inverse: (name, weights file or None, options)."""
    if not key.startswith(TIMM):
        raise ValueError(f"not a timm model key: {key!r}")
    body, options = key.removeprefix(TIMM), {}
    head, _, tail = body.rpartition("|")
    if head and tail.startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):  # else a "|" in the file's path, no options
            body, options = head, json.loads(tail)
    name, _, weights = body.partition("@")  # timm names hold no "@"
    return name, weights or None, options


def timm_model(model: str, checkpoint: str = "") -> tuple[str, str] | None:
    """The model box's timm ViT: (name, weights file or "") from ``timm:NAME`` in the model box (the
    file in the checkpoint box) or ``timm:NAME[@FILE]`` in the checkpoint box; None for the others."""
    if model.startswith(TIMM):
        name, weights = model.removeprefix(TIMM), checkpoint
    elif checkpoint.startswith(TIMM):
        name, _, weights = checkpoint.removeprefix(TIMM).partition("@")
    else:
        return None
    if not name.strip():
        raise ValueError("give the timm model's name after timm:, e.g. timm:vit_small_patch16_224.dino")
    return name.strip(), weights.strip()


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

    def pin_timm(self, name: str, weights: str | None = None, options: dict | None = None) -> Loaded:
        """The app's own timm ViT, from its command line: ``weights`` a file or None (random weights),
        ``options`` any ``load_vit_predictor`` keywords (timm kwargs too); no folder check."""
        return self._load_timm(name, weights or None, dict(options or {}), pinned=True)

    def get(self, checkpoint: str, model: str = "", num_classes: int | None = None) -> Loaded:
        """The model of ``checkpoint`` (a path in the folders ``Settings.allow_load`` names), loaded
        if it is not held; a timm ViT for ``timm:NAME`` (``timm_model``), its weights file likewise."""
        timm = timm_model(model, checkpoint)
        if timm is not None:
            return self.get_timm(*timm, {"num_classes": num_classes} if num_classes else {})
        return self._load(loadable(checkpoint, self.settings.allow_load), model, num_classes)

    def get_timm(self, name: str, weights: str | None, options: dict) -> Loaded:
        """Timm ViT ``name`` with the weights file ``weights`` (in the allowed folders; the page builds
        no random-weight models: their size is the asker's choice) and the page's ``options`` only."""
        if not self.settings.allow_load:
            raise ValueError(LOADING_OFF)
        if not weights:
            raise ValueError(TIMM_RANDOM_FROM_PAGE)
        path = loadable(weights, self.settings.allow_load)
        if set(options) - PAGE_TIMM_OPTIONS:
            raise ValueError("unknown model: load it in the model box")
        return self._load_timm(name, str(path), options)

    def find(self, key: str) -> Loaded:
        """The model of ``key`` (a ``Loaded.key``), loaded again if it was dropped to make room."""
        loaded = self.memory.get(key)
        if loaded is not None:
            return loaded
        if key.startswith(TIMM):
            return self.get_timm(*parse_timm_key(key))
        try:
            checkpoint, model, classes = key.rsplit("|", 2)
            num_classes = int(classes) if classes else None
        except ValueError:
            raise ValueError("unknown model: load it in the model box") from None
        return self.get(checkpoint, model, num_classes)

    def _load(self, path: Path, model: str, num_classes: int | None, pinned: bool = False) -> Loaded:
        def build() -> tuple[Predictor | DetectionPredictor, str]:
            settings = self.settings
            predictor = load_predictor(
                str(path), model, num_classes, device=settings.device, precision=settings.precision
            )
            return predictor, "\n".join(
                [
                    str(predictor.load_report),
                    f"device {predictor.device}, precision {predictor.precision.name} "
                    f"({predictor.precision.reason}), {predictor.num_classes} classes",
                    *([f"fast path: {predictor.fast_path}"] if hasattr(predictor, "fast_path") else []),
                ]
            )

        return self._once(f"{path}|{model}|{num_classes or ''}", build, pinned)

    def _once(self, key: str, build, pinned: bool) -> Loaded:
        """The model of ``key``, held or built by ``build() -> (predictor, report)``: one build per key
        (those asking meanwhile wait for it and find it held), outside the store's lock."""
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
                predictor, report = build()
                loaded = Loaded(key, predictor, threading.Lock(), report)
                module = predictor.model
                self.memory.put(key, loaded, nbytes(*module.parameters(), *module.buffers()), pinned=pinned)
                return loaded
        finally:
            with self._lock:  # the first to finish forgets the lock; those waiting on it hold it still
                if self._loading.get(key) is load_lock:
                    del self._loading[key]

    def _load_timm(self, name: str, weights: str | None, options: dict, pinned: bool = False) -> Loaded:
        key = timm_key(name, weights, options)

        def build() -> tuple[ViTPredictor, str]:
            settings = self.settings
            predictor = load_vit_predictor(
                name, weights, device=settings.device, precision=settings.precision, **options
            )
            classes = f"{predictor.num_classes} classes" if predictor.num_classes else "no classifier"
            source = f"weights from {weights}" if weights else (predictor.note or "timm's release")
            return predictor, "\n".join(
                [
                    f"timm {name}: {source}",
                    f"device {predictor.device}, precision {predictor.precision.name} "
                    f"({predictor.precision.reason}), {classes}, input short side {predictor.size} px",
                ]
            )

        return self._once(key, build, pinned)


@dataclass
class Entry:
    """One image with a model: the image as read and the predictor's explain session (its prediction;
    a ViT's ``ViTSession``), or a detector's detections (every one the detector keeps: a threshold
    filters them later)."""

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
            prediction = session.prediction  # a Prediction's labels, a ViTDescription's features
            held = [
                session.image,
                *(getattr(prediction, name, None) for name in ("labels", "probs", "features")),
            ]
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
            elif loaded.vit:
                entry = Entry(decoded, loaded.predictor.open(decoded.pixels))
            else:
                entry = Entry(decoded, loaded.predictor.open(decoded.pixels, probs=False))  # labels suffice
        self.memory.put(key, entry, entry.nbytes(), owner=loaded.key)
        sessions = [held for held in self.memory.held() if isinstance(held, tuple)]
        for old in sessions[: max(0, len(sessions) - settings.sessions)]:
            self.memory.drop(old)
        return entry
