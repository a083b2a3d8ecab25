"""Evaluation: confusion-matrix metrics, whole / sliding-window / multi-scale + flip inference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from workbench.config import EvalConfig
from workbench.data.transforms import IGNORE_INDEX
from workbench.engine.distributed import all_reduce_sum, is_main
from workbench.models.explain import View, seen_as
from workbench.models.layers import pad_for
from workbench.models.segmentor import Segmentor
from workbench.precision import Precision, autocast, resolve_precision


class ConfusionMatrix:
    """Counts (ground truth, prediction) pairs, ignoring the ignore label; summed across processes."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """prediction, target: integer maps of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
            )
        valid = target != IGNORE_INDEX
        index = target[valid].long() * self.num_classes + prediction[valid].long().to(target.device)
        self.matrix += (
            torch.bincount(index, minlength=self.num_classes**2)
            .reshape(self.matrix.shape)
            .to(self.matrix.device)
        )

    def reduce(self) -> ConfusionMatrix:
        all_reduce_sum(self.matrix)
        return self

    def metrics(self, class_names: tuple[str, ...] | None = None) -> dict:
        """mIoU, aAcc, mAcc (percent) and per-class IoU / Acc. Classes absent from both ground truth
        and predictions have no IoU (NaN) and do not enter the means (mmseg's convention)."""
        m = self.matrix.double()
        true_positive, gt, predicted = m.diag(), m.sum(1), m.sum(0)
        iou = true_positive / (gt + predicted - true_positive)
        accuracy = true_positive / gt
        names = class_names or tuple(str(i) for i in range(self.num_classes))
        return {
            "mIoU": float(np.nanmean(iou.cpu().numpy()) * 100),
            "aAcc": float(true_positive.sum() / m.sum().clamp(min=1) * 100),
            "mAcc": float(np.nanmean(accuracy.cpu().numpy()) * 100),
            "IoU": {name: float(v * 100) for name, v in zip(names, iou.tolist(), strict=True)},
            "Acc": {name: float(v * 100) for name, v in zip(names, accuracy.tolist(), strict=True)},
        }


def forward_padded(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits at the input size, padding (and cropping back) to the model's size divisor and minimum."""
    height, width = images.shape[-2:]
    return model(pad_for(model, images))[..., :height, :width]


def decode_padded(
    model: nn.Module, images: torch.Tensor, forward: nn.Module | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """What ``forward_padded`` resizes and crops: the logits of ``images`` padded to the model's size
    divisor and minimum at the decode head's resolution (a ``Segmentor``'s ``resize_logits=False``;
    other models give their forward's), and the padded size. ``forward`` runs the model instead of it
    (its compiled module, ``workbench.fast_path``)."""
    padded = pad_for(model, images)
    forward = model if forward is None else forward
    logits = forward(padded, resize_logits=False) if isinstance(model, Segmentor) else forward(padded)
    return logits, (padded.shape[-2], padded.shape[-1])


def slide_logits(
    model: nn.Module,
    images: torch.Tensor,
    window: int,
    stride: int,
    num_classes: int,
    view: View | None = None,
) -> torch.Tensor:
    """Windows on a stride grid, the last one shifted to touch the border; overlapping logits averaged.

    Each window's forward is tagged with ``view`` and its offset (for the explain mode)."""
    batch, _, height, width = images.shape
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    logits = images.new_zeros(batch, num_classes, height, width, dtype=torch.float32)
    count = images.new_zeros(1, 1, height, width, dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * stride + window, height), min(c * stride + window, width)
            top, left = max(bottom - window, 0), max(right - window, 0)
            window_view = replace(
                view or View((height, width)), offset=(top, left), crop=(bottom - top, right - left)
            )
            with seen_as(window_view):
                logits[:, :, top:bottom, left:right] += forward_padded(
                    model, images[:, :, top:bottom, left:right]
                )
            count[:, :, top:bottom, left:right] += 1
    return logits.div_(count)  # in place: K x H x W floats are the largest tensor here


def predict_probs(model: nn.Module, images: torch.Tensor, cfg: EvalConfig, num_classes: int) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W), averaged over ``cfg.scales`` and (optionally) flips.

    With ``cfg.min_short_side`` no scaled short side goes below it (SETR's rule for fixed-size ViTs).
    """
    height, width = images.shape[-2:]
    total, views = None, 0  # one view (the common case) allocates no sum: its softmax is the answer
    for ratio in cfg.scales:
        factor = max(ratio, cfg.min_short_side / min(height, width)) if cfg.min_short_side else ratio
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        scaled = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        for flip in (False, True) if cfg.flip else (False,):
            view = View(size, flip)  # how this pass sees the image, for the explain mode
            seen = scaled.flip(-1) if flip else scaled
            if cfg.mode == "slide":
                logits = slide_logits(model, seen, cfg.window, cfg.stride, num_classes, view)
            elif cfg.mode == "whole":
                with seen_as(view):
                    logits = forward_padded(model, seen)
            else:
                raise ValueError(f"eval.mode must be 'whole' or 'slide', got {cfg.mode!r}")
            logits = (logits.flip(-1) if flip else logits).float()  # averaged and softmaxed in fp32
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            del logits  # before the next view's forward: K x H x W floats each
            total = probs if total is None else total.add_(probs)
            views += 1
    return total.div_(views) if views > 1 else total


@torch.no_grad()
def _predicted_labels(
    model: nn.Module,
    image: torch.Tensor,
    size: tuple[int, ...],
    cfg: EvalConfig,
    num_classes: int,
    precision: Precision,
    device: torch.device | str,
) -> torch.Tensor:
    """The label map (H, W) the model predicts for one normalised image (3, h, w), at ``size``."""
    with autocast(precision, device):
        probs = predict_probs(model, image[None].to(device), cfg, num_classes)
    if probs.shape[-2:] != tuple(size):
        probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
    return probs[0].argmax(0)


def evaluate(
    model: nn.Module,
    dataset,
    cfg: EvalConfig,
    num_classes: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    precision: str = "fp32",
) -> dict:
    """Metrics of ``model`` on ``dataset`` (items: normalised image, labels); shards across processes.
    ``precision``: "auto" | "fp32" | "bf16" | "fp16" (``workbench.precision``)."""
    chosen = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, device)
    indices = range(rank, len(dataset), world)
    for index in tqdm(indices, desc="eval", disable=not (progress and is_main()), leave=False):
        image, labels = dataset[index]
        matrix.update(
            _predicted_labels(model, image, labels.shape, cfg, num_classes, chosen, device), labels.to(device)
        )
    model.train(was_training)
    return matrix.reduce().metrics(getattr(dataset, "classes", None) and dataset.classes.names)


@torch.no_grad()
def precision_agreement(
    model: nn.Module,
    dataset,
    cfg: EvalConfig,
    num_classes: int,
    precision: str = "bf16",
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict:
    """How far ``precision``'s predictions move from fp32's on ``dataset`` (items: normalised image,
    labels): ``agreement``, the percentage of labelled pixels given the same class by both, and the
    mIoU of each (``mIoU_fp32``, ``mIoU_<precision>``) with their difference ``delta_mIoU``."""
    chosen = resolve_precision(precision, device)
    reference = resolve_precision("fp32", device)
    was_training = model.training
    model.eval()
    matrices = {name: ConfusionMatrix(num_classes, device) for name in ("fp32", chosen.name)}
    same = counted = 0
    for index in tqdm(range(len(dataset)), desc=f"fp32 vs {chosen.name}", disable=not progress, leave=False):
        image, labels = dataset[index]
        labels = labels.to(device)
        predictions = {}
        for name, setting in (("fp32", reference), (chosen.name, chosen)):
            predictions[name] = _predicted_labels(
                model, image, labels.shape, cfg, num_classes, setting, device
            )
            matrices[name].update(predictions[name], labels)
        valid = labels != IGNORE_INDEX
        same += int((predictions["fp32"] == predictions[chosen.name])[valid].sum())
        counted += int(valid.sum())
    model.train(was_training)
    miou = {name: matrix.metrics()["mIoU"] for name, matrix in matrices.items()}
    return {
        "precision": chosen.name,
        "agreement": 100.0 * same / max(counted, 1),
        "mIoU_fp32": miou["fp32"],
        f"mIoU_{chosen.name}": miou[chosen.name],
        "delta_mIoU": miou[chosen.name] - miou["fp32"],
        "pixels": counted,
    }
