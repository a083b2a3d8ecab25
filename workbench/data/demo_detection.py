"""The demo detection set: the demo shapes (``workbench.data.demo``) as COCO instances.

Every visible shape is an instance of its class (disc, square, triangle, ring, cross) with its box
and its mask (what later shapes leave of it visible; shapes with fewer than ``MIN_AREA`` visible
pixels are dropped). Images are written as PNG, annotations as COCO json
(``annotations/instances_{train,val}.json``, masks as RLE), so the set reads like COCO and
everything detection does runs offline.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from workbench.cache import cache_dir
from workbench.config import DataConfig
from workbench.data.classes import DEMO, Classes
from workbench.data.coco import CocoDetection, Flip
from workbench.data.demo import render_instances

VERSION = 1
MIN_AREA = 16


def instances_json(images: list[tuple[str, np.ndarray, list[tuple[int, np.ndarray]]]]) -> dict:
    """COCO json of (file name, image, objects) triples, objects as (class, mask)."""
    coco: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": name} for i, name in enumerate(DEMO.names) if i],
    }
    for image_id, (file_name, image, objects) in enumerate(images, start=1):
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
        )
        for kind, mask in objects:
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": kind,
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
    return coco


def demo_detection_root(size: int = 128, train: int = 480, val: int = 96, seed: int = 0) -> Path:
    return cache_dir() / f"demo-detection-v{VERSION}-s{seed}-{size}px-{train}+{val}"


def ensure_demo_detection_set(size: int = 128, train: int = 480, val: int = 96, seed: int = 0) -> Path:
    """The set's root, generated first if it is not in the cache (written atomically)."""
    root = demo_detection_root(size, train, val, seed)
    if (root / "annotations" / "instances_val.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".demo-detection-"))
    try:
        (staging / "annotations").mkdir()
        for split, count, split_seed in (("train", train, seed), ("val", val, seed + 1)):
            rng = np.random.default_rng([VERSION, split_seed, 7])
            (staging / split).mkdir()
            scenes = []
            for i in range(count):
                image, objects = render_instances(rng, size)
                Image.fromarray(image).save(staging / split / f"{i:05d}.png")
                scenes.append((f"{i:05d}.png", image, objects))
            (staging / "annotations" / f"instances_{split}.json").write_text(
                json.dumps(instances_json(scenes))
            )
        try:
            staging.rename(root)
        except OSError:  # another process finished first: keep theirs
            if not (root / "annotations" / "instances_val.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


class DemoDetection(CocoDetection):
    """The generated demo detection set, generated into the cache on first use (``data.demo_*``)."""

    @classmethod
    def split_files(cls, root: Path, split: str) -> tuple[Path, Path]:
        return root / split, root / "annotations" / f"instances_{split}.json"

    @classmethod
    def config_root(cls, cfg: DataConfig) -> Path:
        return ensure_demo_detection_set(cfg.demo_size, cfg.demo_train, cfg.demo_val)

    @classmethod
    def declared_classes(cls, cfg: DataConfig) -> Classes:
        return DEMO

    @classmethod
    def from_config(cls, cfg: DataConfig) -> tuple[DemoDetection, DemoDetection]:
        root = cls.config_root(cfg)
        return cls(*cls.split_files(root, "train"), Flip(cfg.flip)), cls(*cls.split_files(root, "val"))
