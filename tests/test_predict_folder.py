"""Folder-scale prediction (``workbench.inference.folder``): a folder of mixed images gives one label
PNG per readable image and an index listing all of them (the unreadable one with its reason); a
killed run resumes without redoing finished images; outputs are never half-written; two processes
under torch.distributed write what one writes, byte for byte; detections merge into one COCO results
file that pycocotools loads."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from pycocotools.coco import COCO

from tests.tiny import tiny_checkpoint
from workbench import create_detector
from workbench.data.image import read_image
from workbench.engine.evaluate import predict_probs
from workbench.inference import DetectionPredictor, load_predictor
from workbench.inference import folder as folder_module
from workbench.inference.folder import predict_folder
from workbench.models.detection import detector_info

SIZES = ((24, 32), (32, 24), (40, 40), (24, 32))  # (H, W); repeated shapes batch together
MODES = ("RGB", "L", "RGBA", "I;16", "JPEG")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny SETR checkpoint (test scale 64 x 64, aspect kept)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"), "tiny_setr")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(checkpoint, device="cpu")


def _image(path: Path, size: tuple[int, int], mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, size, dtype=np.uint16)).save(path)
    elif mode == "JPEG":
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path.with_suffix(".jpg"))
    else:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """20 images in nested folders: 4 sizes x RGB, L, RGBA, 16-bit PNG, JPEG, one of them corrupt."""
    root = tmp_path_factory.mktemp("photos")
    for index in range(20):
        folder = root / ("a" if index % 2 else "b") / ("deep" if index % 3 == 0 else "")
        _image(folder / f"img{index:02d}.png", SIZES[index % 4], MODES[index % 5], index)
    corrupt = next(root.rglob("img07.*"))
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not an image: left out by its suffix")
    return root


def _labels(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*_labels.png"))}


def test_a_folder_of_mixed_images_gives_labels_and_an_index_of_all(tmp_path, predictor, photos, monkeypatch):
    views = _counting(monkeypatch)
    summary = predict_folder(predictor, photos, tmp_path, batch=4, progress=False)
    assert sum(views) == 19 and max(views) == 4  # each readable image once; same shapes stacked
    assert (summary.done, summary.skipped, summary.failed) == (19, 0, 1)
    assert "same-shape" in summary.batching and summary.images_per_s > 0
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index) == 20 and len({row["file"] for row in index}) == 20
    (failed,) = [row for row in index if row["status"] == "failed"]
    assert failed["file"].endswith("img07.png") and failed["outputs"] == []
    assert failed["reason"].startswith("cannot read image") and "\n" not in failed["reason"]
    with open(tmp_path / "index.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["file"] for row in table] == [row["file"] for row in index]
    assert [row["reason"] for row in table] == [row["reason"] for row in index]
    # Batches of same-shape views give what the predictor gives one image at a time.
    for row in index:
        if row["status"] == "done":
            file, (labels_png,) = Path(row["file"]), row["outputs"]
            expected = predictor(file).labels
            written = np.asarray(Image.open(tmp_path / labels_png))
            assert row["size"] == f"{expected.shape[1]}x{expected.shape[0]}"
            np.testing.assert_array_equal(written, expected)
    assert not list(tmp_path.glob(".*"))  # no temporary files or index parts left


class Killed(Exception):
    """A run killed midway (KeyboardInterrupt would stop pytest itself)."""


def _counting(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Counts forwards of the folder prediction; after ``stop_after`` of them the run dies (``Killed``)."""
    calls: list[int] = []

    def counted(model, images, *args):
        if stop_after is not None and len(calls) == stop_after:
            raise Killed
        calls.append(len(images))
        return predict_probs(model, images, *args)

    monkeypatch.setattr(folder_module, "predict_probs", counted)
    return calls


def test_a_killed_run_resumes_without_redoing_finished_images(tmp_path, predictor, photos, monkeypatch):
    with pytest.raises(Killed):
        _counting(monkeypatch, stop_after=6)
        predict_folder(predictor, photos, tmp_path, progress=False)
    finished = _labels(tmp_path)
    assert len(finished) == 6 and not (tmp_path / "index.json").exists()

    calls = _counting(monkeypatch)
    summary = predict_folder(predictor, photos, tmp_path, progress=False)
    assert len(calls) == 19 - 6 and (summary.done, summary.skipped, summary.failed) == (13, 6, 1)
    assert all(_labels(tmp_path)[name] == data for name, data in finished.items())
    statuses = [row["status"] for row in json.loads((tmp_path / "index.json").read_text())]
    assert statuses.count("skipped") == 6 and statuses.count("done") == 13

    calls = _counting(monkeypatch)
    assert predict_folder(predictor, photos, tmp_path, progress=False).skipped == 19 and calls == []


def test_an_output_is_never_left_half_written(tmp_path, predictor, photos, monkeypatch):
    def disk_full(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        predict_folder(predictor, photos, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file
    monkeypatch.undo()
    assert predict_folder(predictor, sorted(photos.rglob("img0[01].png")), tmp_path, progress=False).done == 2


def test_a_changed_photo_is_not_taken_for_its_old_outputs(tmp_path, predictor, photos, monkeypatch):
    first = sorted(photos.rglob("img0*.png"))[:2]
    predict_folder(predictor, first, tmp_path, progress=False)
    os.utime(first[0], ns=(0, 0))  # another version of the file: its outputs are another image's
    refusal = rf"{first[0].stem}_labels\.png exists, not made from {first[0]} as it is now; .*--overwrite"
    with pytest.raises(ValueError, match=refusal):
        predict_folder(predictor, first, tmp_path, progress=False)
    calls = _counting(monkeypatch)
    assert predict_folder(predictor, first, tmp_path, overwrite=True, progress=False).done == 2
    assert len(calls) == 2
    # Overlays asked for later: the images are redone to add them, then complete.
    assert predict_folder(predictor, first, tmp_path, overlays=True, progress=False).done == 2
    assert predict_folder(predictor, first, tmp_path, overlays=True, progress=False).skipped == 2
    assert len(calls) == 4 and len(list(tmp_path.glob("*_overlay.png"))) == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world: int, port: int, checkpoint: Path, photos: Path, out: Path) -> None:
    """One torchrun-like process: gloo on 127.0.0.1, one thread."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        predictor = load_predictor(checkpoint, device="cpu")
        summary = predict_folder(predictor, photos, out, batch=2, progress=False)
        if rank == 0:  # the merged index: every image once
            assert (summary.done, summary.failed) == (19, 1), summary
    finally:
        dist.destroy_process_group()


def test_two_processes_write_what_one_writes(tmp_path, checkpoint, predictor, photos):
    predict_folder(predictor, photos, tmp_path / "one", batch=2, progress=False)
    args = (2, _free_port(), checkpoint, photos, tmp_path / "two")
    mp.start_processes(_rank, args=args, nprocs=2, join=True, start_method="fork")
    one, two = (sorted(p.name for p in (tmp_path / run).iterdir()) for run in ("one", "two"))
    assert one == two and len(one) == 19 + 2  # labels, index.json, index.csv; no parts left
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_detections_merge_into_one_coco_results_file(tmp_path):
    torch.manual_seed(0)
    tiny = {**detector_info("gpvit_l1_maskrcnn").tiny, "box_score_thresh": 0.0}
    detector = create_detector("gpvit_l1_maskrcnn", num_classes=3, **tiny).eval()
    predictor = DetectionPredictor(detector, score_threshold=0.0)
    images = [tmp_path / "in" / f"{index:012d}.png" for index in (139, 285, 632)]  # COCO-style names
    for index, path in enumerate(images):
        _image(path, (64 + 16 * index, 96), "RGB", index)
    out = tmp_path / "out"
    summary = predict_folder(predictor, tmp_path / "in", out, batch=4, overlays=True, progress=False)
    assert summary.done == 3 and "one image per forward" in summary.batching
    results = json.loads((out / "detections.json").read_text())
    counts = [len(predictor(read_image(path)).scores) for path in images]
    assert len(results) == sum(counts) > 0
    assert {entry["image_id"] for entry in results} <= {139, 285, 632}
    assert all(len(entry["bbox"]) == 4 and "counts" in entry["segmentation"] for entry in results)
    index = json.loads((out / "index.json").read_text())
    truth = COCO()
    truth.dataset = {
        "images": [
            {"id": row["image_id"], "width": int(w), "height": int(h)}
            for row in index
            for w, h in [row["size"].split("x")]
        ],
        "categories": [{"id": label} for label in (1, 2, 3)],
        "annotations": [],
    }
    truth.createIndex()
    loaded = truth.loadRes(str(out / "detections.json"))
    assert len(loaded.getAnnIds()) == len(results)
    assert index[0]["outputs"] == ["000000000139_detections.json", "000000000139_detections.png"]
    merged = (out / "detections.json").read_bytes()
    again = predict_folder(predictor, tmp_path / "in", out, overlays=True, progress=False)
    assert again.skipped == 3 and (out / "detections.json").read_bytes() == merged
