"""Folder-scale prediction: every image of folders, globs or file lists through a predictor, resumable,
sharded across ``torchrun`` processes.

    predictor = workbench.load_predictor("runs/demo_gpvit")
    summary = predict_folder(predictor, "photos/", "predictions", batch=8, workers=2, overlays=True)
    print(summary)  # 1000 images: 990 done, 8 already complete, 2 failed (predictions/index.json); ...

Decisions:

- Sources: a folder (searched recursively for ``IMAGE_SUFFIXES``), a glob (``**`` recursive), a file,
  or a list of those; the images are sorted by resolved path, duplicates dropped. Output names come
  from ``output_names`` (the stem, with as many parent folders as tell images of one name apart).
- Decoding: a ``DataLoader`` (``workers`` processes) reads each image with the one image reader and
  the segmentor's own evaluation preprocessing (``Predictor.transform``); the model runs in this
  process, on the predictor's device and in its precision.
- Batching: a segmentor's test views are stacked only where they have the same shape (photos of one
  size, or a fixed test scale): views are grouped by shape and each group runs ``batch`` at a time,
  so results equal batch 1's; at most ``2 * batch`` views wait, the oldest group running short
  when photos of many sizes would keep more waiting. A detector takes one image per forward at any ``batch``: torchvision
  pads a batch to its largest image, which changes the detections of the smaller ones.
- Outputs (``workbench.inference.folder_outputs``): label PNGs, or per-image COCO result entries
  merged into one ``detections.json``; colour overlays with ``overlays``; ``index.json`` and
  ``index.csv`` (file, image id, outputs, size, status: done / skipped / failed, reason).
- Resume: outputs are written atomically and stamped with their source, so a re-run skips images
  whose outputs are complete and were made from the same file (``overwrite=True`` redoes them), tries
  failed ones again, and refuses to replace files it did not write for that image unless overwriting.
- Failures: an image the reader cannot read is listed as failed with the reader's one-line reason and
  the others go on; an error of the model stops the run (it is not about one image).
- Processes: under ``torchrun`` (``torch.distributed`` initialised) rank r predicts images r, r +
  world, ... of the sorted list; each rank writes its part of the index, and rank 0 merges the parts
  after a barrier. A ``KeyboardInterrupt`` or kill leaves finished images finished.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from workbench.data.image import read_image
from workbench.data.transforms import EvalTransform
from workbench.engine.distributed import barrier
from workbench.engine.evaluate import predict_probs
from workbench.inference.detection_predictor import DetectionPredictor
from workbench.inference.folder_outputs import (
    DetectionOutputs,
    Job,
    SegmentationOutputs,
    source_stamp,
    write_index,
    write_text,
)
from workbench.inference.predictor import Predictor
from workbench.precision import autocast

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SEGMENTOR_BATCHING = "same-shape test views stacked up to the batch size"
DETECTOR_BATCHING = "one image per forward (torchvision pads a batch, which changes detections)"


@dataclass
class FolderSummary:
    """What a ``predict_folder`` call did: images ``done`` now, ``skipped`` (complete from an earlier
    run), ``failed`` (unreadable; reasons in the index), the wall time of the prediction loop
    (the slowest rank's under torchrun) and how batches were formed."""

    done: int
    skipped: int
    failed: int
    seconds: float
    batching: str
    index: Path

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        total = self.done + self.skipped + self.failed
        return (
            f"{total} images: {self.done} done, {self.skipped} already complete, {self.failed} failed "
            f"({self.index}); {self.images_per_s:.2f} images/s; batching: {self.batching}"
        )


def list_images(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """The images of ``sources`` (folders searched recursively, globs, files), sorted, without
    duplicates. A named file that does not exist, or a folder or glob without images, is refused."""
    items = [sources] if isinstance(sources, str | Path) else list(sources)
    found: dict[Path, Path] = {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif glob.has_magic(str(item)):
            matches = [Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file()]
        elif path.is_file():
            matches = [path]
        else:
            raise FileNotFoundError(f"image {path} does not exist")
        if not matches:
            raise ValueError(f"{item}: no images there (looked for {', '.join(IMAGE_SUFFIXES)})")
        for match in matches:
            found.setdefault(match.resolve(), match)
    return [found[key] for key in sorted(found)]


def output_names(images: Sequence[Path]) -> list[str]:
    """A distinct output name per image: its stem, prefixed by as many parent folders as it takes to
    tell it from the other images (a/x.jpg, b/x.jpg -> a_x, b_x); x.jpg beside x.png -> x_jpg, x_png."""
    resolved = [path.resolve() for path in images]
    twice = [path for path, count in Counter(resolved).items() if count > 1]
    if twice:
        raise ValueError(f"image {twice[0]} is given twice")
    same_stem = Counter((path.parent, path.stem) for path in resolved)
    keys = [
        (
            *path.parent.parts[1:],
            path.stem if same_stem[path.parent, path.stem] == 1 else path.name.replace(".", "_"),
        )
        for path in resolved
    ]
    names = []
    for index, key in enumerate(keys):
        others = keys[:index] + keys[index + 1 :]
        depth = 1
        while any(other[-depth:] == key[-depth:] for other in others):
            depth += 1
        names.append("_".join(key[-depth:]))
    # A stem that spells another image's folder_stem (c/a_x.jpg beside a/x.jpg): number the clash.
    clashes = Counter(names)
    return [f"{name}_{index}" if clashes[name] > 1 else name for index, name in enumerate(names)]


def image_ids(images: Sequence[Path]) -> list[int]:
    """COCO image ids: the stems as numbers where every stem is a distinct number (COCO's own
    000000397133.jpg), else the position in the sorted list, from 1."""
    stems = [path.stem for path in images]
    if all(stem.isdigit() for stem in stems) and len({int(stem) for stem in stems}) == len(stems):
        return [int(stem) for stem in stems]
    return list(range(1, len(images) + 1))


class _Decoded(Dataset):
    """Item i: (i, image (H, W, 3) uint8, model input (1, 3, h, w) or None, None), or (i, None, None,
    the reader's one-line reason) for an image it cannot read."""

    def __init__(self, files: list[Path], transform: EvalTransform | None) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Any, Any, str | None]:
        try:
            image = read_image(self.files[index])
        except ValueError as error:
            return index, None, None, str(error)
        if self.transform is None:  # a detector resizes inside
            return index, image, None, None
        pixels = torch.from_numpy(image if image.flags.writeable else image.copy()).permute(2, 0, 1)
        tensor, _ = self.transform(pixels, None)
        return index, image, tensor[None], None


def _unchanged(item: Any) -> Any:
    return item


@torch.no_grad()
def _segment(predictor: Predictor, group: list[tuple[int, np.ndarray, torch.Tensor]]) -> Iterator[tuple]:
    """One forward of a group of same-shape views: (index, image, Prediction) each."""
    views = torch.cat([tensor for _, _, tensor in group]).to(predictor.device, predictor.dtype)
    with autocast(predictor.precision, predictor.device):
        probs = predict_probs(predictor.model, views, predictor.eval_cfg, predictor.num_classes)
    for row, (index, image, _) in enumerate(group):
        yield index, image, predictor._prediction(image, probs[row : row + 1])


def _predictions(predictor: Any, files: list[Path], batch: int, workers: int) -> Iterator[tuple]:
    """(index, image, prediction or detections) per readable file, (index, None, reason) per unreadable
    one, in the order batches finish."""
    detector = isinstance(predictor, DetectionPredictor)
    dataset = _Decoded(files, None if detector else predictor.transform)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_unchanged)
    groups: dict[tuple[int, ...], list] = {}
    for index, image, tensor, reason in loader:
        if reason is not None:
            yield index, None, reason
        elif detector:
            yield index, image, predictor(image)
        else:
            shape = tuple(tensor.shape)
            groups.setdefault(shape, []).append((index, image, tensor))
            if len(groups[shape]) == batch:
                yield from _segment(predictor, groups.pop(shape))
            elif sum(map(len, groups.values())) >= 2 * batch:  # photos of many sizes: bound the wait
                yield from _segment(predictor, groups.pop(next(iter(groups))))
    for group in groups.values():
        yield from _segment(predictor, group)


def _state(writer: Any, job: Job, overwrite: bool) -> str:
    """What to do with ``job``: "todo", "complete" (its own outputs, all there) or "foreign" (files
    there that were not made from this image as it is now)."""
    existing = [path.exists() for path in writer.outputs(job)]
    if overwrite or not any(existing):
        return "todo"
    if writer.stamp_of(job) == source_stamp(job.file):
        return "complete" if all(existing) else "todo"
    return "foreign"


def _refuse_foreign(writer: Any, jobs: list[Job], states: list[str]) -> None:
    """Never replace silently what an earlier run wrote for another image or another version of it."""
    foreign = [job for job, state in zip(jobs, states, strict=True) if state == "foreign"]
    if foreign:
        first = next(path for path in writer.outputs(foreign[0]) if path.exists())
        more = f" (and the outputs of {len(foreign) - 1} more images)" if len(foreign) > 1 else ""
        raise ValueError(
            f"{first} exists, not made from {foreign[0].file} as it is now{more}; pass --overwrite "
            "(overwrite=True) to replace, or choose another --out"
        )


def _row(writer: Any, job: Job, status: str, size: Any = None, reason: str = "") -> dict[str, Any]:
    outputs = [path.name for path in writer.outputs(job)] if status != "failed" else []
    return dict(
        file=str(job.file),
        image_id=job.image_id,
        outputs=outputs,
        size=size,
        status=status,
        reason=reason,
    )


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def predict_folder(
    predictor: Predictor | DetectionPredictor,
    sources: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    batch: int = 1,
    workers: int = 0,
    overlays: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> FolderSummary:
    """Predict every image of ``sources`` into ``out`` (see the module's docstring); returns the
    summary of the whole run on rank 0, of this rank's share elsewhere."""
    if batch < 1 or workers < 0:
        raise ValueError(f"batch must be at least 1 and workers at least 0, got {batch} and {workers}")
    rank, world = _rank_world()
    out = Path(out)
    if isinstance(predictor, DetectionPredictor):
        writer, batching = DetectionOutputs(out, overlays), DETECTOR_BATCHING
    else:
        writer, batching = SegmentationOutputs(out, predictor.num_classes, overlays), SEGMENTOR_BATCHING
    files = list_images(sources)
    jobs = [Job(*job) for job in zip(files, output_names(files), image_ids(files), strict=True)]
    states = [_state(writer, job, overwrite) for job in jobs]  # every rank: the same answer
    _refuse_foreign(writer, jobs, states)
    barrier()  # every rank has looked at the folder before any writes into it
    out.mkdir(parents=True, exist_ok=True)
    mine = list(range(rank, len(jobs), world))
    rows = {
        i: _row(writer, jobs[i], "skipped", writer.size_of(jobs[i])) for i in mine if states[i] == "complete"
    }
    todo = [i for i in mine if states[i] != "complete"]
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="predict", unit=" images", disable=not progress or rank != 0)
    with bar:
        for position, image, result in _predictions(predictor, [jobs[i].file for i in todo], batch, workers):
            job = jobs[todo[position]]
            if image is None:
                rows[todo[position]] = _row(writer, job, "failed", reason=result)
            else:
                writer.write(job, image, result, source_stamp(job.file))
                rows[todo[position]] = _row(writer, job, "done", image.shape[:2])
            bar.update()
    part = {"seconds": time.perf_counter() - start, "rows": [rows[i] for i in sorted(rows)]}
    write_text(out / f".index-part-{rank}.json", json.dumps(part))
    barrier()
    if rank == 0:
        part = _merge(writer, out, world)
    counts = Counter(row["status"] for row in part["rows"])
    return FolderSummary(
        counts["done"], counts["skipped"], counts["failed"], part["seconds"], batching, out / "index.json"
    )


def _merge(writer: Any, out: Path, world: int) -> dict[str, Any]:
    """Rank 0, after the barrier: every rank's part into one index (and one detections file)."""
    paths = [out / f".index-part-{rank}.json" for rank in range(world)]
    parts = [json.loads(path.read_text()) for path in paths]
    rows = sorted(
        (row for part in parts for row in part["rows"]), key=lambda row: Path(row["file"]).resolve()
    )
    write_index(out, rows)
    writer.merge(rows)
    for path in paths:
        os.remove(path)
    return {"seconds": max(part["seconds"] for part in parts), "rows": rows}
