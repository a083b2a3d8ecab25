"""Looking at a trained model over a data set: per-image scores and the worst images, GPViT's group
purity, and the figures that compare model families.

    result = review(model, val_set, cfg.eval)         # metrics, confusion matrix, the worst images
    dataset_group_purity(predictor, val_set, count=32)  # GP block -> (purity, NMI), averaged
    family_summary(predictor, val_set)                  # params, GFLOPs, attention distance, ERF, mIoU

Each reads the data set's images through its own ``load`` (uint8 image, labels) and its test view
through ``dataset[index]`` (the evaluation's preprocessing), so the numbers are the evaluation's.
"""

from __future__ import annotations

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


def _predict(
    model: nn.Module, dataset: Any, index: int, eval_cfg: EvalConfig, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation's prediction (H, W) of image ``index`` at its labels' size, and the labels."""
    inputs, labels = dataset[index]
    probs = predict_probs(model, inputs[None].to(device), eval_cfg, model.num_classes)
    probs = F.interpolate(probs, size=labels.shape, mode="bilinear", align_corners=False)
    return probs[0].argmax(0).cpu(), labels


@torch.no_grad()
def review(
    model: nn.Module,
    dataset: Any,
    eval_cfg: EvalConfig | None = None,
    worst: int = 4,
    count: int | None = None,
    device: torch.device | str = "cpu",
) -> Review:
    """Evaluate ``model`` image by image on the first ``count`` images of ``dataset`` (all by default):
    the summed metrics and confusion matrix (those of ``evaluate``), each image's mIoU, and the
    ``worst`` images kept with their pictures. The model runs in eval mode (its mode is restored)."""
    eval_cfg = eval_cfg or EvalConfig()
    num_classes = model.num_classes
    names = getattr(getattr(dataset, "classes", None), "names", None)
    was_training = model.training
    model.eval()
    total = ConfusionMatrix(num_classes)
    scores, kept = [], []
    try:
        for index in _limit(dataset, count):
            prediction, labels = _predict(model, dataset, index, eval_cfg, device)
            total.update(prediction, labels)
            scores.append(ImageScore(index, _image_miou(prediction, labels, num_classes)))
        for score in sorted(scores, key=lambda s: s.miou)[:worst]:  # predicted again: nothing is stored
            prediction, labels = _predict(model, dataset, score.index, eval_cfg, device)
            image, _ = dataset.load(score.index)
            pictures = (image.permute(1, 2, 0).numpy(), labels.numpy(), prediction.numpy())
            kept.append(ImageScore(score.index, score.miou, *pictures))
    finally:
        model.train(was_training)
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


def family_summary(predictor: Predictor, dataset: Any, count: int = 8, mass: float = 0.5) -> dict[str, float]:
    """What ``07_compare_families`` sets side by side for one model, over the first ``count`` images:

    - ``params_M``: learnable parameters (millions); ``GFLOPs``: multiply-adds of one forward at the
      data set's test input size;
    - ``attention_distance_px``: mean attention distance (pixels) over the backbone's attention sites
      and heads (``attention_distances``; GPViT's GP blocks through their groups), decode heads left out;
    - ``erf_radius_px``: radius around the centre pixel holding ``mass`` of the effective receptive
      field (``effective_receptive_field`` over the images, ``receptive_field_radius``);
    - ``mIoU``: on those images (``review``).
    """
    model = predictor.model.eval()
    indices = _limit(dataset, count)
    images = pad_for(model, torch.stack([dataset[index][0] for index in indices]))
    backbone_sites = [name for name in predictor.sites() if not name.startswith("decode_head")]
    distances = attention_distances(model, images, backbone_sites)
    field_map = effective_receptive_field(model, images)
    return {
        "params_M": count_params(model) / 1e6,
        "GFLOPs": count_gmacs(model, tuple(images.shape[-2:])),
        "attention_distance_px": float(torch.cat([d.flatten() for d in distances.values()]).mean()),
        "erf_radius_px": receptive_field_radius(field_map, mass=mass),
        "mIoU": review(model, dataset, predictor.eval_cfg, worst=0, count=len(indices)).metrics["mIoU"],
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
