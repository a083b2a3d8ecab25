"""COCO-format detection and instance-segmentation data sets, read with pycocotools.

A set is an annotation file (``instances_*.json``) and its image folder. Items are
(image (3, H, W) float in [0, 1], target) with the target in torchvision's form: ``boxes`` (N, 4)
x1 y1 x2 y2 in pixels, ``labels`` (N,) int64 in 1..K (category ids renumbered in sorted order, 0 is
the background), ``masks`` (N, H, W) uint8, ``image_id``. Crowd regions and boxes without area are
left out of training targets, as mmdet does; evaluation reads the annotation file itself.

The paper's training pipeline is resize (1333, 800) with the aspect kept, then a horizontal flip with
probability 0.5. The flip is here; the resize is done by the detector's own transform (torchvision's
``GeneralizedRCNNTransform``, ``min_size`` / ``max_size``), which also maps predictions back to each
image's size, so that evaluation and ``predict`` see boxes in image pixels.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from workbench.config import DataConfig
from workbench.data.classes import Classes, default_palette
from workbench.data.image import read_image

Target = dict[str, torch.Tensor]


def load_coco(annotations: str | Path) -> COCO:
    """A pycocotools index of ``annotations``, without its progress prints; a one-line error if unreadable."""
    path = Path(annotations)
    if not path.is_file():
        raise ValueError(f"annotation file {path} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a COCO annotation file: {error}") from error


class Flip:
    """Horizontal flip with probability ``p`` (image, boxes and masks), then the image as float in [0, 1]."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: torch.Tensor, target: Target, generator: torch.Generator
    ) -> tuple[torch.Tensor, Target]:
        image = image.float() / 255
        if self.p and torch.rand((), generator=generator) < self.p:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target = {**target, "boxes": boxes}
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """Images of any sizes stay a list (the detector pads them), as do their targets."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class CocoDetection(Dataset):
    """Images of ``image_dir`` with the instances of ``annotations`` (COCO json)."""

    task: ClassVar[str] = "detection"
    layout: ClassVar[str] = """coco/
  annotations/instances_train2017.json   annotations/instances_val2017.json
  train2017/000000000009.jpg ...         val2017/000000000139.jpg ..."""
    collate_fn = staticmethod(collate_detection)

    def __init__(
        self,
        image_dir: str | Path,
        annotations: str | Path,
        transform: Callable | None = None,
        masks: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise ValueError(f"image folder {self.image_dir} does not exist. Expected layout:\n{self.layout}")
        self.coco = load_coco(annotations)
        self.image_ids = sorted(self.coco.getImgIds())
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {category: label for label, category in enumerate(self.category_ids, start=1)}
        names = [self.coco.loadCats(category)[0]["name"] for category in self.category_ids]
        self.classes = Classes(("background", *names), default_palette(len(names) + 1))
        self.transform = transform
        self.masks = masks

    def __len__(self) -> int:
        return len(self.image_ids)

    def target(self, index: int, height: int, width: int) -> Target:
        """The training target of item ``index`` (crowd regions and empty boxes left out)."""
        image_id = self.image_ids[index]
        annotations = [
            a
            for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
            if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1
        ]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            "image_id": torch.tensor(image_id),
        }
        if self.masks:
            masks = [self.coco.annToMask(a) for a in annotations]
            target["masks"] = torch.from_numpy(
                np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
            )
        return target

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, Target]:
        index, seed = item if isinstance(item, tuple) else (item, 1_000_003 * item + 12_345)
        info = self.coco.loadImgs(self.image_ids[index])[0]
        path = self.image_dir / info["file_name"]
        pixels = read_image(path)
        if pixels.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"image {path} is {pixels.shape[1]}x{pixels.shape[0]} but its annotations say "
                f"{info['width']}x{info['height']}"
            )
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        target = self.target(index, *pixels.shape[:2])
        transform = self.transform or Flip(0.0)
        return transform(image, target, torch.Generator().manual_seed(seed))

    # How a config builds the splits (the interface of ``workbench.data.datasets``).

    @classmethod
    def split_files(cls, root: Path, split: str) -> tuple[Path, Path]:
        name = {"train": "train2017", "val": "val2017"}[split]
        return root / name, root / "annotations" / f"instances_{name}.json"

    @classmethod
    def config_root(cls, cfg: DataConfig) -> Path:
        if not cfg.root:
            raise ValueError(f"data.root is empty: set it to the COCO root. Expected layout:\n{cls.layout}")
        return Path(cfg.root)

    @classmethod
    def declared_classes(cls, cfg: DataConfig) -> Classes:
        """The categories of the validation annotations (read without opening an image), background first."""
        _, annotations = cls.split_files(cls.config_root(cfg), "val")
        coco = load_coco(annotations)
        names = [coco.loadCats(category)[0]["name"] for category in sorted(coco.getCatIds())]
        return Classes(("background", *names), default_palette(len(names) + 1))

    @classmethod
    def from_config(cls, cfg: DataConfig) -> tuple[CocoDetection, CocoDetection]:
        """(train, val): training with the flip, validation as it is."""
        root = cls.config_root(cfg)
        return cls(*cls.split_files(root, "train"), Flip(cfg.flip)), cls(*cls.split_files(root, "val"))

    @classmethod
    def eval_transform(cls, cfg: DataConfig) -> Any:
        """Detectors resize and normalise inside: the test-time preprocessing is the identity."""
        return None
