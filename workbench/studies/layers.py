"""Every layer's token features, as maps, for any family: the one place the studies read layers.

    features = layer_features(model, images)    # {"blocks.0": (B, C, h, w), ...}, input to output

- SETR (a timm ViT encoder) and GPViT: the backbone's ``forward_intermediates`` (timm's contract), one
  map per block, ``blocks.<i>``: the raw block outputs (no final norm; SETR's prefix tokens dropped).
  Every map has the same width and stride (16 for SETR, 8 for GPViT).
- HLG: its ``forward_intermediates`` gives one map per *stage*; a forward hook on each layer gives one
  per layer, ``stages.<s>.<i>`` (B, C_s, H / 2^(s+2), W / 2^(s+2)), before the stage's norm.

A segmentor's (or detector's) layers are its ``backbone``'s; a timm classifier is its own backbone
(inside a ``Classifier`` wrapper, its ``model``; inside an ``ExplainedViT``, its ``vit``).
"""

from __future__ import annotations

import torch
from torch import nn


def backbone_of(model: nn.Module) -> nn.Module:
    """The module whose layers the studies read: ``model.backbone``, a ``Classifier``'s ``model``, or
    ``model`` itself."""
    if hasattr(model, "backbone"):
        return model.backbone
    if hasattr(model, "vit"):  # an ExplainedViT: the timm ViT it explains
        return model.vit
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model


def _hlg_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    return {
        f"stages.{stage}.{i}": layer
        for stage, layers in enumerate(backbone.stages)
        for i, layer in enumerate(layers)
    }


def layer_features(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token features (B, C, h, w) of every backbone layer of ``model`` for ``images`` (B, C, H, W)
    already on its device and in its dtype (padded as the model needs), named and ordered input to
    output (see the module docstring). Runs under the caller's grad mode and autocast."""
    backbone = backbone_of(model)
    if hasattr(backbone, "stages"):  # HLG: per-stage intermediates only, so per-layer hooks
        features: dict[str, torch.Tensor] = {}
        hooks = [
            layer.register_forward_hook(
                lambda _m, _a, output, name=name: features.__setitem__(name, output.permute(0, 3, 1, 2))
            )
            for name, layer in _hlg_layers(backbone).items()
        ]
        try:
            backbone.forward_intermediates(images, intermediates_only=True)
        finally:
            for hook in hooks:
                hook.remove()
        return features
    if not hasattr(backbone, "forward_intermediates") or not hasattr(backbone, "blocks"):
        raise ValueError(
            f"{type(backbone).__name__} has neither stages (HLG) nor blocks with forward_intermediates "
            "(timm ViTs, GPViT): its layers cannot be read"
        )
    maps = backbone.forward_intermediates(images, indices=len(backbone.blocks), intermediates_only=True)
    return {f"blocks.{i}": feature_map for i, feature_map in enumerate(maps)}
