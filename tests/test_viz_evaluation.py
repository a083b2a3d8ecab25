"""The notebooks' figures and measures: live training curves, evaluation figures, panels, receptive
field radius, uniform attention distance, attribution agreement."""

from __future__ import annotations

import math

import IPython.display
import numpy as np
import pytest
import torch

from workbench.config import load_config
from workbench.data.classes import Classes
from workbench.engine import train
from workbench.models.explain import TokenGrid
from workbench.studies.analysis import ImageScore
from workbench.viz.evaluation import (
    ERROR_COLOUR,
    confusion_matrix_figure,
    error_map,
    iou_bar_figure,
    matrix_figure,
    worst_images_figure,
)
from workbench.viz.measures import (
    attribution_agreement,
    object_pixel,
    receptive_field_radius,
    uniform_attention_distance,
)
from workbench.viz.panels import panels_figure
from workbench.viz.training import TrainingPlot

CLASSES = Classes.numbered(3)


def test_training_plot_follows_a_real_training_run(tmp_path):
    cfg = load_config("tiny_gpvit", [f"work_dir={tmp_path / 'run'}", "iters=3", "eval.interval=3"])
    cfg.data.demo_train, cfg.data.demo_val = 8, 2
    plot = TrainingPlot(every=1, display=False)
    state = train(cfg, callbacks=[plot], progress=False)
    assert plot.steps == [1, 2, 3] and len(plot.lr) == 3 and plot.lr[-1] == state["lr"]
    assert plot.losses["loss"][-1] == pytest.approx(state["losses"]["loss"])
    assert plot.eval_steps == [3] and plot.values == [pytest.approx(state["metrics"]["mIoU"])]
    loss_axes, lr_axes, metric_axes = plot.figure().axes
    (total,) = [line for line in loss_axes.get_lines() if line.get_label() == "loss"]
    assert list(total.get_xdata()) == [1, 2, 3] and list(total.get_ydata()) == plot.losses["loss"]
    assert list(lr_axes.get_lines()[0].get_ydata()) == plot.lr
    assert list(metric_axes.get_lines()[0].get_ydata()) == plot.values
    assert plot.redraws == 4  # three steps and one evaluation


def test_training_plot_updates_one_display_in_place(monkeypatch):
    shown = []

    class Handle:
        def update(self, picture):
            shown.append(("update", picture))

    def display(picture, display_id):
        assert display_id is True
        shown.append(("display", picture))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    plot = TrainingPlot(every=2)
    for step in range(1, 5):
        plot("step", {"step": step, "losses": {"loss": 1.0 / step}, "lr": 0.1})
    plot("eval", {"step": 4, "metrics": {"mIoU": 12.5}})
    assert [kind for kind, _ in shown] == ["display", "update", "update"]  # steps 2 and 4, the eval
    assert all(picture.data.startswith(b"\x89PNG") for _, picture in shown)
    with pytest.raises(ValueError, match="not 'mAcc'"):
        TrainingPlot(metric="mAcc", display=False)("eval", {"step": 4, "metrics": {"mIoU": 1.0}})


def test_iou_bars_have_the_metrics_heights_and_mark_missing_classes():
    metrics = {"IoU": {"a": 80.0, "b": math.nan, "c": 20.0}, "mIoU": 50.0}
    axes = iou_bar_figure(metrics).axes[0]
    assert [bar.get_height() for bar in axes.patches] == [80.0, 0.0, 20.0]
    assert [text.get_text() for text in axes.texts] == ["80", "n/a", "20"]
    assert axes.get_lines()[0].get_ydata()[0] == 50.0
    with pytest.raises(ValueError, match="per-class 'IoU'"):
        iou_bar_figure({"top1": 1.0})


def test_confusion_matrix_rows_are_normalised_and_shapes_checked():
    counts = torch.tensor([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    shown = confusion_matrix_figure(counts, CLASSES.names).axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, [[0.8, 0.2, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    raw = confusion_matrix_figure(counts, CLASSES.names, normalize=False).axes[0].images[0].get_array()
    np.testing.assert_array_equal(raw, counts.numpy())
    with pytest.raises(ValueError, match="3 classes"):
        confusion_matrix_figure(counts[:2], CLASSES.names)
    with pytest.raises(ValueError, match="2 rows names"):
        matrix_figure(np.eye(3), ["x", "y"])


def test_worst_images_paint_exactly_the_wrong_labelled_pixels():
    image = np.full((6, 5, 3), 100, dtype=np.uint8)
    labels = np.zeros((6, 5), dtype=np.int64)
    labels[0, 0] = 255  # ignored: never an error
    prediction = np.zeros((6, 5), dtype=np.int64)
    prediction[:2, :] = 1  # 10 pixels wrong, one of them ignored
    wrong = error_map(labels, prediction)
    assert wrong.sum() == 9 and not wrong[0, 0]
    figure = worst_images_figure([ImageScore(7, 12.5, image, labels, prediction)], CLASSES, alpha=1.0)
    assert len(figure.axes) == 4 and figure.axes[0].get_title() == "image 7: mIoU 12.5"
    errors = figure.axes[3].images[0].get_array()
    assert ((errors == ERROR_COLOUR).all(-1) == wrong).all()
    with pytest.raises(ValueError, match="empty"):
        worst_images_figure([], CLASSES)


def test_panels_figure_draws_one_titled_panel_per_map():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    maps = {"a": np.ones((4, 6)), "b": torch.zeros(4, 6), "c": np.eye(4, 6)}
    figure = panels_figure(maps, image, columns=2, point=(1, 2))
    titled = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titled == ["a", "b", "c"]
    bare = panels_figure({"matrix": np.eye(3)}, signed=True)  # without an image: any 2-D shape
    assert bare.axes[0].images[0].get_clim() == (-1.0, 1.0)
    with pytest.raises(ValueError, match="like the image"):
        panels_figure({"a": np.ones((3, 3))}, image)
    with pytest.raises(ValueError, match="empty"):
        panels_figure({})


def test_receptive_field_radius_of_a_disc_and_of_a_point():
    yy, xx = torch.meshgrid(torch.arange(41), torch.arange(41), indexing="ij")
    disc = (((yy - 20) ** 2 + (xx - 20) ** 2) <= 10**2).float()
    assert receptive_field_radius(disc, mass=1.0) == pytest.approx(10.0)
    assert 6.0 <= receptive_field_radius(disc, mass=0.5) <= 7.5  # half a disc's area: r / sqrt(2)
    point = torch.zeros(41, 41)
    point[20, 20] = 1
    assert receptive_field_radius(point) == 0.0
    assert receptive_field_radius(point, point=(20, 25)) == 5.0
    with pytest.raises(ValueError, match="zero everywhere"):
        receptive_field_radius(torch.zeros(3, 3))


def test_uniform_attention_distance_is_the_mean_distance_between_token_centres():
    # Two tokens 16 px apart: each attends half to itself (0) and half to the other (16).
    assert uniform_attention_distance(TokenGrid(1, 2, 16, (16, 32))) == pytest.approx(8.0)
    assert uniform_attention_distance(TokenGrid(8, 8, 16, (128, 128))) > uniform_attention_distance(
        TokenGrid(4, 4, 16, (64, 64))
    )


def test_attribution_agreement_of_equal_and_opposite_maps():
    ramp = torch.arange(20.0).reshape(4, 5)
    agreement = attribution_agreement(
        {"a": ramp, "same": 2 * ramp, "reversed": -ramp}, top=0.2, absolute=False
    )
    np.testing.assert_allclose(agreement["spearman"][0], [1, 1, -1])
    np.testing.assert_allclose(agreement["top_overlap"][0], [1, 1, 0])
    magnitudes = attribution_agreement({"a": ramp, "reversed": -ramp})  # the same pixels matter
    np.testing.assert_allclose(magnitudes["spearman"], np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least two"):
        attribution_agreement({"a": ramp})


def test_object_pixel_lies_inside_the_largest_object():
    labels = np.zeros((20, 20), dtype=np.int64)
    labels[2:5, 2:5] = 1  # 9 pixels
    labels[8:18, 6:16] = 2  # 100 pixels
    y, x = object_pixel(labels)
    assert labels[y, x] == 2 and 11 <= y <= 14
    assert object_pixel(np.zeros((6, 8), dtype=np.int64)) == (3, 4)
