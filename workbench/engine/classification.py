"""Image classification with the same training loop: a timm classifier behind the segmentors' interface."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from tqdm import tqdm

from workbench.config import Config, DataConfig
from workbench.data.datasets import ImageFolderClassification
from workbench.engine.distributed import all_reduce_sum, is_main


class Classifier(nn.Module):
    """Wraps a timm classifier: ``losses`` applies mixup / cutmix (timm) and label smoothing."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        label_smoothing: float = 0.1,
    ):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mix = (
            Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            if mixup or cutmix
            else None
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def losses(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy on (mixed) images (B, 3, H, W) and class indices (B,)."""
        if self.mix is not None and self.training:
            images, soft_targets = self.mix(images, targets)
            loss = SoftTargetCrossEntropy()(self.model(images), soft_targets)
        else:
            loss = F.cross_entropy(self.model(images), targets, label_smoothing=self.label_smoothing)
        return {"loss_main": loss, "loss": loss}


def classification_datasets(cfg: DataConfig) -> tuple[ImageFolderClassification, ImageFolderClassification]:
    """ImageNet-style folders with timm's training (RandAugment, erasing) and test transforms."""
    if not cfg.root:
        raise ValueError("data.root is empty: set it to a folder with train/<class>/... and val/<class>/...")
    mean, std = tuple(m / 255 for m in cfg.mean), tuple(s / 255 for s in cfg.std)
    train_tf = create_transform(
        cfg.crop_size,
        is_training=True,
        auto_augment=cfg.auto_augment or None,
        re_prob=cfg.random_erase,
        interpolation="bicubic",
        mean=mean,
        std=std,
    )
    val_tf = create_transform(cfg.crop_size, is_training=False, interpolation="bicubic", mean=mean, std=std)
    return ImageFolderClassification(cfg.root, "train", train_tf), ImageFolderClassification(
        cfg.root, "val", val_tf
    )


def classification_classes(cfg: Config) -> tuple[str, ...]:
    folder = Path(cfg.data.root) / "train"
    if not folder.is_dir():
        raise ValueError(
            f"{folder} does not exist. Expected layout:\nroot/{{train,val}}/<class name>/<image>"
        )
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, dataset, device, rank: int = 0, world: int = 1, progress: bool = True
) -> dict:
    """Top-1 and top-5 accuracy (percent), summed across processes."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, samples
    for index in tqdm(
        range(rank, len(dataset), world), desc="eval", disable=not (progress and is_main()), leave=False
    ):
        image, label = dataset[index]
        top = model(image[None].to(device)).topk(min(5, model.num_classes), dim=1).indices[0].tolist()
        counts += torch.tensor([top[0] == label, label in top, 1.0], dtype=torch.float64, device=device)
    model.train(was_training)
    top1, top5, total = all_reduce_sum(counts).tolist()
    return {"top1": 100 * top1 / max(total, 1), "top5": 100 * top5 / max(total, 1)}
