"""Tiny configurations of the registered models, small enough for 2 CPU cores."""

from __future__ import annotations

from workbench import create_segmentor

TINY_SETR = dict(
    embed_dim=32, depth=4, num_heads=2, img_size=64, head_channels=16, mla_channels=16, mla_head_channels=8
)


def tiny_setr(name: str, num_classes: int = 5, **overrides):
    """A 4-layer, 32-wide version of a SETR variant with its structure otherwise unchanged."""
    decoder = name.split("_")[1]
    layers = (
        dict(decode_layers=(0, 1, 2, 3))
        if decoder == "mla"
        else dict(decode_layers=(3,), aux_layers=(1, 2, 3))
    )
    return create_segmentor(name, num_classes=num_classes, **{**TINY_SETR, **layers, **overrides})


TINY_GPVIT = dict(embed_dim=24, depth=4, group_layers={1: 8, 3: 4})


def tiny_gpvit(num_classes: int = 5, **overrides):
    """A 4-layer, 24-wide GPViT classifier: stripe, GP (8 groups), stripe, GP (4 groups)."""
    from workbench.models.gpvit import gpvit_l1

    return gpvit_l1(num_classes=num_classes, **{**TINY_GPVIT, **overrides})


def tiny_gpvit_segmentor(decoder: str, num_classes: int = 5, **overrides):
    """A tiny GPViT segmentor with dense outputs from all four layers."""
    return create_segmentor(
        f"gpvit_l1_{decoder}",
        num_classes=num_classes,
        **{**TINY_GPVIT, "out_indices": (0, 1, 2, 3), **overrides},
    )


TINY_HLG = dict(dims=(32, 64, 128, 256), heads=(1, 2, 2, 4), depths=(2, 2, 2, 2))


def tiny_hlg(num_classes: int = 5, **overrides):
    """A two-layers-per-stage HLG classifier, 32 to 256 wide."""
    from workbench.models.hlg import hlg_tiny

    return hlg_tiny(num_classes=num_classes, **{**TINY_HLG, **overrides})


def tiny_setr_hlg(num_classes: int = 5, **overrides):
    return create_segmentor("setr_hlg_small", num_classes=num_classes, **{**TINY_HLG, **overrides})
