"""What folder-scale prediction writes, and how a re-run knows it is already there.

Every file is written atomically (a hidden temporary file beside it, then ``os.replace``): a file that
exists is complete, whatever killed the run before. Each image's first file, its *record* (the label
PNG of a segmentation, a hidden source file beside a detection's outputs), carries a stamp of its source (path, bytes,
modification time), so a re-run tells an image's own finished outputs (skipped) from files another
image or another version of the image left there (refused unless overwriting). The other outputs are
written after the record; an image whose record is stamped but whose outputs are not all there is
redone. ``workbench.inference.folder`` drives these writers.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from workbench.data.image import label_png_array
from workbench.engine.detection import coco_results
from workbench.inference.detection_predictor import Detections
from workbench.inference.predictor import Prediction

STAMP_KEY = "workbench-source"  # the PNG text chunk (or JSON field) holding the source's stamp
INDEX_FIELDS = ("file", "image_id", "outputs", "size", "status", "reason")


@dataclass(frozen=True)
class Job:
    """One image of a folder prediction: its file, its distinct output name, its COCO image id."""

    file: Path
    name: str
    image_id: int


def source_stamp(file: Path) -> str:
    """What identifies the version of ``file`` an output was made from: path, bytes, modification time."""
    status = file.stat()
    return json.dumps({"file": str(file.resolve()), "bytes": status.st_size, "mtime_ns": status.st_mtime_ns})


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write`` into a hidden temporary file beside ``path``, then rename it to ``path`` (atomic on
    one file system): readers and re-runs see the whole file or none of it. The temporary file is
    named after this process, so processes writing into one folder never share one, and is opened
    as ``open`` opens files (permissions from the umask, unlike ``tempfile``'s 0600)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode()))


def write_png(path: Path, array: np.ndarray, stamp: str | None = None) -> None:
    """``array`` as a PNG (uint16 arrays as 16-bit grey), with ``stamp`` in a text chunk when given."""
    info = None
    if stamp is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(STAMP_KEY, stamp)
    write_atomically(path, lambda handle: Image.fromarray(array).save(handle, format="PNG", pnginfo=info))


class SegmentationOutputs:
    """``NAME_labels.png`` (class indices, 8-bit or 16-bit above 256 classes; the record) and, with
    ``overlays``, ``NAME_mask.png`` (colours) and ``NAME_overlay.png`` (colours over the photo)."""

    kinds = ("labels", "mask", "overlay")

    def __init__(self, out: Path, num_classes: int, overlays: bool) -> None:
        self.out, self.num_classes = out, num_classes
        self.kinds = self.kinds if overlays else self.kinds[:1]

    def outputs(self, job: Job) -> list[Path]:
        return [self.out / f"{job.name}_{kind}.png" for kind in self.kinds]

    def stamp_of(self, job: Job) -> str | None:
        """The source stamp of ``job``'s record; None when it is absent or unstamped."""
        try:
            with Image.open(self.outputs(job)[0]) as record:
                return record.info.get(STAMP_KEY)
        except (OSError, ValueError):
            return None

    def size_of(self, job: Job) -> tuple[int, int] | None:
        """(H, W) of the image, read from its label PNG's header."""
        with Image.open(self.outputs(job)[0]) as record:
            return record.size[::-1]

    def write(self, job: Job, image: np.ndarray, prediction: Prediction, stamp: str) -> None:
        paths = self.outputs(job)
        write_png(paths[0], label_png_array(prediction.labels, self.num_classes), stamp)
        if len(paths) > 1:
            write_png(paths[1], prediction.colorize())
            write_png(paths[2], prediction.overlay(image))

    def merge(self, rows: list[dict[str, Any]]) -> list[Path]:
        return []  # the label PNGs are the result


class DetectionOutputs:
    """``NAME_detections.json`` (the image's COCO result entries) and, with ``overlays``,
    ``NAME_detections.png`` (boxes and masks drawn); the record is a hidden ``.NAME_detections.source``
    beside them (stamp and size), written first, since a list of no detections has nowhere to keep
    them. ``merge`` writes every image's entries into one ``detections.json`` in COCO results format,
    for pycocotools' ``loadRes``; category ids are the detector's labels 1..K."""

    def __init__(self, out: Path, overlays: bool) -> None:
        self.out, self.overlays = out, overlays

    def outputs(self, job: Job) -> list[Path]:
        suffixes = ("json", "png") if self.overlays else ("json",)
        return [self.out / f"{job.name}_detections.{suffix}" for suffix in suffixes]

    def _record(self, job: Job) -> dict[str, Any] | None:
        try:
            record = json.loads((self.out / f".{job.name}_detections.source").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def stamp_of(self, job: Job) -> str | None:
        record = self._record(job)
        return record.get(STAMP_KEY) if record else None

    def size_of(self, job: Job) -> tuple[int, int] | None:
        record = self._record(job)
        return tuple(record["size"]) if record else None

    def write(self, job: Job, image: np.ndarray, detections: Detections, stamp: str) -> None:
        found = {
            "boxes": torch.from_numpy(detections.boxes),
            "labels": torch.from_numpy(detections.labels),
            "scores": torch.from_numpy(detections.scores),
        }
        if detections.masks is not None:  # RetinaNet has none
            found["masks"] = torch.from_numpy(detections.masks)[:, None].float()
        labels = {int(label): int(label) for label in detections.labels}  # category ids: labels 1..K
        results, masks = coco_results(found, job.image_id, labels)
        for entry, mask in zip(results, masks, strict=False):  # loadRes takes area and box from a mask
            entry["segmentation"] = mask["segmentation"]
        record = {STAMP_KEY: stamp, "size": list(image.shape[:2])}
        write_text(self.out / f".{job.name}_detections.source", json.dumps(record))
        paths = self.outputs(job)
        write_text(paths[0], json.dumps(results))
        if self.overlays:
            write_png(paths[1], detections.draw(image))

    def merge(self, rows: list[dict[str, Any]]) -> list[Path]:
        """One COCO results list (image ids from this run's listing) of every image's detections."""
        results = []
        for row in rows:
            if row["status"] != "failed":
                entries = json.loads((self.out / row["outputs"][0]).read_text())
                results += [{**entry, "image_id": row["image_id"]} for entry in entries]
        path = self.out / "detections.json"
        write_text(path, json.dumps(results))
        return [path]


def write_index(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """``index.json`` and ``index.csv``: file, image id, outputs, size (WxH), status, reason."""
    table = [
        {
            "file": row["file"],
            "image_id": row["image_id"],
            "outputs": row["outputs"],
            "size": f"{row['size'][1]}x{row['size'][0]}" if row["size"] else "",
            "status": row["status"],
            "reason": row["reason"],
        }
        for row in rows
    ]
    write_text(out / "index.json", json.dumps(table, indent=1))
    text = io.StringIO()
    writer = csv.DictWriter(text, INDEX_FIELDS)
    writer.writeheader()
    writer.writerows({**entry, "outputs": ";".join(entry["outputs"])} for entry in table)
    write_text(out / "index.csv", text.getvalue())
    return [out / "index.json", out / "index.csv"]
