"""Colouring label maps and blending them over images: what the CLI, the notebooks and the app show."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Label map (H, W) of class indices -> (H, W, 3) uint8 colours from ``palette`` (one RGB per class)."""
    table = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(f"labels must lie in [0, {len(table)}) for a {len(table)}-colour palette")
    return table[labels]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``colours`` (H, W, 3) uint8 blended over ``image`` (H, W, 3) uint8 with weight ``alpha``."""
    if image.shape != colours.shape:
        raise ValueError(f"image {image.shape} and colours {colours.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    blended = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    return blended.round().astype(np.uint8)
