"""Looking at a trained model over a data set: per-image scores and the worst images, GPViT's group
purity, and the figures that compare model families.

    result = review(model, val_set, cfg.eval)         # metrics, confusion matrix, the worst images
    dataset_group_purity(predictor, val_set, count=32)  # GP block -> (purity, NMI), averaged
    dataset_attention_distances(model, val_set, 16)     # site -> (heads,) pixels, averaged
    dataset_receptive_field(model, val_set, 16)         # (H, W) effective receptive field
    family_summary(predictor, val_set)                  # params, GFLOPs, attention distance, ERF, mIoU

Each reads the data set's images through its own ``load`` (uint8 image, labels) and its test view
through ``dataset[index]`` (the evaluation's preprocessing), so the numbers are the evaluation's. Test
views go through the model one image at a time, as their sizes may differ (ADE20K's keep each image's
aspect ratio), on the model's device and in its dtype; results come back on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.config import EvalConfig
from workbench.engine.evaluate import ConfusionMatrix, predict_probs
from workbench.inference.predictor import Predictor
from workbench.models.complexity import count_gmacs, count_params
from workbench.models.layers import pad_for
from workbench.precision import model_device_dtype
from workbench.viz.distance import attention_distances
from workbench.viz.groups import group_purity, normalized_mutual_information
from workbench.viz.measures import receptive_field_radius
from workbench.viz.rollout import effective_receptive_field


@dataclass
class ImageScore:
    """One evaluated image: its index in the data set, its mIoU (percent), and for the images kept the
    image (H, W, 3) uint8, the ground truth and the prediction (H, W)."""

    index: int
    miou: float
    image: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    prediction: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Review:
    """``metrics`` as ``evaluate`` returns them, the summed confusion ``matrix`` (K, K), every image's
    score (data-set order) and the ``worst`` images with their pictures, lowest mIoU first."""

    metrics: dict[str, Any]
    matrix: torch.Tensor
    scores: list[ImageScore]
    worst: list[ImageScore]


def _image_miou(prediction: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes)
    matrix.update(prediction, labels)
    return matrix.metrics()["mIoU"]


def _limit(dataset: Any, count: int | None) -> range:
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1 or None (all images), got {count}")
    return range(len(dataset) if count is None else min(count, len(dataset)))


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _test_views(model: nn.Module, dataset: Any, count: int | None) -> Iterator[torch.Tensor]:
    """The test view of each of the first ``count`` images, padded for ``model``: (1, C, H, W) on the
    CPU, one at a time (sizes may differ)."""
    for index in _limit(dataset, count):
        yield pad_for(model, dataset[index][0][None])


def _predict(
    model: nn.Module, dataset: Any, index: int, eval_cfg: EvalConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation's prediction (H, W) of image ``index`` at its labels' size, and the labels."""
    inputs, labels = dataset[index]
    probs = predict_probs(model, inputs[None].to(*model_device_dtype(model)), eval_cfg, model.num_classes)
    probs = F.interpolate(probs, size=labels.shape, mode="bilinear", align_corners=False)
    return probs[0].argmax(0).cpu(), labels


@torch.no_grad()
def review(
    model: nn.Module,
    dataset: Any,
    eval_cfg: EvalConfig | None = None,
    worst: int = 4,
    count: int | None = None,
) -> Review:
    """Evaluate ``model`` image by image on the first ``count`` images of ``dataset`` (all by default):
    the summed metrics and confusion matrix (those of ``evaluate``), each image's mIoU, and the
    ``worst`` images kept with their pictures. The model runs in eval mode (its mode is restored), on
    its device and in its dtype."""
    eval_cfg = eval_cfg or EvalConfig()
    num_classes = model.num_classes
    names = getattr(getattr(dataset, "classes", None), "names", None)
    total = ConfusionMatrix(num_classes)
    scores, kept = [], []
    with _evaluating(model):
        for index in _limit(dataset, count):
            prediction, labels = _predict(model, dataset, index, eval_cfg)
            total.update(prediction, labels)
            scores.append(ImageScore(index, _image_miou(prediction, labels, num_classes)))
        for score in sorted(scores, key=lambda s: s.miou)[:worst]:  # predicted again: nothing is stored
            prediction, labels = _predict(model, dataset, score.index, eval_cfg)
            image, _ = dataset.load(score.index)
            pictures = (image.permute(1, 2, 0).numpy(), labels.numpy(), prediction.numpy())
            kept.append(ImageScore(score.index, score.miou, *pictures))
    return Review(total.metrics(names), total.matrix, scores, kept)


def dataset_group_purity(
    predictor: Predictor, dataset: Any, count: int | None = None
) -> dict[str, tuple[float, float]]:
    """Group purity and NMI (``workbench.viz.groups``) of every GP block of a GPViT predictor against
    the ground truth, averaged over the first ``count`` images of ``dataset``: block -> (purity, NMI)."""
    scores: dict[str, list[tuple[float, float]]] = {}
    for index in _limit(dataset, count):
        image, labels = dataset.load(index)
        predictor.set_image(image.permute(1, 2, 0).numpy())
        blocks = [name.removesuffix(".grouping") for name in predictor.sites() if name.endswith(".grouping")]
        if not blocks:
            raise ValueError(f"{type(predictor.model).__name__} has no GP blocks: group purity needs a GPViT")
        for block in blocks:
            assignment = predictor.group_assignment(block)
            scores.setdefault(block, []).append(
                (group_purity(assignment, labels), normalized_mutual_information(assignment, labels))
            )
    return {block: tuple(float(v) for v in np.mean(values, axis=0)) for block, values in scores.items()}


def dataset_attention_distances(
    model: nn.Module, dataset: Any, count: int | None = None, layers: list[int | str] | None = None
) -> dict[str, torch.Tensor]:
    """``attention_distances`` of the recorded sites (``layers``; None: all) over the test views of the
    first ``count`` images of ``dataset``, one image at a time, averaged: site -> (heads,) pixels. Eval
    mode (the model's own restored)."""
    with _evaluating(model):
        per_image = [attention_distances(model, view, layers) for view in _test_views(model, dataset, count)]
    return {site: torch.stack([distances[site] for distances in per_image]).mean(0) for site in per_image[0]}


def _centre_crop(field_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The (height, width) window of ``field_map`` (H, W) whose centre pixel is the map's."""
    top, left = field_map.shape[0] // 2 - height // 2, field_map.shape[1] // 2 - width // 2
    return field_map[top : top + height, left : left + width]


def dataset_receptive_field(model: nn.Module, dataset: Any, count: int | None = None) -> torch.Tensor:
    """The effective receptive field of the centre pixel over the test views of the first ``count``
    images of ``dataset``: (H, W), maximum 1. Each image's ``effective_receptive_field`` (its maximum 1)
    is cropped around its centre pixel to the smallest view's size, so the centres line up, and the
    crops are averaged. Eval mode (the model's own restored)."""
    with _evaluating(model):
        fields = [effective_receptive_field(model, view) for view in _test_views(model, dataset, count)]
    height, width = min(f.shape[0] for f in fields), min(f.shape[1] for f in fields)
    mean = torch.stack([_centre_crop(f, height, width) for f in fields]).mean(0)
    peak = mean.max()
    return mean / peak if peak > 0 else mean


def family_summary(predictor: Predictor, dataset: Any, count: int = 8, mass: float = 0.5) -> dict[str, float]:
    """What ``07_compare_families`` sets side by side for one model, over the first ``count`` images:

    - ``params_M``: learnable parameters (millions); ``GFLOPs``: multiply-adds of one forward at the
      test input size of the data set's first image;
    - ``attention_distance_px``: mean attention distance (pixels) over the backbone's attention sites
      and heads (``dataset_attention_distances``; GPViT's GP blocks through their groups), decode heads
      left out;
    - ``erf_radius_px``: radius around the centre pixel holding ``mass`` of the effective receptive
      field (``dataset_receptive_field``, ``receptive_field_radius``);
    - ``mIoU``: on those images (``review``).
    """
    model = predictor.model
    backbone_sites = [name for name in predictor.sites() if not name.startswith("decode_head")]
    distances = dataset_attention_distances(model, dataset, count, backbone_sites)
    first_view = next(_test_views(model, dataset, 1))
    return {
        "params_M": count_params(model) / 1e6,
        "GFLOPs": count_gmacs(model, tuple(first_view.shape[-2:])),
        "attention_distance_px": float(torch.cat([d.flatten() for d in distances.values()]).mean()),
        "erf_radius_px": receptive_field_radius(dataset_receptive_field(model, dataset, count), mass=mass),
        "mIoU": review(model, dataset, predictor.eval_cfg, worst=0, count=count).metrics["mIoU"],
    }


def summary_markdown(rows: dict[str, dict[str, float]]) -> str:
    """``family_summary`` rows (name -> figures) as a Markdown table, one row per model."""
    if not rows:
        raise ValueError("rows is empty")
    columns = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, figures in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{figures[column]:.2f}" for column in columns) + " |")
    return "\n".join(lines)
