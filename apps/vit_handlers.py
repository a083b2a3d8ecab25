"""What the app shows for a timm plain ViT (``workbench.inference.ViTPredictor``): a backbone or a
classifier, no segmentation head. The main picture is the PCA of the patch features as colours (the
DINOv2 figure), the table the classifier's top five; clicks, heads and rollout are the segmentors'
(``apps.handlers``); the class token's own maps, per head or their mean; Chefer et al.'s relevance for
the top class in place of region attribution. Plain functions over a ``Loaded`` model and a kept
``Entry``; no Gradio here.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from apps.settings import MEAN
from apps.store import Entry, Loaded, parse_timm_key
from workbench.models.any_vit import FAMILIES
from workbench.viz.explorers import heat_overlay
from workbench.viz.overlay import overlay

NO_LABELS = (
    "the model is a timm ViT without a segmentation head: it gives no label map (/attention and "
    "/attention_png answer for it)"
)
TOP_HEADERS = ["class", "index", "probability %"]
RANDOM_NOTICE = (
    "**Random weights: no checkpoint was given.** Its maps show an untrained network's structure, not "
    "what a trained one sees. Start the app with `--timm-model NAME --checkpoint FILE` (the released "
    "weights file), or give `timm:NAME@FILE` in the model box."
)


def has_class_token(loaded: Loaded) -> bool:
    """Whether the ViT has a class token (SigLIP's and some CLIP towers' have none)."""
    return getattr(loaded.predictor.model.vit, "cls_token", None) is not None


def model_card(loaded: Loaded) -> str:
    """The model card (Markdown): the timm name, its classifier, where its weights came from (random
    weights said first and loud)."""
    name, weights, options = parse_timm_key(loaded.key)
    predictor = loaded.predictor
    classifier = (
        f"a classifier of {predictor.num_classes} classes" if predictor.num_classes else "no classifier"
    )
    token = "a class token" if has_class_token(loaded) else "no class token"
    prefix = predictor.model.num_prefix_tokens - has_class_token(loaded)
    extra = (
        f", {prefix} other prefix tokens (registers, distillation) left out of every map" if prefix else ""
    )
    lines = [
        f"**model** {name} (timm ViT: no segmentation head) · {classifier} · {token}{extra} · "
        f"**input** short side {predictor.size} px, patch {predictor.model.patch_size}",
        f"**weights** {weights or predictor.note or 'timm release'}"
        + (f" · options {options}" if options else ""),
    ]
    if not weights and predictor.note:
        lines.insert(0, RANDOM_NOTICE)
    lines.append(
        "The picture is the PCA of the patch features as colours; click it for a pixel's attention. "
        f"Supported families: {', '.join(family.name for family in FAMILIES if family.supported)}."
    )
    return "\n\n".join(lines)


def picture(entry: Entry, alpha: float, foreground: float | None) -> np.ndarray:
    """The PCA of the patch features as colours (``ViTSession.pca_rgb``) blended over the image with
    weight ``alpha`` (1: the DINOv2 figure); ``foreground`` a threshold on the first component (None or
    0: every patch)."""
    colours = entry.session.pca_rgb(foreground or None)
    return overlay(entry.decoded.pixels, colours, alpha)


def top_rows(entry: Entry) -> list[list] | None:
    """The classifier's top five: class, index, probability %; None without a classifier."""
    top = entry.session.prediction.top
    return [[name, index, round(100 * prob, 2)] for index, name, prob in top] if top else None


def notice(entry: Entry, foreground: float | None) -> str:
    height, width = entry.decoded.pixels.shape[:2]
    rows, cols = entry.session.prediction.features.shape[-2:]
    parts = [f"{width}x{height} pixels", f"PCA of the {rows}x{cols} patch features as RGB"]
    if foreground:
        parts[-1] += f" (background below {foreground:.2f} on the first component in black)"
    if entry.session.prediction.top:
        name, prob = entry.session.prediction.top[0][1:]
        parts.append(f"top class {name!r} ({100 * prob:.1f}%)")
    return " — ".join(parts + list(entry.decoded.notes))


def class_attention(entry: Entry, loaded: Loaded, layer: str, head: str) -> torch.Tensor:
    """Where the class token looks in ``layer``: (H, W) on the image, one head's map or the mean."""
    if not has_class_token(loaded):
        raise ValueError("the model has no class token: click a pixel for its attention instead")
    maps = entry.session.class_attention(layer)  # (heads, H, W)
    if head in ("", MEAN):
        return maps.mean(0)
    if not 0 <= int(head) < maps.shape[0]:
        raise ValueError(f"head must be in [0, {maps.shape[0]}) for {layer!r}, got {head}")
    return maps[int(head)]


def class_attention_view(entry: Entry, loaded: Loaded, layer: str, head: str) -> tuple[np.ndarray, str]:
    """The class token's attention over the image and its caption."""
    heat = heat_overlay(entry.decoded.pixels, class_attention(entry, loaded, layer, head))
    return heat, f"class token: {layer}, head {head or MEAN}"


def relevance_view(entry: Entry, loaded: Loaded) -> tuple[np.ndarray, str]:
    """Chefer et al.'s relevance of the patches to the top class's logit, over the image, and a
    caption. One forward and backward, under the model's lock."""
    top = entry.session.prediction.top
    if not top or not has_class_token(loaded):
        raise ValueError(
            "a ViT has no region attribution; its relevance needs a classifier and a class token, "
            "and this one has " + ("no classifier" if not top else "no class token")
        )
    index, name, prob = top[0]
    start = time.perf_counter()
    with loaded.lock:
        heat = entry.session.relevance(index)
    text = (
        f"relevance (Chefer et al.) of the top class {name!r} ({100 * prob:.1f}%), "
        f"{time.perf_counter() - start:.1f} s"
    )
    return heat_overlay(entry.decoded.pixels, heat, cmap="inferno", alpha=0.6), text
