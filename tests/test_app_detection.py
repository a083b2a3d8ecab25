"""The app on a detection run: the model box loads it, the main tab shows the detections drawn and
listed (a threshold filters them), the explain tabs and ``/label_map`` say they are for segmentation
models, and ``/detections`` answers gradio_client with what a DetectionPredictor finds."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from apps.handlers import Workbench
from apps.layout import build_app
from apps.settings import Settings
from workbench.data.classes import DEMO
from workbench.data.image import read_image
from workbench.inference.detection_predictor import DetectionPredictor

from .app_server import serving
from .test_detection_predictor import demo_detection_image, tiny_detection_run
from .tiny import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_detection_run(tmp_path_factory.mktemp("detection") / "run")


def test_the_model_box_loads_a_detection_run_and_the_page_shows_its_detections(tmp_path, run):
    settings = Settings(precision="fp32", allow_load=(str(run.parent),))  # the model box loads from there
    workbench = Workbench(settings, str(tiny_checkpoint(tmp_path / "segmentor")))
    app = build_app(workbench)
    handlers = {function.name: function.fn for function in app.fns.values()}
    key, report = handlers["on_load"](str(run), "", None, "")
    assert "5 classes" in report and workbench.models.find(key).detects
    image = demo_detection_image()
    outputs = handlers["segment"](key, str(image), 0.5, 0.0)  # component -> value
    shown = {component.elem_id: value for component, value in outputs.items() if component.elem_id}
    assert shown["segmentation"].shape == read_image(image).shape  # the image, detections drawn on it
    assert shown["detection-panel"]["visible"] and not shown["areas"]["visible"]  # the table, not areas
    rows = shown["detections"]
    assert rows and all(len(row) == 6 and row[0] in DEMO.names[1:] for row in rows)  # class, score, box
    assert shown["notice"].startswith(f"64x64 pixels — {len(rows)} detections scoring 0.00 or more")
    assert "apply to segmentation models" in shown["groups-text"]

    threshold = float(np.median([row[1] for row in rows]))
    drawn, text, kept = handlers["on_threshold"](key, str(image), 0.5, threshold)  # the slider
    assert 0 < len(kept) < len(rows) and all(row[1] >= threshold for row in kept)
    assert f"{len(kept)} detections" in text and not np.array_equal(drawn, shown["segmentation"])
    with pytest.raises(ValueError, match="attention maps apply to segmentation models"):
        workbench.attention(key, str(image), 10, 10, "", "mean")
    with pytest.raises(ValueError, match="the model is a detector: /detections gives its boxes"):
        workbench.label_map(key, str(image))


def test_the_detections_endpoint_answers_gradio_client(run):
    image = demo_detection_image()
    with serving(run) as (url, _):
        client = Client(url, verbose=False)
        result = client.predict(handle_file(image), 0.0, api_name="/detections")
        with pytest.raises(AppError, match="the model is a detector: /detections gives its boxes"):
            client.predict(handle_file(image), api_name="/label_map")
    direct = DetectionPredictor.from_checkpoint(run, device="cpu")(image, score_threshold=0.0)
    assert (result["height"], result["width"], result["notes"]) == (64, 64, [])
    assert [item["label"] for item in result["detections"]] == direct.names()
    np.testing.assert_allclose([item["box"] for item in result["detections"]], direct.boxes, atol=0.051)
