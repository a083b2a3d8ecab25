"""Segmentation data sets in their standard layouts, the demo set, and ImageNet-style class folders.

Each segmentation set is a list of (image, label map) file pairs read on demand. Labels are remapped
to train ids with 255 as the ignore label. A missing root shows the expected layout; an unreadable
image, an image/label size mismatch or a label outside the class range names the file.

A data set is one class: it declares its task, its classes (``declared_classes``: without reading
images) and how a ``DataConfig`` builds its training and validation splits (``from_config``).
``DATASETS`` maps ``data.dataset`` names to these classes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from workbench.config import DataConfig
from workbench.data import classes as tables
from workbench.data.classes import Classes, default_palette, read_classes
from workbench.data.coco import CocoDetection
from workbench.data.demo import ensure_demo_set
from workbench.data.demo_detection import DemoDetection
from workbench.data.image import read_image
from workbench.data.transforms import IGNORE_INDEX, EvalTransform, TrainTransform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_labels(path: Path) -> np.ndarray:
    """(H, W) integer label map (palette or grey PNG); a ValueError naming the file if unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"label map {path} has mode {image.mode}; expected a single-channel PNG")
            return np.asarray(image).astype(np.int64)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"cannot read label map {path}: {error}") from error


class SegmentationDataset(Dataset):
    """(image, label map) pairs; ``transform(image, labels, rng)`` gives the training or test view.

    Items are addressed by an index, or by ``(index, seed)`` (the training sampler's), which seeds
    the sample's random augmentation. Subclasses with a fixed class list set ``classes``.
    """

    task: ClassVar[str] = "segmentation"
    layout: ClassVar[str] = ""  # the expected layout, shown when the root is missing
    classes: Classes
    # Validation images are resized to the recipe's (long, short) scale, as mmseg's test pipelines do.
    resize_for_test: ClassVar[bool] = True

    def __init__(self, pairs: Sequence[tuple[Path, Path]], transform: Callable | None = None):
        self.pairs = list(pairs)
        self.transform = transform

    @classmethod
    def declared_classes(cls, cfg: DataConfig) -> Classes:
        """The data set's classes, read without opening an image."""
        return cls.classes

    @classmethod
    def config_root(cls, cfg: DataConfig) -> Path:
        if not cfg.root:
            raise ValueError(
                f"data.root is empty: set it to the {cls.__name__} root. Expected layout:\n{cls.layout}"
            )
        return Path(cfg.root)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
        """(train, val) splits with the recipe's training and test transforms."""
        root = cls.config_root(cfg)
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
        return cls(root, "train", train_tf), cls(root, "val", cls.eval_transform(cfg))

    @classmethod
    def eval_transform(cls, cfg: DataConfig) -> EvalTransform:
        """The test-time preprocessing (test scale, mean, std): evaluation's and the Predictor's."""
        return EvalTransform(tuple(cfg.scale) if cls.resize_for_test else None, cfg.mean, cfg.std)

    @classmethod
    def check_root(cls, root: str | Path, *required: str) -> Path:
        root = Path(root)
        missing = [part for part in required if not (root / part).exists()]
        if not root.is_dir() or missing:
            what = f"{root} does not exist" if not root.is_dir() else f"{root} lacks {', '.join(missing)}"
            raise ValueError(f"{cls.__name__}: {what}. Expected layout:\n{cls.layout}")
        return root

    def __len__(self) -> int:
        return len(self.pairs)

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Raw label values -> train ids (255 ignored)."""
        return labels

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (3, H, W) uint8 and train-id labels (H, W) int64, checked."""
        image_path, label_path = self.pairs[index]
        image, labels = read_image(image_path), self.load_labels(index)
        if image.shape[:2] != labels.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label map {label_path} "
                f"is {labels.shape[1]}x{labels.shape[0]}"
            )
        return torch.from_numpy(image.copy()).permute(2, 0, 1), torch.from_numpy(labels)

    def load_labels(self, index: int) -> np.ndarray:
        """Train-id labels (H, W) int64 of item ``index``; a ValueError naming the file if a value is
        outside the classes (what training checks on the validation split before its first step)."""
        label_path = self.pairs[index][1]
        labels = self.remap(read_labels(label_path))
        bad = (labels >= len(self.classes)) & (labels != IGNORE_INDEX) | (labels < 0)
        if bad.any():
            values = sorted(set(np.unique(labels[bad]).tolist()))[:10]
            raise ValueError(
                f"label map {label_path} holds values {values} outside 0..{len(self.classes) - 1} "
                f"(and the ignore label {IGNORE_INDEX})"
            )
        return labels

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        image, labels = self.load(index)
        if self.transform is None:
            return image, labels
        return self.transform(image, labels, torch.Generator().manual_seed(seed))


def index_seed(index: int) -> int:
    return 1_000_003 * index + 12_345


def _pairs(
    images: Path, labels: Path, image_glob: str, label_for: Callable[[Path], Path]
) -> list[tuple[Path, Path]]:
    pairs = []
    for image in sorted(images.glob(image_glob)):
        label = label_for(image)
        if not label.is_file():
            raise ValueError(f"image {image} has no label map: expected {label}")
        pairs.append((image, label))
    if not pairs:
        raise ValueError(f"no images matching {image_glob!r} under {images}")
    return pairs


class ADE20K(SegmentationDataset):
    """ADE20K, ADEChallengeData2016 layout; 150 classes, label 0 ("other") ignored (reduce_zero_label)."""

    classes = tables.ADE20K
    layout = """ADEChallengeData2016/
  images/training/ADE_train_00000001.jpg ...   images/validation/ADE_val_00000001.jpg ...
  annotations/training/ADE_train_00000001.png ...   annotations/validation/..."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        folder = {"train": "training", "val": "validation"}[split]
        root = self.check_root(root, f"images/{folder}", f"annotations/{folder}")
        pairs = _pairs(
            root / "images" / folder,
            root / "annotations" / folder,
            "*.jpg",
            lambda p: root / "annotations" / folder / f"{p.stem}.png",
        )
        super().__init__(pairs, transform)

    def remap(self, labels: np.ndarray) -> np.ndarray:
        return np.where(labels == 0, IGNORE_INDEX, labels - 1)


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations as train ids (``*_gtFine_labelTrainIds.png``); 19 classes."""

    classes = tables.CITYSCAPES
    layout = """cityscapes/
  leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
  gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png   (cityscapesscripts createTrainIdLabelImgs)"""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        root = self.check_root(root, f"leftImg8bit/{split}", f"gtFine/{split}")

        def label_for(image: Path) -> Path:
            name = image.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            return root / "gtFine" / split / image.parent.name / name

        pairs = _pairs(
            root / "leftImg8bit" / split, root / "gtFine" / split, "*/*_leftImg8bit.png", label_for
        )
        super().__init__(pairs, transform)


class PascalContext(SegmentationDataset):
    """Pascal Context, 59 classes, in the layout of mmseg's converter; label 0 (background) ignored."""

    classes = tables.PASCAL_CONTEXT
    layout = """VOCdevkit/VOC2010/
  JPEGImages/<id>.jpg
  SegmentationClassContext/<id>.png        (tools/dataset_converters/pascal_context.py)
  ImageSets/SegmentationContext/{train,val}.txt"""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        listing = f"ImageSets/SegmentationContext/{split}.txt"
        root = self.check_root(root, "JPEGImages", "SegmentationClassContext", listing)
        ids = [line.strip() for line in (root / listing).read_text().splitlines() if line.strip()]
        pairs = []
        for name in ids:
            image, label = (
                root / "JPEGImages" / f"{name}.jpg",
                root / "SegmentationClassContext" / f"{name}.png",
            )
            if not image.is_file() or not label.is_file():
                raise ValueError(f"{listing} lists {name!r} but {image} or {label} is missing")
            pairs.append((image, label))
        super().__init__(pairs, transform)

    def remap(self, labels: np.ndarray) -> np.ndarray:
        return np.where(labels == 0, IGNORE_INDEX, labels - 1)


class FolderDataset(SegmentationDataset):
    """Any images with single-channel PNG label maps of the same stem, and a classes file."""

    layout = """root/
  classes.txt                 one class per line: 'name' or 'name r g b' (train id = line number - 1)
  images/{train,val}/<name>.{png,jpg}
  masks/{train,val}/<name>.png   train ids, 255 = ignore"""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        root = self.check_root(root, "classes.txt", f"images/{split}", f"masks/{split}")
        self.classes = read_classes(root / "classes.txt")
        images = [
            p for p in sorted((root / "images" / split).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
        ]
        pairs = []
        for image in images:
            label = root / "masks" / split / f"{image.stem}.png"
            if not label.is_file():
                raise ValueError(f"image {image} has no label map: expected {label}")
            pairs.append((image, label))
        if not pairs:
            raise ValueError(f"no images under {root / 'images' / split}")
        super().__init__(pairs, transform)

    @classmethod
    def declared_classes(cls, cfg: DataConfig) -> Classes:
        return read_classes(cls.check_root(cls.config_root(cfg), "classes.txt") / "classes.txt")


class DemoDataset(FolderDataset):
    """The generated demo set (``workbench.data.demo``), generated into the cache on first use."""

    classes = tables.DEMO
    resize_for_test = False  # the generated images are already at the training size

    @classmethod
    def declared_classes(cls, cfg: DataConfig) -> Classes:
        return cls.classes

    @classmethod
    def config_root(cls, cfg: DataConfig) -> Path:
        return ensure_demo_set(cfg.demo_size, cfg.demo_train, cfg.demo_val, seed=0)


class ImageFolderClassification(Dataset):
    """ImageNet-style class folders: ``root/<split>/<class>/<image>``; classes sorted by name."""

    task: ClassVar[str] = "classification"
    layout: ClassVar[str] = "root/{train,val}/<class name>/<image>"

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        folder = Path(root) / split
        self.classes = self.classes_in(folder)
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes.names)
            for path in sorted((folder / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        self.transform = transform

    @classmethod
    def classes_in(cls, folder: Path) -> Classes:
        """One class per sub-folder of ``folder``, sorted by name."""
        if not folder.is_dir():
            raise ValueError(f"{folder} does not exist. Expected layout:\n{cls.layout}")
        names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        if not names:
            raise ValueError(f"{folder} has no class folders. Expected layout:\n{cls.layout}")
        return Classes(names, default_palette(len(names)))

    @classmethod
    def declared_classes(cls, cfg: DataConfig) -> Classes:
        if not cfg.root:
            raise ValueError(f"data.root is empty: set it to a folder laid out as {cls.layout}")
        return cls.classes_in(Path(cfg.root) / "train")

    @classmethod
    def from_config(cls, cfg: DataConfig) -> tuple[ImageFolderClassification, ImageFolderClassification]:
        """(train, val) with timm's training (RandAugment, random erasing) and test transforms."""
        from timm.data import create_transform

        if not cfg.root:
            raise ValueError(f"data.root is empty: set it to a folder laid out as {cls.layout}")
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
        val_tf = create_transform(
            cfg.crop_size, is_training=False, interpolation="bicubic", mean=mean, std=std
        )
        return cls(cfg.root, "train", train_tf), cls(cfg.root, "val", val_tf)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]):
        """A PIL image through ``transform`` (timm's), and its class index.

        The transform's random choices are seeded by the item's seed (python, numpy and torch RNGs,
        restored afterwards), so augmentation is a function of the sample as for segmentation.
        """
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        path, label = self.samples[index]
        image = Image.fromarray(read_image(path))
        if self.transform is None:
            return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), label
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.transform(image)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        return image, label


# ``data.dataset`` names; adding a data set means adding its class here.
DATASETS: dict[str, type[SegmentationDataset] | type[ImageFolderClassification] | type[CocoDetection]] = {
    "demo": DemoDataset,
    "ade20k": ADE20K,
    "cityscapes": Cityscapes,
    "pascal_context": PascalContext,
    "folder": FolderDataset,
    "imagefolder": ImageFolderClassification,
    "coco": CocoDetection,
    "demo_detection": DemoDetection,
}


def dataset_class(name: str) -> type[SegmentationDataset] | type[ImageFolderClassification]:
    """The data-set class registered as ``name`` (``data.dataset``)."""
    if name not in DATASETS:
        raise ValueError(f"data.dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]
