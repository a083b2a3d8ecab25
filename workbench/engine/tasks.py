"""What differs between training a segmentor and a classifier, behind one ``Task`` interface.

The training loop asks its task how to check the data before the first step, how to evaluate, which
figures to log and which one ranks checkpoints (``best_metric``, higher is better). Data sets come
from ``workbench.build`` (each data set declares its task); losses from the model's ``losses``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from workbench.config import Config
from workbench.data import SegmentationDataset
from workbench.engine.classification import evaluate_classifier
from workbench.engine.detection import Detection
from workbench.engine.evaluate import evaluate
from workbench.precision import run_precision


class Task(Protocol):
    name: str
    metric_names: tuple[str, ...]  # summary figures ``evaluate`` may return (logged as val/<name>)
    best_metric: str  # ranks checkpoints; higher is better

    def check(self, cfg: Config, val_set: Any) -> None:
        """Raise a ValueError for what would otherwise fail only after training."""

    def evaluate(
        self,
        cfg: Config,
        model: nn.Module,
        val_set: Any,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
    ) -> dict[str, Any]: ...


class Segmentation:
    name = "segmentation"
    metric_names = ("mIoU", "aAcc", "mAcc")
    best_metric = "mIoU"

    def check(self, cfg: Config, val_set: Any) -> None:
        """Every validation label map holds only known classes (``eval`` settings are checked with
        the rest of the config). A data set of another kind is checked as it is evaluated."""
        if isinstance(val_set, SegmentationDataset):
            for index in range(len(val_set)):
                val_set.load_labels(index)

    def evaluate(
        self,
        cfg: Config,
        model: nn.Module,
        val_set: Any,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
    ) -> dict[str, Any]:
        """mIoU, aAcc, mAcc and per-class IoU / Acc (percent)."""
        precision = run_precision(cfg.amp, device).name
        return evaluate(model, val_set, cfg.eval, model.num_classes, device, rank, world, progress, precision)


class Classification:
    name = "classification"
    metric_names = ("top1", "top5")
    best_metric = "top1"

    def check(self, cfg: Config, val_set: Any) -> None:
        """Nothing to check: the class folders were listed when the set was built."""

    def evaluate(
        self,
        cfg: Config,
        model: nn.Module,
        val_set: Any,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Top-1 and top-5 accuracy (percent)."""
        return evaluate_classifier(model, val_set, device, rank, world, progress)


TASKS: dict[str, Task] = {task.name: task for task in (Segmentation(), Classification(), Detection())}


def task_of(cfg: Config) -> Task:
    """The task object of ``cfg.task``."""
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    return TASKS[cfg.task]
