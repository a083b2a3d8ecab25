"""Patch features as colours: the principal components of a ViT's patch tokens, DINOv2's figure.

    rgb, foreground = pca_rgb(features)                    # features (C, rows, cols) of one image
    rgb, foreground = pca_rgb(features, foreground=0.0)    # first component thresholded first

Oquab et al. 2023 ("DINOv2", Fig. 1 and its code's recipe): the first principal component of the
patch features separates object from background; thresholding it keeps the foreground, and a second
PCA over the foreground patches only gives its three components as red, green and blue, each
min-max scaled to [0, 1]. Without ``foreground`` the PCA runs over every patch.
"""

from __future__ import annotations

import torch


def principal_components(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """Tokens (N, C) -> their projections (N, count) on the ``count`` leading principal directions,
    each direction's sign fixed so that its largest loading is positive (deterministic colours)."""
    if tokens.shape[0] < 2:
        raise ValueError(f"PCA needs at least two tokens, got {tokens.shape[0]}")
    centred = tokens.float() - tokens.float().mean(0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)  # (min(N, C), C)
    directions = directions[:count]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(1, keepdim=True)))
    return centred @ (directions * signs).T


def _unit_range(values: torch.Tensor) -> torch.Tensor:
    """Each column min-max scaled to [0, 1] (a constant column becomes 0)."""
    low, high = values.min(0).values, values.max(0).values
    return (values - low) / (high - low).clamp_min(1e-12)


def pca_rgb(features: torch.Tensor, foreground: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (C, rows, cols) -> (colours (rows, cols, 3) in [0, 1], foreground mask (rows, cols)).

    ``foreground``: a threshold on the first component scaled to [0, 1] (e.g. 0.5); patches below it
    are background, black in the picture, and the colours are the PCA of the foreground patches
    alone. None: every patch is foreground and the colours are the first three components.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (C, rows, cols), got {tuple(features.shape)}")
    channels, rows, cols = features.shape
    tokens = features.reshape(channels, rows * cols).T  # (N, C)
    keep = torch.ones(rows * cols, dtype=torch.bool, device=features.device)
    if foreground is not None:
        if not 0.0 <= foreground <= 1.0:
            raise ValueError(
                f"foreground must be a threshold in [0, 1] on the first component, got {foreground}"
            )
        keep = _unit_range(principal_components(tokens, 1))[:, 0] >= foreground
        if keep.sum() < 2:
            raise ValueError(f"only {int(keep.sum())} patch(es) above foreground={foreground}: lower it")
    colours = torch.zeros(rows * cols, 3, device=features.device)
    components = principal_components(tokens[keep], 3)
    colours[keep, : components.shape[1]] = _unit_range(components)
    return colours.reshape(rows, cols, 3), keep.reshape(rows, cols)
