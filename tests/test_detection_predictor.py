"""Detectors through ``workbench.Predictor``: a detection run gives a DetectionPredictor, a detector
handed to ``Predictor`` is refused naming it, released mmdet-layout files load by detector name, and
the score threshold filters what the detector found. A tiny detection run is trained here (1 step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from tests.tiny import tiny_detection_config
from workbench import Predictor, create_detector
from workbench.data.classes import DEMO
from workbench.data.demo_detection import ensure_demo_detection_set
from workbench.data.image import read_image
from workbench.engine import train
from workbench.inference.detection_predictor import DetectionPredictor
from workbench.interop import export_state
from workbench.models import model_info
from workbench.models.detection import detector_info

from .tiny import tiny_checkpoint

DETECTOR = "gpvit_l1_maskrcnn"
TINY = detector_info(DETECTOR).tiny


def tiny_detection_run(folder: Path) -> Path:
    """A tiny Mask R-CNN trained for one step on the 64-pixel demo detection set: a real run folder.
    After one step its foreground scores sit near the detector's default 0.05 floor, so the floor is
    lowered to 0: it keeps many boxes, whatever the anchors' rounding does to those borderline scores."""
    cfg = tiny_detection_config(DETECTOR, folder, iters=1, steps=(1,), warmup_iters=0)
    cfg.model.kwargs["box_score_thresh"] = 0.0
    train(cfg, progress=False)
    return folder


def demo_detection_image() -> Path:
    """A validation image of the demo detection set the tiny run used (64 x 64)."""
    return sorted((ensure_demo_detection_set(64, 8, 4) / "val").glob("*.png"))[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_detection_run(tmp_path_factory.mktemp("detection") / "run")


def test_a_detection_run_gives_a_detection_predictor_with_boxes(run):
    predictor = Predictor.from_checkpoint(run, device="cpu")
    assert isinstance(predictor, DetectionPredictor)
    assert predictor.classes.names == DEMO.names and predictor.load_report.clean
    image = read_image(demo_detection_image())
    found = predictor(image, score_threshold=0.0)
    count = len(found.scores)
    assert count > 0 and found.boxes.shape == (count, 4) and found.masks.shape == (count, 64, 64)
    assert (found.boxes >= 0).all() and (found.boxes[:, 2:] <= 64).all()
    assert set(found.names()) <= set(DEMO.names[1:])
    threshold = float(np.median(found.scores))
    kept = predictor(image, score_threshold=threshold)
    assert 0 < len(kept.scores) < count and (kept.scores >= threshold).all()
    np.testing.assert_array_equal(kept.boxes, found.above(threshold).boxes)
    default = predictor(image)  # the predictor's own threshold
    np.testing.assert_array_equal(default.scores, found.above(predictor.score_threshold).scores)


def test_the_precision_setting_is_the_predictors(run):
    predictor = Predictor.from_checkpoint(run, device="cpu", precision="auto")
    assert predictor.precision.reason.startswith("auto:")
    assert len(predictor(demo_detection_image(), score_threshold=0.0).scores) > 0
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor.from_checkpoint(run, precision="int8")


def test_predictor_refuses_a_detector_naming_detection_predictor():
    with pytest.raises(ValueError, match="is a detector: use DetectionPredictor") as error:
        Predictor(create_detector(DETECTOR, num_classes=5, **TINY))
    assert "\n" not in str(error.value)


def test_detection_predictor_refuses_what_is_not_a_detector(tmp_path):
    with pytest.raises(ValueError, match=r"segmentation run, not a detection run: use workbench\.Predictor"):
        DetectionPredictor.from_checkpoint(tiny_checkpoint(tmp_path / "segmentor"))
    classifier = timm.create_model("gpvit_l1", num_classes=5, **model_info("gpvit_l1").tiny)
    with pytest.raises(ValueError, match="expected a detector"):  # a classifier has a .head too
        DetectionPredictor(classifier)


def test_a_released_detector_file_loads_by_the_detectors_name(tmp_path):
    torch.manual_seed(0)
    model = create_detector(DETECTOR, num_classes=5, **TINY).eval()
    torch.save(export_state(model, "mmdet_detection"), tmp_path / "released.pth")
    predictor = Predictor.from_pretrained(tmp_path / "released.pth", DETECTOR, 5, device="cpu", **TINY)
    assert isinstance(predictor, DetectionPredictor)
    assert predictor.load_report.format == "mmdet_detection" and predictor.load_report.clean
    image = read_image(demo_detection_image())
    with torch.no_grad():  # the same detections (mmdet has no background rows: compared by output)
        expected = model([torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255])[0]
    found = predictor(image, score_threshold=0.0)
    np.testing.assert_allclose(found.boxes, expected["boxes"].numpy(), atol=1e-4)
    assert predictor.classes.names[1:] == tuple(str(i) for i in range(1, 6))
