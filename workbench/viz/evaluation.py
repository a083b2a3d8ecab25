"""Figures of an evaluation: per-class IoU bars, a confusion matrix, the worst images and their errors.

They read what the engine's evaluation returns (``ConfusionMatrix.metrics()``: percent figures by class
name; the matrix itself, rows = ground truth, columns = prediction; and for the worst images
``workbench.studies.analysis.review``'s ``ImageScore`` or anything with ``image``, ``labels``,
``prediction``, ``miou`` and ``index``). Like ``figures.py`` they build ``Figure`` objects directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from workbench.data.classes import Classes
from workbench.viz.figures import _bare, _numpy, _rgb
from workbench.viz.overlay import colorize, overlay

ERROR_COLOUR = np.array([255, 0, 0], dtype=np.uint8)


def iou_bar_figure(metrics: Mapping[str, Any], title: str | None = None) -> Figure:
    """Per-class IoU (percent) as bars, the mIoU as a dashed line; a class without IoU (absent from
    ground truth and predictions, NaN) is marked "n/a" instead of a bar."""
    if "IoU" not in metrics or not metrics["IoU"]:
        raise ValueError("metrics must hold per-class 'IoU' (what evaluate() returns for a segmentor)")
    names = list(metrics["IoU"])
    values = np.array([metrics["IoU"][name] for name in names], dtype=np.float64)
    figure = Figure(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.4), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(names))
    axes.bar(positions, np.nan_to_num(values), color="tab:blue")
    for position, value in zip(positions, values, strict=True):
        label = "n/a" if math.isnan(value) else f"{value:.0f}"
        axes.text(position, 0 if math.isnan(value) else value, label, ha="center", va="bottom", fontsize=7)
    if "mIoU" in metrics:
        axes.axhline(metrics["mIoU"], color="tab:red", linestyle="--", label=f"mIoU {metrics['mIoU']:.1f}")
        axes.legend(fontsize="small", loc="lower right")
    axes.set_xticks(positions, names, rotation=45 if len(names) > 6 else 0, ha="right", fontsize="small")
    axes.set(ylabel="IoU (%)", ylim=(0, 105))
    axes.set_title(title or "per-class IoU")
    return figure


def matrix_figure(
    matrix: np.ndarray | torch.Tensor,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    label: str | None = None,
    cmap: str = "viridis",
    signed: bool = False,
    annotate: bool | None = None,
    fmt: str = ".2f",
) -> Figure:
    """A labelled matrix (R, C) as an image with a colour bar: confusion matrices, method agreement,
    the GP mixer's group-to-group weights. ``signed`` centres a diverging map on zero; cells are
    written out when ``annotate`` (default: matrices up to 12 x 12)."""
    values = _numpy(matrix).astype(np.float64)
    if values.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {values.shape}")
    height, width = values.shape
    for names, size, what in ((rows, height, "rows"), (cols, width, "cols")):
        if names is not None and len(names) != size:
            raise ValueError(f"{len(names)} {what} names for a matrix of shape {values.shape}")
    figure = Figure(figsize=(min(2 + 0.45 * width, 9), min(1.5 + 0.4 * height, 8)), layout="constrained")
    axes = figure.subplots()
    if signed:
        bound = float(np.nanmax(np.abs(values))) or 1.0
        shown = axes.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        shown = axes.imshow(values, cmap=cmap)
    figure.colorbar(shown, ax=axes, label=label)
    if annotate if annotate is not None else max(height, width) <= 12:
        middle = np.nanmean(values)
        for (row, col), value in np.ndenumerate(values):
            colour = "white" if (value < middle) != signed else "black"
            axes.text(col, row, format(value, fmt), ha="center", va="center", fontsize=7, color=colour)
    if cols is not None:
        axes.set_xticks(range(width), cols, rotation=45 if width > 6 else 0, ha="right", fontsize="small")
    if rows is not None:
        axes.set_yticks(range(height), rows, fontsize="small")
    axes.set(xlabel=xlabel, ylabel=ylabel)
    if title:
        axes.set_title(title)
    return figure


def confusion_matrix_figure(
    matrix: np.ndarray | torch.Tensor, names: Sequence[str], normalize: bool = True, title: str | None = None
) -> Figure:
    """A confusion matrix (K, K) of pixel counts, rows ground truth and columns prediction; with
    ``normalize`` each row is divided by its total (the diagonal is then each class's accuracy; a class
    absent from the ground truth keeps a row of zeros)."""
    counts = _numpy(matrix).astype(np.float64)
    if counts.shape != (len(names), len(names)):
        raise ValueError(
            f"a confusion matrix of {len(names)} classes is ({len(names)}, {len(names)}), got {counts.shape}"
        )
    shown = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalize else counts
    return matrix_figure(
        shown,
        names,
        names,
        title=title or "confusion matrix" + (" (rows normalised)" if normalize else ""),
        xlabel="predicted",
        ylabel="ground truth",
        label="share of the row's pixels" if normalize else "pixels",
        cmap="Blues",
        fmt=".2f" if normalize else ".0f",
    )


def error_map(labels: np.ndarray, prediction: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) bool: the labelled pixels whose prediction differs from the ground truth."""
    labels, prediction = np.asarray(labels), np.asarray(prediction)
    if labels.shape != prediction.shape:
        raise ValueError(f"labels {labels.shape} and prediction {prediction.shape} differ in shape")
    return (labels != prediction) & (labels != ignore_index)


def worst_images_figure(results: Sequence[Any], classes: Classes, alpha: float = 0.6) -> Figure:
    """One row per image: the image, the ground truth, the prediction and its errors (wrong pixels in
    red over the image), titled with the image's index and mIoU. ``results``: items with ``index``,
    ``miou``, ``image`` (H, W, 3) uint8, ``labels`` and ``prediction`` (H, W)."""
    if not results:
        raise ValueError("results is empty: expected at least one image")
    figure = Figure(figsize=(10, 2.6 * len(results)), layout="constrained")
    grid = figure.subplots(len(results), 4, squeeze=False)
    for row, result in zip(grid, results, strict=True):
        image = _rgb(result.image)
        labels, prediction = np.asarray(result.labels), np.asarray(result.prediction)
        valid = labels != 255
        wrong = error_map(labels, prediction)
        errors = image.copy()
        errors[wrong] = overlay(
            image[wrong][None], np.broadcast_to(ERROR_COLOUR, (1, int(wrong.sum()), 3)), alpha
        )[0]
        panels = (
            (image, f"image {result.index}: mIoU {result.miou:.1f}"),
            (
                np.where(valid[..., None], colorize(np.where(valid, labels, 0), classes.palette), image),
                "ground truth",
            ),
            (colorize(prediction, classes.palette), "prediction"),
            (errors, f"errors ({100 * wrong.sum() / max(valid.sum(), 1):.1f}% of pixels)"),
        )
        for axes, (picture, title) in zip(row, panels, strict=True):
            axes.imshow(picture)
            _bare(axes, title)
    return figure
