"""The app's handlers as plain functions, without a server: the main panel, clicks on every family, GP
groups, attributions, the model box's refusals, the model card, the compact attention answer, and a
click that does not wait for another user's attribution (clicks take no model lock)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from apps.handlers import DEMO_NOTICE, NO_PATH, Workbench
from apps.settings import MEAN, Settings
from workbench import Predictor
from workbench.build import build_model
from workbench.config import load_config
from workbench.data.demo import render_scene
from workbench.inference.session import Session
from workbench.interop.checkpoint import save_weights

from .tiny import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

FAMILIES = ["tiny_setr", "tiny_gpvit", "tiny_hlg"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(render_scene(np.random.default_rng(3), 96)[0]).save(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {config: tiny_checkpoint(folder / config, config) for config in FAMILIES}


@pytest.fixture(scope="module")
def workbenches(checkpoints):
    return {config: Workbench(Settings(precision="fp32"), str(path)) for config, path in checkpoints.items()}


@pytest.mark.parametrize("config", FAMILIES)
def test_segment_gives_the_overlay_areas_and_the_explain_choices(workbenches, checkpoints, scene, config):
    workbench = workbenches[config]
    view = workbench.segment(workbench.default.key, scene, 0.5, 0.3)
    direct = Predictor.from_checkpoint(checkpoints[config], precision="fp32")(scene)
    assert view.picture.shape == (96, 96, 3) and view.notice == "96x96 pixels" and not view.detects
    assert sum(row[1] for row in view.areas) == 96 * 96
    assert {row[0] for row in view.areas} == {direct.classes.names[i] for i in np.unique(direct.labels)}
    assert view.sites and view.heads[0] == MEAN and len(view.heads) > 1
    assert view.can_roll == (config == "tiny_setr")
    if config == "tiny_gpvit":
        assert view.blocks == ["blocks.1", "blocks.3"]
        assert view.groups[0].shape == (96, 96, 3) and "groups hold pixels" in view.groups[2]
    else:
        assert view.blocks == [] and view.groups == (None, None, "no GP blocks: not a GPViT")
    empty = workbench.segment(workbench.default.key, "", 0.5, 0.3)
    assert empty.picture is None and empty.sites == []


@pytest.mark.parametrize("config", FAMILIES)
def test_a_click_shows_the_predictors_attention_in_every_family(workbenches, checkpoints, scene, config):
    workbench = workbenches[config]
    key = workbench.default.key
    predictor = Predictor.from_checkpoint(checkpoints[config], precision="fp32")
    predictor.set_image(scene)
    view = workbench.segment(key, scene, 0.5, 0.3)
    for layer in (view.sites[0], view.sites[-1]):
        expected = predictor.attention_at(30, 60, layer, 0)
        torch.testing.assert_close(workbench.attention(key, scene, 30, 60, layer, "0"), expected)
    shown = workbench.click(key, scene, 30, 60, "", MEAN)
    assert shown.heat.shape == (96, 96, 3) and shown.effective is None
    assert shown.text == f"pixel (y=30, x=60): {view.sites[-1]}, head mean"
    if config == "tiny_setr":
        rolled = workbench.click(key, scene, 30, 60, "", MEAN, rollout=True)
        assert rolled.text == "pixel (y=30, x=60): rollout" and not np.array_equal(rolled.heat, shown.heat)
    else:
        with pytest.raises(ValueError, match="rollout needs self-attention in every layer"):
            workbench.click(key, scene, 30, 60, "", MEAN, rollout=True)
    with pytest.raises(ValueError, match=r"pixel \(30, 500\) is outside the 96x96 image"):
        workbench.click(key, scene, 30, 500, "", MEAN)
    with pytest.raises(ValueError, match="unknown layer 'nowhere'"):
        workbench.click(key, scene, 30, 60, "nowhere", MEAN)
    assert workbench.heads(key, scene, view.sites[-1]) == view.heads


def test_groups_and_a_click_through_them(workbenches, checkpoints, scene):
    workbench = workbenches["tiny_gpvit"]
    key = workbench.default.key
    coloured, effective, text = workbench.groups(key, scene, "blocks.3", (10, 80))
    predictor = Predictor.from_checkpoint(checkpoints["tiny_gpvit"], precision="fp32")
    predictor.set_image(scene)
    used = len(np.unique(predictor.group_assignment("blocks.3").numpy()))
    assert text == f"blocks.3: {used} groups hold pixels" and coloured.shape == effective.shape == (96, 96, 3)
    shown = workbench.click(key, scene, 10, 80, "", MEAN, block="blocks.3")
    np.testing.assert_array_equal(shown.effective, effective)
    with pytest.raises(ValueError, match=r"unknown GP block 'blocks\.0'"):
        workbench.groups(key, scene, "blocks.0", None)


def test_an_attribution_gives_a_heat_map_and_says_what_it_attributed(workbenches, scene):
    workbench = workbenches["tiny_hlg"]
    key = workbench.default.key
    heat, text = workbench.attribution(key, scene, (40, 40), "occlusion")
    assert heat.shape == (96, 96, 3) and text.startswith("occlusion: class '") and "(y=40, x=40)" in text
    with pytest.raises(ValueError, match="click a pixel first"):
        workbench.attribution(key, scene, None, "occlusion")
    with pytest.raises(ValueError, match="method must be one of occlusion, integrated_gradients"):
        workbench.attribution(key, scene, (40, 40), "saliency")


def test_a_click_does_not_wait_for_another_users_attribution(workbenches, scene, monkeypatch):
    """An attribution takes tens of seconds on a CPU and holds the model's lock; a click reads only the
    image's kept session, so it answers at once meanwhile (it used to wait for the lock)."""
    workbench = workbenches["tiny_gpvit"]
    key = workbench.default.key
    workbench.label_map(key, scene)  # the session is kept: a click needs no forward pass
    started = threading.Event()

    def slow_attribute(self, target_class, region, method="occlusion", **options):
        started.set()
        time.sleep(3.0)  # holds nothing itself: only what the handler holds around it blocks
        return torch.zeros(self.size)

    monkeypatch.setattr(Session, "attribute", slow_attribute)
    attributing = threading.Thread(target=workbench.attribution, args=(key, scene, (40, 40), "occlusion"))
    attributing.start()
    try:
        assert started.wait(30)
        start = time.perf_counter()
        weights = workbench.attention(key, scene, 20, 20, "blocks.1.ungrouping", MEAN)
        waited = time.perf_counter() - start
        assert waited < 1.0, f"the click waited {waited:.2f} s for the attribution"
        assert attributing.is_alive()  # the click was answered while the attribution ran
    finally:
        attributing.join()
    assert weights.shape == (96, 96)


def test_the_compact_attention_is_the_distribution_as_a_16_bit_png(workbenches, scene):
    workbench = workbenches["tiny_gpvit"]
    key = workbench.default.key
    floats = workbench.attention_json(key, scene, 50, 12, "", MEAN)
    png, frame = workbench.attention_png(key, scene, 50, 12, "", MEAN)
    levels = np.asarray(Image.open(io.BytesIO(png)))
    assert (
        levels.shape == (96, 96) and levels.max() == 65535 and (frame["height"], frame["width"]) == (96, 96)
    )
    expected = np.array(floats["attention"])
    assert frame["scale"] == pytest.approx(expected.max(), rel=1e-6)
    np.testing.assert_allclose(levels / 65535 * frame["scale"], expected, rtol=0, atol=frame["scale"] / 65535)
    assert len(png) * 10 < len(str(floats["attention"]))  # what makes it the compact answer


def test_the_model_box_refuses_in_one_line(checkpoints, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    notes = allowed / "notes.txt"
    notes.write_text("not weights")
    default = str(checkpoints["tiny_gpvit"])
    workbench = Workbench(Settings(precision="fp32", allow_load=(str(allowed),)), default)
    refusals = {
        ("", "", None): NO_PATH,
        ("  ", "", None): NO_PATH,
        (str(checkpoints["tiny_setr"]), "", None): "refused: this app loads models only from the folders",
        (str(allowed / "absent"), "", None): "absent: no such file or folder; expected a run folder",
        (str(notes), "", None): "notes.txt is not a workbench checkpoint: give the segmentor or detector",
        (str(notes), "gpvit_l1_upernet", 150): "",  # whatever the reader says, in one line
    }
    for (path, model, classes), message in refusals.items():
        with pytest.raises(ValueError) as error:
            workbench.load(path, model, classes)
        assert message in str(error.value) and "\n" not in str(error.value).strip()
    assert workbench.models.find(workbench.default.key) is workbench.default  # still loaded
    closed = Workbench(Settings(precision="fp32"), default)  # no --allow-load: the box loads nothing
    with pytest.raises(
        ValueError, match="loading models from the page is off: start the app with --allow-load"
    ):
        closed.load(str(notes))


def test_the_model_card_names_the_model_and_warns_about_the_demo_set(workbenches, checkpoints, tmp_path):
    workbench = workbenches["tiny_gpvit"]
    card = workbench.model_card(workbench.default.key)
    names = workbench.default.predictor.classes.names
    assert "gpvit_l1_segformer" in card and "**data set** demo" in card and f"{len(names)} classes" in card
    assert ", ".join(names) in card and "disc" in names and str(checkpoints["tiny_gpvit"]) in card
    assert "trained on generated shapes only" in card
    assert "python apps/app.py --checkpoint FILE --model NAME --num-classes K" in card

    cfg = load_config("tiny_gpvit")
    cfg.data.dataset = "ade20k"
    (tmp_path / "ade").mkdir()
    save_weights(tmp_path / "ade", build_model(cfg), cfg)
    other = Workbench(Settings(precision="fp32"), str(tmp_path / "ade"))
    card = other.model_card(other.default.key)
    assert "**data set** ade20k" in card and str(tmp_path / "ade") in card
    assert DEMO_NOTICE.split(":")[0] not in card


def test_the_compact_label_answer_decodes_to_the_labels(workbenches, scene):
    workbench = workbenches["tiny_setr"]
    key = workbench.default.key
    png, answer = workbench.label_png(key, scene)
    listed = workbench.label_map(key, scene)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), np.array(listed["labels"]))
    assert answer["classes"] == listed["classes"] and "labels" not in answer
