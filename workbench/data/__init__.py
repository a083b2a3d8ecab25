"""Data sets (each declares its classes and how a config builds its splits), the demo set, transforms."""

from __future__ import annotations

from workbench.data.classes import Classes, default_palette, read_classes
from workbench.data.datasets import (
    ADE20K,
    DATASETS,
    Cityscapes,
    DemoDataset,
    FolderDataset,
    ImageFolderClassification,
    PascalContext,
    SegmentationDataset,
    dataset_class,
)
from workbench.data.demo import ensure_demo_set
from workbench.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "ADE20K",
    "DATASETS",
    "Cityscapes",
    "Classes",
    "DemoDataset",
    "EvalTransform",
    "FolderDataset",
    "ImageFolderClassification",
    "PascalContext",
    "SegmentationDataset",
    "TrainTransform",
    "dataset_class",
    "default_palette",
    "ensure_demo_set",
    "read_classes",
]
