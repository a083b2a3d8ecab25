"""The demo set: generated, seeded, versioned scenes of shapes, written once to the cache.

Every object gets a random colour and a random texture (solid, stripes, checks or noise), drawn from
the same distributions as the textured background, so colour and texture say nothing about the
class: a model has to learn the *shapes* (disc, square, triangle, ring, cross). Objects vary in
size and rotation and occlude each other (painted back to front).

The set is laid out as a folder data set (``images/<split>``, ``masks/<split>``, ``classes.txt``)
and read with ``FolderDataset``. Its directory name carries the generator version, the seed and the
sizes, so a change of any of them makes a new set rather than reusing a stale one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from workbench.cache import cache_dir
from workbench.data.classes import DEMO, write_classes

VERSION = 1
CLASSES = DEMO.names


def _texture(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A (size, size, 3) uint8 texture: two random colours mixed by a random pattern."""
    colours = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # solid
        mix = np.zeros((size, size), np.float32)
    elif kind == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        mix = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 2:  # checks
        cell = rng.integers(3, 12)
        mix = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:  # noise
        mix = rng.random((size, size), dtype=np.float32)
    return (colours[0] * (1 - mix[..., None]) + colours[1] * mix[..., None]).astype(np.uint8)


def _shape_mask(kind: int, rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean mask of one object of class ``kind`` (1..5) at a random place, scale and rotation."""
    radius = rng.uniform(0.08, 0.25) * size
    cy, cx = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == 1:  # disc
        return u**2 + v**2 <= radius**2
    if kind == 2:  # square
        half = radius / np.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == 3:  # triangle: inside three half-planes
        corners = [angle + k * 2 * np.pi / 3 for k in range(3)]
        inside = np.ones_like(u, dtype=bool)
        for a in corners:
            normal = np.array([np.cos(a + np.pi / 3), np.sin(a + np.pi / 3)])
            inside &= dx * normal[0] + dy * normal[1] <= radius * 0.5
        return inside
    if kind == 4:  # ring
        distance = np.sqrt(u**2 + v**2)
        return (distance <= radius) & (distance >= radius * rng.uniform(0.45, 0.7))
    arm = radius * rng.uniform(0.25, 0.4)  # cross
    return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | ((np.abs(v) <= radius) & (np.abs(u) <= arm))


def render_instances(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image (size, size, 3) uint8 and its objects back to front: (class, visible mask (size,
    size) bool), each mask without what later objects cover (it may end up empty)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _texture(rng, size, yy, xx)
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(rng.integers(2, 6)):
        kind = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(kind, rng, size, yy, xx)
        image[mask] = _texture(rng, size, yy, xx)[mask]
        objects = [(other, visible & ~mask) for other, visible in objects] + [(kind, mask)]
    noise = rng.normal(0, 6, size=image.shape)  # sensor noise, so no edge is perfectly clean
    return np.clip(image + noise, 0, 255).astype(np.uint8), objects


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its label map (size, size) uint8."""
    image, objects = render_instances(rng, size)
    labels = np.zeros((size, size), np.uint8)
    for kind, visible in objects:
        labels[visible] = kind
    return image, labels


def demo_root(size: int = 128, train: int = 480, val: int = 96, seed: int = 0) -> Path:
    return cache_dir() / f"demo-v{VERSION}-s{seed}-{size}px-{train}+{val}"


def ensure_demo_set(size: int = 128, train: int = 480, val: int = 96, seed: int = 0) -> Path:
    """The demo set's root, generated first if it is not in the cache (written atomically)."""
    root = demo_root(size, train, val, seed)
    if (root / "classes.txt").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".demo-"))
    try:
        for split, count, split_seed in (("train", train, seed), ("val", val, seed + 1)):
            rng = np.random.default_rng([VERSION, split_seed])
            (staging / "images" / split).mkdir(parents=True)
            (staging / "masks" / split).mkdir(parents=True)
            for i in range(count):
                image, labels = render_scene(rng, size)
                Image.fromarray(image).save(staging / "images" / split / f"{i:05d}.png")
                Image.fromarray(labels).save(staging / "masks" / split / f"{i:05d}.png")
        write_classes(DEMO, staging / "classes.txt")
        try:
            staging.rename(root)
        except OSError:  # another process finished first: keep theirs
            if not (root / "classes.txt").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
