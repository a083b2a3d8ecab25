"""Figures render off-screen (Agg) with the artists a reader relies on (workbench.viz.figures)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from workbench.data.classes import ADE20K, CITYSCAPES, DEMO, PASCAL_CONTEXT, default_palette
from workbench.viz.figures import (
    attention_distance_figure,
    attention_grid_figure,
    group_assignment_figure,
    heatmap_figure,
    mask_figure,
)
from workbench.viz.overlay import colorize, overlay

H, W = 12, 16


def _render(figure: Figure) -> None:
    assert isinstance(figure, Figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_no_pyplot_figure_is_left_open(image):
    pyplot = pytest.importorskip("matplotlib.pyplot")
    before = pyplot.get_fignums()
    mask_figure(image, np.zeros((H, W), dtype=np.int64), DEMO)
    heatmap_figure(image, np.ones((H, W)))
    assert pyplot.get_fignums() == before


def test_mask_figure_has_a_legend_entry_per_class_present(image):
    labels = np.zeros((H, W), dtype=np.int64)
    labels[:4] = 3
    labels[4:6] = 5
    labels[-1] = 255  # ignored: no legend entry, the bare image shows
    figure = mask_figure(image, torch.from_numpy(labels), DEMO, alpha=0.5)
    _render(figure)
    legend = figure.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["background", "triangle", "cross"]
    colours = [tuple(np.round(np.asarray(p.get_facecolor()[:3]) * 255)) for p in legend.get_patches()]
    assert colours == [DEMO.palette[0], DEMO.palette[3], DEMO.palette[5]]
    shown = figure.axes[0].get_images()[0].get_array()
    expected = overlay(image, colorize(labels.clip(0, 5), DEMO.palette), 0.5)
    np.testing.assert_array_equal(shown[:-1], expected[:-1])
    np.testing.assert_array_equal(shown[-1], image[-1])


def test_mask_figure_rejects_labels_beyond_the_classes(image):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        mask_figure(image, np.full((H, W), 6), DEMO)
    with pytest.raises(ValueError, match="labels must be"):
        mask_figure(image, np.zeros((H, W + 1), dtype=np.int64), DEMO)


@pytest.mark.parametrize("signed", [False, True])
def test_heatmap_figure_has_a_colour_bar(image, signed):
    heat = torch.linspace(-1, 3, H * W).reshape(H, W)
    figure = heatmap_figure(image, heat, signed=signed, label="relevance")
    _render(figure)
    heat_image = figure.axes[0].get_images()[-1]
    assert heat_image.colorbar is not None and heat_image.colorbar.ax in figure.axes
    assert heat_image.colorbar.ax.get_ylabel() == "relevance"
    assert heat_image.get_clim() == ((-3.0, 3.0) if signed else (-1.0, 3.0))


def test_heatmap_figure_alone_and_bad_shapes(image):
    _render(heatmap_figure(None, np.random.rand(H, W)))
    with pytest.raises(ValueError, match=r"heat must be \(H, W\) = \(12, 16\)"):
        heatmap_figure(image, np.zeros((H + 1, W)))
    with pytest.raises(ValueError, match="image must be uint8 RGB"):
        heatmap_figure(image.astype(np.float32), np.zeros((H, W)))


def test_attention_grid_has_layers_by_heads_axes(image):
    maps = {"blocks.0": torch.rand(3, H, W), "blocks.1": torch.rand(3, H, W), "blocks.2": torch.rand(2, H, W)}
    figure = attention_grid_figure(maps, image)
    _render(figure)
    assert len(figure.axes) == 3 * 3
    assert [figure.axes[3 * row].get_ylabel() for row in range(3)] == list(maps)
    assert [figure.axes[head].get_title() for head in range(3)] == ["head 0", "head 1", "head 2"]
    assert len(figure.axes[3 * 2 + 2].get_images()) == 0  # the third layer has two heads
    np.testing.assert_array_equal(figure.axes[3 + 1].get_images()[-1].get_array(), maps["blocks.1"][1])
    with pytest.raises(ValueError, match=r"\(heads, H, W\)"):
        attention_grid_figure({"blocks.0": torch.rand(H, W)})


def test_group_assignments_colour_each_group_alike_in_every_block(image):
    blocks = [np.arange(H * W).reshape(H, W) % groups for groups in (16, 8, 4, 2)]
    figure = group_assignment_figure(image, blocks)
    _render(figure)
    assert len(figure.axes) == 4
    assert figure.axes[0].get_title() == "GP block 0 (16 groups)"
    palette = np.asarray(default_palette(17)[1:])
    for axes, assigned in zip(figure.axes, blocks, strict=True):
        np.testing.assert_array_equal(
            axes.get_images()[0].get_array(), overlay(image, palette[assigned], 0.5)
        )
    assert len(set(map(tuple, palette))) == 16  # distinct groups, distinct colours
    with pytest.raises(ValueError, match="4 assignment maps but 1 titles"):
        group_assignment_figure(image, blocks, titles=["one"])
    with pytest.raises(ValueError, match=r"assignments\[1\] must be"):
        group_assignment_figure(image, [blocks[0], blocks[1][:-1]])


def test_attention_distance_figure_scatters_heads_against_depth():
    distances = {"blocks.0": [10.0, 30.0], "blocks.1": torch.tensor([50.0, 60.0]), "blocks.2": [90.0, 95.0]}
    figure = attention_distance_figure(distances, title="SETR")
    _render(figure)
    axes = figure.axes[0]
    (points,) = [c for c in axes.collections if isinstance(c, PathCollection)]
    np.testing.assert_array_equal(
        points.get_offsets(), [[0, 10], [0, 30], [1, 50], [1, 60], [2, 90], [2, 95]]
    )
    assert [t.get_text() for t in axes.get_xticklabels()] == list(distances)
    assert "pixels" in axes.get_ylabel()
    with pytest.raises(ValueError, match=r"\(heads,\)"):
        attention_distance_figure({"blocks.0": np.zeros((2, 2))})


@pytest.mark.parametrize(
    ("classes", "count"), [(ADE20K, 150), (CITYSCAPES, 19), (PASCAL_CONTEXT, 59), (DEMO, 6)]
)
def test_every_data_set_has_its_class_table(classes, count):
    assert len(classes.names) == len(classes.palette) == count
    assert len(set(classes.names)) == count
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in classes.palette)
