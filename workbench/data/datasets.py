"""Segmentation data sets in their standard layouts, and ImageNet-style class folders.

Each segmentation set is a list of (image, label map) file pairs read on demand. Labels are remapped
to train ids with 255 as the ignore label. A missing root shows the expected layout; an unreadable
image, an image/label size mismatch or a label outside the class range names the file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from workbench.data.transforms import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a ValueError naming the file if it cannot be decoded fully."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def read_labels(path: Path) -> np.ndarray:
    """(H, W) integer label map (palette or grey PNG); a ValueError naming the file if unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"label map {path} has mode {image.mode}; expected a single-channel PNG")
            return np.asarray(image).astype(np.int64)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"cannot read label map {path}: {error}") from error


@dataclass(frozen=True)
class Classes:
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.names)


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours (the PASCAL VOC bit-interleaving scheme)."""
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return tuple(colours)


class SegmentationDataset(Dataset):
    """(image, label map) pairs; ``transform(image, labels, rng)`` gives the training or test view.

    Items are addressed by an index, or by ``(index, seed)`` (the training sampler's), which seeds
    the sample's random augmentation.
    """

    layout = ""  # the expected layout, shown when the root is missing

    def __init__(
        self, pairs: Sequence[tuple[Path, Path]], classes: Classes, transform: Callable | None = None
    ):
        self.pairs = list(pairs)
        self.classes = classes
        self.transform = transform

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
        image, labels = read_image(image_path), self.remap(read_labels(label_path))
        if image.shape[:2] != labels.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label map {label_path} "
                f"is {labels.shape[1]}x{labels.shape[0]}"
            )
        bad = (labels >= len(self.classes)) & (labels != IGNORE_INDEX) | (labels < 0)
        if bad.any():
            values = sorted(set(np.unique(labels[bad]).tolist()))[:10]
            raise ValueError(
                f"label map {label_path} holds values {values} outside 0..{len(self.classes) - 1} "
                f"(and the ignore label {IGNORE_INDEX})"
            )
        return torch.from_numpy(image.copy()).permute(2, 0, 1), torch.from_numpy(labels)

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


ADE20K_CLASSES = 150


class ADE20K(SegmentationDataset):
    """ADE20K, ADEChallengeData2016 layout; 150 classes, label 0 ("other") ignored (reduce_zero_label)."""

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
        names = tuple(f"class_{i}" for i in range(ADE20K_CLASSES))
        super().__init__(pairs, Classes(names, default_palette(ADE20K_CLASSES)), transform)

    def remap(self, labels: np.ndarray) -> np.ndarray:
        return np.where(labels == 0, IGNORE_INDEX, labels - 1)


CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations as train ids (``*_gtFine_labelTrainIds.png``); 19 classes."""

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
        super().__init__(pairs, Classes(CITYSCAPES_NAMES, CITYSCAPES_PALETTE), transform)


PASCAL_CONTEXT_CLASSES = 59


class PascalContext(SegmentationDataset):
    """Pascal Context, 59 classes, in the layout of mmseg's converter; label 0 (background) ignored."""

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
        super().__init__(
            pairs,
            Classes(
                tuple(f"class_{i}" for i in range(PASCAL_CONTEXT_CLASSES)),
                default_palette(PASCAL_CONTEXT_CLASSES),
            ),
            transform,
        )

    def remap(self, labels: np.ndarray) -> np.ndarray:
        return np.where(labels == 0, IGNORE_INDEX, labels - 1)


def read_classes(path: Path) -> Classes:
    """``classes.txt``: one class per line, ``name`` or ``name r g b``."""
    names, palette = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        has_colour = len(parts) >= 4 and all(p.isdigit() for p in parts[-3:])
        names.append(" ".join(parts[:-3]) if has_colour else " ".join(parts))
        palette.append(tuple(int(p) for p in parts[-3:]) if has_colour else None)
    if not names:
        raise ValueError(f"{path} lists no classes")
    fallback = default_palette(len(names))
    return Classes(tuple(names), tuple(c or fallback[i] for i, c in enumerate(palette)))


class FolderDataset(SegmentationDataset):
    """Any images with single-channel PNG label maps of the same stem, and a classes file."""

    layout = """root/
  classes.txt                 one class per line: 'name' or 'name r g b' (train id = line number - 1)
  images/{train,val}/<name>.{png,jpg}
  masks/{train,val}/<name>.png   train ids, 255 = ignore"""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        root = self.check_root(root, "classes.txt", f"images/{split}", f"masks/{split}")
        classes = read_classes(root / "classes.txt")
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
        super().__init__(pairs, classes, transform)


class ImageFolderClassification(Dataset):
    """ImageNet-style class folders: ``root/<split>/<class>/<image>``; classes sorted by name."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        folder = Path(root) / split
        if not folder.is_dir():
            raise ValueError(
                f"{folder} does not exist. Expected layout:\nroot/{{train,val}}/<class name>/<image>"
            )
        self.class_names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        if not self.class_names:
            raise ValueError(f"{folder} has no class folders")
        self.samples = [
            (path, label)
            for label, name in enumerate(self.class_names)
            for path in sorted((folder / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        self.transform = transform

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


DATASETS = {
    "ade20k": ADE20K,
    "cityscapes": Cityscapes,
    "pascal_context": PascalContext,
    "folder": FolderDataset,
}
