"""SETR's decoders on any timm plain ViT encoder: DINOv2 (+ registers), DeiT-3, CLIP, EVA-02, MAE ...

    model = workbench.create_segmentor(
        "setr_pup", encoder="vit_base_patch14_reg4_dinov2", num_classes=150,
        encoder_checkpoint="dinov2_vitb14_reg4_pretrain.pth", freeze_encoder=True,
    )

The decoders and heads are SETR's (``workbench.models.setr``: Naive, PUP, MLA, both flavours, auxiliary
heads and losses); only the encoder changes. It is timm's own model, built with
``timm.create_model(encoder, dynamic_img_size=True, num_classes=0, **encoder_kwargs)`` (any input size,
timm resamples the position embedding; inputs need sides that are multiples of the patch size) and
read with ``forward_intermediates(norm=False)``: raw block outputs as (B, C, H/p, W/p) maps with the
prefix tokens (class, distillation, registers) removed, as SETR's decoders read them. Blocks after the
deepest tap, the final norm and the classifier are pruned (they never reach an output).

``encoder_checkpoint=FILE`` loads the encoder's weights as timm reads pretrained files
(``pretrained_cfg_overlay=dict(file=FILE)``), so a release's own layout that timm converts (e.g.
Facebook's DINOv2 files) loads as it is. ``freeze_encoder=True`` is linear / decoder probing: the
encoder's parameters take no gradient (the optimiser's param groups skip them) and it stays in eval
mode (no drop-path, no dropout) whatever ``train()`` asks; ``model.frozen_encoder`` says so.

Taps (0-based blocks), for an encoder of L blocks, unless ``decode_layers`` / ``aux_layers`` name them:
for L = 12 and 24 the paper's (``setr._DEFAULT_LAYERS``); for any other L the paper's 24-layer taps
scaled to L: 1-based layer l of 24 becomes round(l * L / 24) (halves up). So Naive and PUP decode the
last block, MLA four evenly spaced blocks ending with the last (L/4, L/2, 3L/4, L; it needs L >= 4),
and the auxiliary heads sit at the paper's relative depths 10/24, 15/24, 20/24 (+ 24/24 for the
official PUP).

Normalisation: the segmentor's ``pretrained_cfg`` carries the encoder's mean and std (CLIP and EVA-02
differ from ImageNet's), which the Predictor applies; a training config must set ``data.mean`` /
``data.std`` to the same values (on the 0-255 scale).

Explain mode: the encoder's attention sites are ``workbench.models.any_vit``'s (``blocks.i``), so
``workbench.viz.record`` and the Predictor's attention queries work as on the built-in SETR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from workbench.models.any_vit import EXAMPLES, check_plain_vit, create_vit, install_probes, vit_sites
from workbench.models.explain import AttentionSite
from workbench.models.setr import _DEFAULT_LAYERS, DECODERS, SETR

# create_segmentor's bare decoder names, used with encoder=NAME.
DECODER_NAMES = {"setr_naive": "naive", "setr_pup": "pup", "setr_mla": "mla"}


def default_layers(decoder: str, flavour: str, depth: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(decode, aux) 0-based taps for an encoder of ``depth`` blocks; None where SETR has the paper's
    own (12 and 24 blocks). Otherwise the paper's 24-layer taps scaled to ``depth`` (module docstring)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if (decoder, depth) in _DEFAULT_LAYERS:
        return None
    if decoder == "mla" and depth < 4:
        raise ValueError(f"SETR-MLA reads four distinct encoder blocks; the encoder has {depth}")
    decode, aux = _DEFAULT_LAYERS[(decoder, 24)]

    def scaled(layers: Sequence[int]) -> tuple[int, ...]:
        return tuple(max(1, math.floor((layer + 1) * depth / 24 + 0.5)) - 1 for layer in layers)

    return scaled(decode), scaled(aux.get(flavour, ()))


class TimmViTEncoder(nn.Module):
    """A timm plain ViT (``vit``, used as given, pruned after the deepest tap) as SETR's encoder.

    ``forward_dense`` returns the raw outputs of blocks ``out_indices`` as (B, C, H/p, W/p) maps,
    prefix tokens removed. ``frozen``: no gradient, eval mode whatever ``train()`` asks.
    """

    def __init__(self, vit: nn.Module, out_indices: Sequence[int], frozen: bool = False) -> None:
        super().__init__()
        check_plain_vit(vit)
        depth = len(vit.blocks)
        bad = [i for i in out_indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f"encoder layers {bad} do not exist in a {depth}-layer encoder (0-based)")
        self.out_indices = tuple(sorted(set(out_indices)))
        vit.prune_intermediate_layers(list(self.out_indices), prune_norm=True, prune_head=True)
        install_probes(vit)
        self.vit = vit
        self.embed_dim = vit.embed_dim
        self.frozen = frozen
        if frozen:
            vit.requires_grad_(False).eval()

    @property
    def patch_embed(self) -> nn.Module:
        return self.vit.patch_embed

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's feature info of the blocks kept, module names from this encoder."""
        infos = self.vit.feature_info[: len(self.vit.blocks)]
        return [{**info, "module": f"vit.{info['module']}"} for info in infos]

    def train(self, mode: bool = True) -> TimmViTEncoder:
        # A frozen encoder is a fixed feature extractor: its dropout and drop-path stay off.
        return super().train(mode and not self.frozen)

    def forward_dense(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, C, H, W) -> raw block outputs, one (B, embed_dim, H/patch, W/patch) map per tap."""
        return self.vit.forward_intermediates(
            images, indices=list(self.out_indices), norm=False, stop_early=True, intermediates_only=True
        )

    def forward_intermediates(self, images: torch.Tensor, **kwargs: Any) -> Any:
        """timm's ``forward_intermediates`` of the encoder (no final norm: it is pruned)."""
        return self.vit.forward_intermediates(images, **kwargs)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, **kwargs: Any) -> list[int]:
        return self.vit.prune_intermediate_layers(indices, **kwargs)

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    def attention_sites(self) -> dict[str, AttentionSite]:
        return vit_sites(self.vit)


class TimmSETR(SETR):
    """SETR with a timm ViT encoder named ``encoder`` (module docstring).

    ``encoder_kwargs`` go to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``, or a tiny
    ``depth`` / ``embed_dim`` for tests); the other keywords are SETR's head arguments.
    """

    def __init__(
        self,
        *,
        decoder: str,
        encoder: str,
        num_classes: int,
        encoder_checkpoint: str | Path | None = None,
        freeze_encoder: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        flavour: str = "official",
        in_chans: int = 3,
        decode_layers: Sequence[int] | None = None,
        aux_layers: Sequence[int] | None = None,
        aux_heads: bool = True,
        aux_convs: int | None = None,
        head_channels: int = 256,
        mla_channels: int = 256,
        mla_head_channels: int = 128,
        aux_weight: float = 0.4,
    ) -> None:
        vit = create_vit(
            encoder,
            encoder_checkpoint,
            require_dynamic=True,
            in_chans=in_chans,
            num_classes=0,
            **(encoder_kwargs or {}),
        )
        depth = len(vit.blocks)
        scaled = default_layers(decoder, flavour, depth)
        if scaled is not None:
            decode_layers = scaled[0] if decode_layers is None else decode_layers
            aux_layers = scaled[1] if aux_layers is None else aux_layers
        super().__init__(
            decoder=decoder,
            num_classes=num_classes,
            flavour=flavour,
            in_chans=in_chans,
            depth=depth,
            decode_layers=decode_layers,
            aux_layers=aux_layers,
            aux_heads=aux_heads,
            aux_convs=aux_convs,
            head_channels=head_channels,
            mla_channels=mla_channels,
            mla_head_channels=mla_head_channels,
            aux_weight=aux_weight,
            build_encoder=lambda taps: TimmViTEncoder(vit, taps, frozen=freeze_encoder),
        )
        self.encoder_name = encoder
        encoder_cfg = vit.pretrained_cfg or {}
        self.pretrained_cfg = {
            "architecture": f"setr_{decoder}",
            "encoder": encoder,
            "input_size": encoder_cfg.get("input_size", (in_chans, *vit.patch_embed.img_size)),
            "fixed_input_size": False,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "mean": encoder_cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN),
            "std": encoder_cfg.get("std", timm.data.IMAGENET_DEFAULT_STD),
            "num_classes": num_classes,
            "first_conv": "backbone.vit.patch_embed.proj",
            "classifier": "decode_head.classifier",
        }

    @property
    def frozen_encoder(self) -> bool:
        """True where the encoder is frozen (``freeze_encoder=True``): only the decoder trains."""
        return self.backbone.frozen


def create_timm_segmentor(name: str, *, encoder: str | None, num_classes: int, **kwargs: Any) -> TimmSETR:
    """``create_segmentor(name, encoder=...)``: SETR decoder ``name`` (setr_naive, setr_pup, setr_mla)
    on the timm ViT ``encoder``."""
    if name not in DECODER_NAMES:
        raise ValueError(
            f"encoder= goes with a bare SETR decoder name ({', '.join(DECODER_NAMES)}), got {name!r}"
        )
    if encoder is None:
        raise ValueError(f"{name} needs encoder=, the name of a timm plain ViT, e.g. {EXAMPLES}")
    return TimmSETR(decoder=DECODER_NAMES[name], encoder=encoder, num_classes=num_classes, **kwargs)
