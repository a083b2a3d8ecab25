"""The notebook explorers build headless, answer real (simulated) clicks and update when driven."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pytest
import torch

from tests.tiny import tiny_gpvit_segmentor, tiny_setr
from workbench.inference.predictor import Predictor
from workbench.viz.attribution import METHODS
from workbench.viz.explorers import (
    AttentionExplorer,
    AttributionExplorer,
    GroupExplorer,
    pixel_of_click,
)

HEIGHT, WIDTH = 40, 56


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def setr() -> Predictor:
    torch.manual_seed(0)
    return Predictor(tiny_setr("setr_naive_vit_base"), device="cpu")


@pytest.fixture(scope="module")
def gpvit() -> Predictor:
    torch.manual_seed(0)
    return Predictor(tiny_gpvit_segmentor("upernet"), device="cpu")


def _controls(widget: widgets.Widget) -> list[widgets.Widget]:
    """Every widget in the tree under ``widget``."""
    found = [widget]
    for child in getattr(widget, "children", ()):
        found.extend(_controls(child))
    return found


def _browser_click(explorer, y: int, x: int) -> None:
    """What ipyevents sends for a click on the picture shown at twice its size: dataX/dataY in the
    picture's natural pixels, the bounding rectangle in screen pixels; through the registered handler."""
    message = {
        "type": "click",
        "dataX": x,
        "dataY": y,
        "relativeX": 2 * x,
        "relativeY": 2 * y,
        "boundingRectWidth": 2 * WIDTH,
        "boundingRectHeight": 2 * HEIGHT,
    }
    explorer.events._handle_mouse_msg(None, message, None)


def test_pixel_of_click_reads_natural_pixels_scales_relative_ones_and_clamps():
    size = (HEIGHT, WIDTH)
    shown_twice = {"boundingRectWidth": 2 * WIDTH, "boundingRectHeight": 2 * HEIGHT}
    assert pixel_of_click({"dataX": 10, "dataY": 5, **shown_twice}, size) == (5, 10)
    assert pixel_of_click({"relativeX": 20, "relativeY": 10, **shown_twice}, size) == (5, 10)
    assert pixel_of_click({"dataX": WIDTH, "dataY": HEIGHT}, size) == (HEIGHT - 1, WIDTH - 1)
    with pytest.raises(ValueError, match="dataX"):
        pixel_of_click({"type": "click"}, size)


def test_attention_explorer_answers_a_click_like_the_predictor(setr):
    explorer = AttentionExplorer(setr, _image(0))
    tree = _controls(explorer.widget)
    assert explorer.layer in tree and explorer.head in tree and explorer.rollout in tree
    assert explorer.picture in tree and explorer.output in tree
    assert list(explorer.layer.options) == setr.sites()
    assert not explorer.rollout.disabled  # SETR is all self-attention
    bare = explorer.output.value

    _browser_click(explorer, 5, 10)
    assert explorer.query == (5, 10) and explorer.status.value == ""
    first = explorer.output.value
    assert first != bare
    torch.testing.assert_close(explorer.heat, setr.attention_at(5, 10, setr.sites()[0]))
    _browser_click(explorer, 30, 40)
    assert explorer.output.value != first

    explorer.layer.value = "blocks.2"
    torch.testing.assert_close(explorer.heat, setr.attention_at(30, 40, "blocks.2"))
    explorer.head.value = 1
    torch.testing.assert_close(explorer.heat, setr.attention_at(30, 40, "blocks.2", head=1))
    explorer.rollout.value = True
    assert explorer.layer.disabled and explorer.head.disabled
    torch.testing.assert_close(explorer.click(3, 4), setr.rollout_at(3, 4))


def test_attention_explorer_goes_through_groups_at_ungrouping_sites(gpvit):
    explorer = AttentionExplorer(gpvit, _image(1))
    assert not any(name.endswith(".grouping") for name in explorer.layer.options)
    assert explorer.rollout.disabled  # stripes and groups are no ViT to roll out
    explorer.layer.value = "blocks.1.ungrouping"
    heat = explorer.click(12, 20)
    torch.testing.assert_close(heat, gpvit.effective_attention_at(12, 20, "blocks.1"))


def test_attention_explorer_refuses_pixels_outside_and_keeps_its_own_image(setr):
    first = AttentionExplorer(setr, _image(2))
    with pytest.raises(ValueError, match="outside the 40x56 image"):
        first.click(HEIGHT, 0)
    AttentionExplorer(setr, _image(3))  # another image in the same predictor
    first.click(5, 5)
    assert np.array_equal(setr.session.image, _image(2))


def test_group_explorer_selects_the_group_under_a_click(gpvit):
    explorer = GroupExplorer(gpvit, _image(4))
    tree = _controls(explorer.widget)
    assert all(c in tree for c in (explorer.block, explorer.mode, explorer.head, explorer.group))
    assert list(explorer.block.options) == ["blocks.1", "blocks.3"]
    assignment = gpvit.group_assignment("blocks.1")
    groups = assignment.flatten().unique()
    assert len(groups) > 1  # else no click could select another group
    y, x = (assignment == groups[0]).nonzero()[0].tolist()
    other_y, other_x = (assignment == groups[1]).nonzero()[0].tolist()

    _browser_click(explorer, y, x)
    assert explorer.group.value == int(groups[0])
    lit = explorer.picture.value
    assert explorer.select_group_at(other_y, other_x) == int(groups[1])
    assert explorer.picture.value != lit

    explorer.mode.value = "soft"
    soft = explorer.output.value
    explorer.select_group(int(groups[0]))
    assert explorer.output.value != soft
    with pytest.raises(ValueError, match=r"group must be an int in \[0, 8\)"):
        explorer.select_group(8)

    explorer.block.value = "blocks.3"  # four groups: the selection moves into range
    assert explorer.groups == 4 and explorer.group.value < 4


def test_group_explorer_refuses_a_model_without_gp_blocks(setr):
    with pytest.raises(ValueError, match="no GP blocks"):
        GroupExplorer(setr, _image(5))


def test_attribution_explorer_runs_on_a_click_and_on_a_box(setr):
    explorer = AttributionExplorer(setr, _image(6))
    tree = _controls(explorer.widget)
    assert all(c in tree for c in (explorer.target, explorer.region_mode, explorer.method, explorer.button))
    assert [name for name, _ in explorer.target.options] == list(setr.classes.names)
    assert list(explorer.method.options) == list(METHODS) and explorer.method.value == "saliency"
    bare = explorer.output.value

    _browser_click(explorer, 8, 9)
    assert explorer.status.value == ""
    assert explorer.attribution.map.shape == (1, 48, 64)  # the padded model input
    assert explorer.heat.shape == (HEIGHT, WIDTH)  # the image
    first = explorer.output.value
    assert first != bare
    explorer.click(30, 45)
    assert explorer.output.value != first

    explorer.region_mode.value = "box"
    explorer.run_on_click.value = False
    drawn = explorer.picture.value
    assert explorer.click(2, 3) is None and explorer.region is None  # one corner: no box yet
    explorer.click(20, 30)
    assert explorer.region == (2, 3, 21, 31) and explorer.picture.value != drawn
    assert explorer.region_mask().sum() == 19 * 28


def test_attribution_explorer_pads_for_a_vit_and_reads_the_predicted_mask(setr):
    explorer = AttributionExplorer(setr, _image(8), method="grad_cam")
    assert explorer.inputs.shape[-2:] == (48, 64)  # SETR takes multiples of 16: padded like the Predictor
    explorer.region_mode.value = "mask"
    target = explorer.target.value  # the class predicted most: its mask is not empty
    explorer.run()
    assert explorer.heat.shape == (HEIGHT, WIDTH)
    assert np.array_equal(explorer.region_mask(), explorer.prediction.labels == target)


def test_attribution_explorer_names_what_is_wrong(setr):
    with pytest.raises(ValueError, match="method must be one of"):
        AttributionExplorer(setr, _image(7), method="lime")
    explorer = AttributionExplorer(setr, _image(7))
    with pytest.raises(ValueError, match="no region yet"):
        explorer.run()
    explorer.region_mode.value = "mask"
    absent = [c for c in range(len(setr.classes)) if not (explorer.prediction.labels == c).any()]
    assert absent, "every class is predicted somewhere: pick a larger class count"
    explorer.target.value = absent[0]
    explorer.button.click()  # in the browser the error shows in the status line
    assert "no pixel is predicted as" in explorer.status.value
    assert "\n" not in explorer.status.value
