"""Data sets, the generated demo set and joint transforms."""

from __future__ import annotations

from workbench.config import DataConfig
from workbench.data.datasets import (
    ADE20K,
    DATASETS,
    Cityscapes,
    Classes,
    FolderDataset,
    ImageFolderClassification,
    PascalContext,
    SegmentationDataset,
)
from workbench.data.demo import ensure_demo_set
from workbench.data.transforms import EvalTransform, TrainTransform


def build_datasets(cfg: DataConfig, seed: int = 0) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val) sets of ``cfg`` with the recipe's training and test transforms."""
    if cfg.dataset == "demo":
        root, cls = ensure_demo_set(cfg.demo_size, cfg.demo_train, cfg.demo_val, seed=0), FolderDataset
    elif cfg.dataset in DATASETS:
        if not cfg.root:
            raise ValueError(
                f"data.root is empty: set it to the {cfg.dataset} root. Expected layout:\n{DATASETS[cfg.dataset].layout}"
            )
        root, cls = cfg.root, DATASETS[cfg.dataset]
    else:
        raise ValueError(f"unknown data set {cfg.dataset!r}; expected demo or one of {sorted(DATASETS)}")
    train_tf = TrainTransform(
        cfg.crop_size,
        tuple(cfg.scale),
        tuple(cfg.ratio_range),
        cfg.cat_max_ratio,
        cfg.flip,
        cfg.photometric,
        cfg.mean,
        cfg.std,
    )
    val_tf = EvalTransform(tuple(cfg.scale) if cfg.dataset != "demo" else None, cfg.mean, cfg.std)
    return cls(root, "train", train_tf), cls(root, "val", val_tf)


__all__ = [
    "ADE20K",
    "Cityscapes",
    "Classes",
    "EvalTransform",
    "FolderDataset",
    "ImageFolderClassification",
    "PascalContext",
    "SegmentationDataset",
    "TrainTransform",
    "build_datasets",
    "ensure_demo_set",
]
