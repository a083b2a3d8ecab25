"""Evaluation: confusion-matrix metrics, whole / sliding-window / multi-scale + flip inference, Predictor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from workbench.config import EvalConfig
from workbench.data.datasets import Classes, default_palette
from workbench.data.transforms import IGNORE_INDEX, normalize
from workbench.engine.distributed import all_reduce_sum, is_main


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


def _forward_padded(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits at the input size, padding (and cropping back) to the model's size divisor and minimum."""
    divisor, minimum = getattr(model, "size_divisor", 1), getattr(model, "min_size", 1)
    height, width = images.shape[-2:]
    target_h = max(-(-height // divisor) * divisor, minimum)
    target_w = max(-(-width // divisor) * divisor, minimum)
    padded = F.pad(images, (0, target_w - width, 0, target_h - height))
    return model(padded)[..., :height, :width]


def slide_logits(
    model: nn.Module, images: torch.Tensor, window: int, stride: int, num_classes: int
) -> torch.Tensor:
    """Windows on a stride grid, the last one shifted to touch the border; overlapping logits averaged."""
    batch, _, height, width = images.shape
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    logits = images.new_zeros(batch, num_classes, height, width)
    count = images.new_zeros(1, 1, height, width)
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * stride + window, height), min(c * stride + window, width)
            top, left = max(bottom - window, 0), max(right - window, 0)
            logits[:, :, top:bottom, left:right] += _forward_padded(
                model, images[:, :, top:bottom, left:right]
            )
            count[:, :, top:bottom, left:right] += 1
    return logits / count


def predict_probs(model: nn.Module, images: torch.Tensor, cfg: EvalConfig, num_classes: int) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W), averaged over ``cfg.scales`` and (optionally) flips.

    With ``cfg.min_short_side`` no scaled short side goes below it (SETR's rule for fixed-size ViTs).
    """
    height, width = images.shape[-2:]
    total = images.new_zeros(images.shape[0], num_classes, height, width)
    views = 0
    for ratio in cfg.scales:
        factor = max(ratio, cfg.min_short_side / min(height, width)) if cfg.min_short_side else ratio
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        scaled = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        for flip in (False, True) if cfg.flip else (False,):
            view = scaled.flip(-1) if flip else scaled
            if cfg.mode == "slide":
                logits = slide_logits(model, view, cfg.window, cfg.stride, num_classes)
            elif cfg.mode == "whole":
                logits = _forward_padded(model, view)
            else:
                raise ValueError(f"eval.mode must be 'whole' or 'slide', got {cfg.mode!r}")
            logits = logits.flip(-1) if flip else logits
            total += F.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            ).softmax(1)
            views += 1
    return total / views


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    cfg: EvalConfig,
    num_classes: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> dict:
    """Metrics of ``model`` on ``dataset`` (items: normalised image, labels); shards across processes."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, device)
    indices = range(rank, len(dataset), world)
    for index in tqdm(indices, desc="eval", disable=not (progress and is_main()), leave=False):
        image, labels = dataset[index]
        probs = predict_probs(model, image[None].to(device), cfg, num_classes)
        if probs.shape[-2:] != labels.shape:
            probs = F.interpolate(probs, size=labels.shape, mode="bilinear", align_corners=False)
        matrix.update(probs[0].argmax(0), labels.to(device))
    model.train(was_training)
    return matrix.reduce().metrics(getattr(dataset, "classes", None) and dataset.classes.names)


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) class indices
    probs: torch.Tensor  # (K, H, W)
    palette: tuple[tuple[int, int, int], ...] = field(repr=False)

    def colorize(self) -> np.ndarray:
        """(H, W, 3) uint8 colour map of the labels."""
        return np.asarray(self.palette, dtype=np.uint8)[self.labels]

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The colour map blended over ``image`` (H, W, 3) uint8."""
        return (image.astype(np.float32) * (1 - alpha) + self.colorize() * alpha).astype(np.uint8)


class Predictor:
    """Single-image inference for notebooks, the CLI and the app: uint8 RGB in, labels out.

    predictor = Predictor.from_checkpoint("runs/demo")
    prediction = predictor(np.asarray(Image.open("photo.jpg")))
    """

    def __init__(
        self,
        model: nn.Module,
        mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375),
        eval_cfg: EvalConfig | None = None,
        classes: Classes | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.mean, self.std = mean, std
        self.eval_cfg = eval_cfg or EvalConfig()
        self.num_classes = model.num_classes
        if classes is None or len(classes) != self.num_classes:  # e.g. a converted release checkpoint
            classes = Classes(
                tuple(str(i) for i in range(self.num_classes)), default_palette(self.num_classes)
            )
        self.classes = classes

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, ema: bool = False) -> Predictor:
        from workbench.engine.checkpoint import checkpoint_config, load_weights
        from workbench.engine.train import build_model, dataset_classes

        cfg = checkpoint_config(path)
        model = build_model(cfg)
        load_weights(model, path, ema=ema)
        return cls(model, cfg.data.mean, cfg.data.std, cfg.eval, dataset_classes(cfg), device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray | Image.Image) -> Prediction:
        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 image of shape (H, W, 3), got {array.shape} {array.dtype}"
            )
        tensor = normalize(torch.from_numpy(array.copy()).permute(2, 0, 1), self.mean, self.std)
        probs = predict_probs(self.model, tensor[None].to(self.device), self.eval_cfg, self.num_classes)[0]
        return Prediction(probs.argmax(0).cpu().numpy(), probs.cpu(), self.classes.palette)
