"""SETR: SEgmentation TRansformer.

Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
Transformers", CVPR 2021 (arXiv 2012.15840); reference code fudan-zvg/SETR, re-implemented in
mmsegmentation (SETRUPHead, MLANeck, SETRMLAHead).

A plain ViT encoder (16x16 patches, output stride 16, no downsampling, no convolutions) feeds one of
three decoders. The encoder *is* timm's ``VisionTransformer``; decoders read raw block outputs (no
final encoder LayerNorm) and each applies its own LayerNorm.

- Naive: LN -> 1x1 conv-BN-ReLU (256) -> 1x1 conv to K -> bilinear x16.
- PUP:   LN -> 4 x [3x3 conv-BN-ReLU (256), x2 up] with the 1x1 classifier before the last x2.
- MLA:   taps Z^6/12/18/24 (Z^3/6/9/12 for 12 layers) -> LN -> 1x1 conv-BN-ReLU (256) -> top-down
         cumulative sum -> 3x3 conv-BN-ReLU (256) -> per stream two 3x3 conv-BN-ReLU (128) + x4 up
         -> concat (512) -> classifier -> x4 up.

Auxiliary heads (loss weight 0.4, main 1.0): Naive on Z^10/15/20 (Z^3/6/9 for 12 layers), PUP on
Z^10/15/20/24 (Z^5/8/10/12), MLA one 1x1 classifier per aggregated stream.

Paper, Table 2 (Cityscapes val, 19 classes, 768x768 crops; #params as published):

    model              encoder          #params   40k SS   80k SS
    SETR-Naive         T-Large (ViT-L)  305.67M   77.37    77.90
    SETR-MLA           T-Large          310.57M   76.65    77.24
    SETR-PUP           T-Large          318.31M   78.39    79.34
    SETR-Naive-Base    T-Base (ViT-B)    87.69M   75.54    76.25
    SETR-MLA-Base      T-Base            92.59M   75.60    76.87
    SETR-PUP-Base      T-Base            97.64M   76.71    78.02
    (-DeiT variants: the T-Base architecture with DeiT-B distilled weights, same #params)

Parameter-count convention (measured, see ``tests/test_setr.py``): Table 2 prints its #params beside
Cityscapes results, but no Cityscapes build reproduces them (Naive-Base with its auxiliary heads is
88.23M, +0.6%; PUP without them is 309.6M, -2.7%). They are the official code's ADE20K builds: 150
classes, 512x512 (a 32x32 position grid), every auxiliary head included, plus the unused ``conv_seg``
(512 -> K) that each official head inherits from mmseg 0.x. Built that way, our official flavour
gives 305.36 / 317.92 / 310.18 / 87.38 / 97.26 / 92.20M (-0.10 to -0.42%: we do not build the unused
convs); adding them (``official_unused_params``) gives 305,669,296 / 318,307,292 / 310,566,788 /
87,690,672 / 97,641,180 / 92,588,676, the paper's figures to every published digit.

Class token: Naive and PUP carry it through all blocks and the heads drop it before their LayerNorm
(the encoder emits patch tokens only; per-token LayerNorm makes the two orders identical). MLA adds
the position embedding and drops the class token before the first block, so neither the token nor
its position entry can affect the output: MLA encoders are built with ``class_token=False`` (no
parameter without a gradient) and checkpoint loading drops those two tensors.

Other releases: the encoder takes timm's ``patch_size``, ``reg_tokens``, ``no_embed_class`` and
``init_values`` (layer scale), so DINOv2 with registers and DeiT-3 encoders load with their own
features. Registers follow the class token (timm's order), pass through every block (MLA keeps them)
and are dropped with it before the heads; ``num_prefix_tokens`` counts both.

Position embeddings: stored for ``img_size`` and resampled bilinearly (align_corners False, no
antialias) to the grid of each input, as SETR's loader and mmseg do; any input with sides that are
multiples of the patch size (16) works.

Flavours (``flavour=``):

- ``"official"`` (default), fudan-zvg/SETR: conv bias before every BN of the Naive/PUP heads; one
  upsampling to full size after the classifier; PUP with four auxiliary heads (3x3 conv, x4 up);
  MLA with a 3x3 classifier, stream upsampling with align_corners=True, streams shallow-first, and
  bias-free 1x1 auxiliary classifiers.
- ``"mmseg"``, mmsegmentation 1.x (Cityscapes configs): convs without bias; Naive heads upsample x4
  after their conv (output at 1/4, resized to full size); PUP with three auxiliary heads (no Z^24),
  each two [3x3 conv, x4 up] stages; MLA with a 1x1 classifier, align_corners=False, streams
  deep-first (stream 0 is Z^24, as mmseg's neck orders them), FCN auxiliary classifiers with bias.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import Attention, LayerNorm2d
from timm.models import VisionTransformer
from torch import nn

from workbench.models.explain import AttentionSite, Probed, SelfLayout, attend
from workbench.models.layers import ConvBNReLU, check_img_size, resample_pos_embed, upsample
from workbench.models.registry import PaperFigures, register
from workbench.models.segmentor import Segmentor

PATCH_SIZE = 16
DECODERS = ("naive", "pup", "mla")
FLAVOURS = ("official", "mmseg")


# (token grid, prefix tokens) of the encoder's latest embedding in this context (thread or task): the
# blocks that follow read it when probed. Per context, so another thread's forward at another input
# size cannot change the grid a recording sees; nothing is written on the shared blocks.
_TOKENS: contextvars.ContextVar[tuple[tuple[int, int], int]] = contextvars.ContextVar("setr_tokens")


def _self_layout(tokens: int) -> SelfLayout:
    """The layout of a probed attention over ``tokens`` tokens, from this context's latest embedding."""
    grid, num_prefix_tokens = _TOKENS.get(((0, 0), 0))
    if num_prefix_tokens + grid[0] * grid[1] != tokens:
        raise ValueError(
            f"probed attention over {tokens} tokens, but the latest embedding made a {grid[0]}x{grid[1]} "
            f"grid and {num_prefix_tokens} prefix tokens: run the blocks through the encoder's forward"
        )
    return SelfLayout(grid, num_prefix_tokens)


class ProbedAttention(Attention, Probed):
    """timm's ``Attention`` (same weights, same names) computed through the shared ``attend``, so the
    explain mode can probe it. Where its tokens lie comes from the encoder's embedding (``_TOKENS``)."""

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); ``attn_mask`` as timm's, ``is_causal`` is not supported."""
        if is_causal:
            raise ValueError("SETR's encoder attention is bidirectional; is_causal=True is not supported")
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = attend(
            q,
            k,
            v,
            attn_mask,
            probe=self.probe(),
            layout=lambda: _self_layout(tokens),
        )
        x = self.norm(x.transpose(1, 2).reshape(batch, tokens, self.attn_dim))
        return self.proj_drop(self.proj(x))


class SETREncoder(VisionTransformer):
    """timm's VisionTransformer as SETR uses it.

    Returns the raw outputs (no final norm) of blocks ``out_indices`` as (B, C, H/p, W/p) maps, with
    the prefix tokens (class, registers) removed; position embeddings are resampled bilinearly to the
    input's grid. ``reg_tokens``, ``no_embed_class`` and ``init_values`` (layer scale) are timm's, for
    encoders from releases built with them (DINOv2 with registers, DeiT-3).
    """

    def __init__(
        self,
        *,
        out_indices: Sequence[int],
        img_size: int | tuple[int, int] = 768,
        patch_size: int = PATCH_SIZE,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_token: bool = True,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        init_values: float | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        check_img_size(img_size, patch_size)
        bad = [i for i in out_indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f"encoder layers {bad} do not exist in a {depth}-layer encoder (0-based)")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            class_token=class_token,
            reg_tokens=reg_tokens,
            no_embed_class=no_embed_class,
            init_values=init_values,
            final_norm=False,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            attn_layer=ProbedAttention,
        )
        self.out_indices = tuple(sorted(set(out_indices)))
        # Blocks after the deepest tap never influence an output: drop them (and their features).
        self.blocks = self.blocks[: self.out_indices[-1] + 1]
        self.feature_info = self.feature_info[: len(self.blocks)]

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, H, W, C) -> tokens (B, prefix + H*W, C): [class token, registers, grid]
        with position embeddings added as timm's ``VisionTransformer._pos_embed`` adds them."""
        batch, height, width, channels = x.shape
        entries = 0 if self.no_embed_class else self.num_prefix_tokens  # position entries ahead of the grid
        pos_embed = resample_pos_embed(
            self.pos_embed, (height, width), self.patch_embed.grid_size, entries, "bilinear"
        )
        # Every timm entry point (forward_features, forward_intermediates, get_intermediate_layers)
        # embeds here right before its blocks: where the tokens lie, for the explain mode's probes.
        _TOKENS.set(((height, width), self.num_prefix_tokens))
        x = x.reshape(batch, height * width, channels)
        prefix = [
            token.expand(batch, -1, -1) for token in (self.cls_token, self.reg_token) if token is not None
        ]
        if self.no_embed_class:  # DeiT-3, DINOv2-reg, big_vision: positions on the grid only
            x = torch.cat([*prefix, x + pos_embed], dim=1)
        else:  # original ViT, DeiT: one position entry per prefix token too
            x = torch.cat([*prefix, x], dim=1) + pos_embed
        return self.pos_drop(x)

    def forward_dense(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, C, H, W) -> raw block outputs, one (B, embed_dim, H/patch, W/patch) map per tap."""
        return self.forward_intermediates(images, indices=list(self.out_indices), intermediates_only=True)

    def attention_sites(self) -> dict[str, AttentionSite]:
        stride = self.patch_embed.patch_size[0]
        return {f"blocks.{i}": AttentionSite(block.attn, stride) for i, block in enumerate(self.blocks)}


class SETRUpHead(nn.Module):
    """Naive and PUP decoder: token LayerNorm -> [conv-BN-ReLU, x up] per stage -> 1x1 classifier.

    ``up_scales[i]`` is the bilinear factor after stage i (1: none). Official Naive: kernel 1, (1,);
    official PUP: kernel 3, (2, 2, 2, 1), the last x2 follows the classifier (the two commute).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        kernel_size: int,
        up_scales: Sequence[int],
        conv_bias: bool,
        channels: int = 256,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_channels, eps=1e-6)
        widths = [in_channels] + [channels] * len(up_scales)
        self.stages = nn.ModuleList(
            ConvBNReLU(c_in, c_out, kernel_size, bias=conv_bias) for c_in, c_out in itertools.pairwise(widths)
        )
        self.up_scales = tuple(up_scales)
        self.align_corners = align_corners
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) encoder tokens -> (B, K, h * prod(up_scales), w * prod(up_scales)) logits."""
        x = self.norm(tokens)
        for stage, scale in zip(self.stages, self.up_scales, strict=True):
            x = upsample(stage(x), scale, self.align_corners)
        return self.classifier(x)


class MLANeck(nn.Module):
    """Multi-level aggregation: per tap LN -> 1x1 conv-BN-ReLU -> top-down sum -> 3x3 conv-BN-ReLU.

    Input: taps shallow-first. Output streams: shallow-first, or deep-first with ``deep_first``
    (mmseg's order; ``stream_convs[0]`` then processes Z^24).
    """

    def __init__(self, in_channels: int, channels: int = 256, num_levels: int = 4, deep_first: bool = False):
        super().__init__()
        self.norms = nn.ModuleList(LayerNorm2d(in_channels, eps=1e-6) for _ in range(num_levels))
        self.lateral_convs = nn.ModuleList(ConvBNReLU(in_channels, channels, 1) for _ in range(num_levels))
        self.stream_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in range(num_levels))
        self.deep_first = deep_first

    def forward(self, taps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Taps (B, C, h, w) each, shallow-first -> streams (B, channels, h, w)."""
        laterals = [
            conv(norm(tap)) for norm, conv, tap in zip(self.norms, self.lateral_convs, taps, strict=True)
        ]
        # Top-down: each level adds every deeper lateral (p4 = p5 + p4_1x1, p3 = p4 + p3_1x1, ...).
        streams = list(itertools.accumulate(reversed(laterals)))  # deep-first
        if not self.deep_first:
            streams.reverse()
        return [conv(stream) for conv, stream in zip(self.stream_convs, streams, strict=True)]


class MLAHead(nn.Module):
    """MLA decoder: per stream two 3x3 conv-BN-ReLU + x4 up, concatenated, then a classifier."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 256,
        channels: int = 128,
        num_streams: int = 4,
        classifier_kernel: int = 3,
        stream_align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.stream_heads = nn.ModuleList(
            nn.Sequential(ConvBNReLU(in_channels, channels, 3), ConvBNReLU(channels, channels, 3))
            for _ in range(num_streams)
        )
        self.stream_align_corners = stream_align_corners
        self.classifier = nn.Conv2d(
            channels * num_streams, num_classes, classifier_kernel, padding=classifier_kernel // 2
        )

    def forward(self, streams: Sequence[torch.Tensor]) -> torch.Tensor:
        """Streams (B, in_channels, h, w) -> logits (B, K, 4h, 4w)."""
        upsampled = [
            upsample(head(stream), 4, self.stream_align_corners)
            for head, stream in zip(self.stream_heads, streams, strict=True)
        ]
        return self.classifier(torch.cat(upsampled, dim=1))


# Encoder taps (0-based) per (decoder, depth): main head, auxiliary heads per flavour.
_DEFAULT_LAYERS: dict[tuple[str, int], tuple[tuple[int, ...], dict[str, tuple[int, ...]]]] = {
    ("naive", 24): ((23,), {"official": (9, 14, 19), "mmseg": (9, 14, 19)}),
    ("pup", 24): ((23,), {"official": (9, 14, 19, 23), "mmseg": (9, 14, 19)}),
    ("mla", 24): ((5, 11, 17, 23), {}),
    ("naive", 12): ((11,), {"official": (2, 5, 8), "mmseg": (2, 5, 8)}),
    ("pup", 12): ((11,), {"official": (4, 7, 9, 11), "mmseg": (4, 7, 9)}),
    ("mla", 12): ((2, 5, 8, 11), {}),
}

# Naive/PUP head shapes per (decoder, flavour): (kernel, main up_scales, aux up_scales, conv bias).
_UP_HEADS = {
    ("naive", "official"): (1, (1,), (1,), True),
    ("naive", "mmseg"): (1, (4,), (4,), False),
    ("pup", "official"): (3, (2, 2, 2, 1), (4,), True),
    ("pup", "mmseg"): (3, (2, 2, 2, 2), (4, 4), False),
}


class SETR(Segmentor):
    """SETR segmentor: a ViT encoder with a Naive, PUP or MLA decoder and auxiliary heads.

    ``decode_layers`` / ``aux_layers`` (0-based encoder blocks) default to the paper's taps for 24- and
    12-layer encoders; other depths must name them. MLA's auxiliary heads sit on its streams.
    ``aux_convs`` (mmseg flavour) sets the [conv, x4 up] stages of each Naive/PUP auxiliary head, mmseg's
    ``num_convs``: 2 in its ADE20K Naive config; default as its Cityscapes configs (Naive 1, PUP 2).
    ``patch_size``, ``class_token`` (default: Naive and PUP carry one, MLA none), ``reg_tokens``,
    ``no_embed_class`` and ``init_values`` build the encoder as timm's VisionTransformer takes them, for
    other releases than the paper's, e.g. DINOv2 with registers: ``patch_size=14, reg_tokens=4,
    no_embed_class=True, init_values=1e-5``. ``build_encoder`` replaces that ViT with another: called
    with the sorted taps, it returns an encoder with ``SETREncoder``'s contract (any timm ViT:
    ``workbench.models.setr_timm``); ``embed_dim`` and ``patch_size`` are then the encoder's.
    """

    def __init__(
        self,
        *,
        decoder: str,
        num_classes: int,
        flavour: str = "official",
        img_size: int | tuple[int, int] = 768,
        patch_size: int = PATCH_SIZE,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_token: bool | None = None,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        init_values: float | None = None,
        drop_path_rate: float = 0.0,
        decode_layers: Sequence[int] | None = None,
        aux_layers: Sequence[int] | None = None,
        aux_heads: bool = True,
        aux_convs: int | None = None,
        head_channels: int = 256,
        mla_channels: int = 256,
        mla_head_channels: int = 128,
        aux_weight: float = 0.4,
        build_encoder: Callable[[tuple[int, ...]], nn.Module] | None = None,
    ) -> None:
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
        if aux_convs is not None and (flavour != "mmseg" or decoder == "mla" or aux_convs < 1):
            raise ValueError(
                f"aux_convs (conv stages per Naive/PUP auxiliary head, mmseg's num_convs) must be >= 1 and "
                f"needs flavour='mmseg' and decoder 'naive' or 'pup', got {aux_convs!r} ({flavour}, {decoder})"
            )
        if decoder == "mla" and class_token:
            raise ValueError(
                "SETR-MLA drops the class token before its first block, so its encoder has none: "
                "leave class_token unset (False), class_token=True is for Naive and PUP"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        decode_layers, aux_layers = self._resolve_layers(decoder, flavour, depth, decode_layers, aux_layers)
        if not aux_heads:
            aux_layers = ()
        taps = sorted(set(decode_layers) | set(aux_layers))
        if build_encoder is not None:
            encoder = build_encoder(tuple(taps))
            embed_dim, patch_size = encoder.embed_dim, encoder.patch_embed.patch_size[0]
        else:
            encoder = SETREncoder(
                out_indices=taps,
                img_size=img_size,
                patch_size=patch_size,
                in_chans=in_chans,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                class_token=decoder != "mla" if class_token is None else class_token,
                reg_tokens=reg_tokens,
                no_embed_class=no_embed_class,
                init_values=init_values,
                drop_path_rate=drop_path_rate,
            )
        neck = None
        if decoder == "mla":
            neck = MLANeck(embed_dim, mla_channels, len(decode_layers), deep_first=flavour == "mmseg")
            decode_head = MLAHead(
                num_classes,
                in_channels=mla_channels,
                channels=mla_head_channels,
                num_streams=len(decode_layers),
                classifier_kernel=3 if flavour == "official" else 1,
                stream_align_corners=flavour == "official",
            )
            decode_in: int | tuple[int, ...] = tuple(range(len(decode_layers)))
            aux = [nn.Conv2d(mla_channels, num_classes, 1, bias=flavour == "mmseg") for _ in decode_layers]
            aux_in: list[int | tuple[int, ...]] = list(range(len(decode_layers))) if aux_heads else []
            aux = aux if aux_heads else []
        else:
            kernel, main_scales, aux_scales, bias = _UP_HEADS[(decoder, flavour)]
            if aux_convs is not None:  # mmseg's SETRUPHead: each stage is [conv, x4 up]
                aux_scales = (4,) * aux_convs
            up_head = partial(
                SETRUpHead, embed_dim, num_classes, kernel_size=kernel, conv_bias=bias, channels=head_channels
            )
            decode_head = up_head(up_scales=main_scales)
            decode_in = taps.index(decode_layers[0])
            aux = [up_head(up_scales=aux_scales) for _ in aux_layers]
            aux_in = [taps.index(layer) for layer in aux_layers]
        super().__init__(
            backbone=encoder,
            neck=neck,
            decode_head=decode_head,
            decode_in=decode_in,
            aux_heads=aux,
            aux_in=aux_in,
            aux_weight=aux_weight,
            num_classes=num_classes,
            in_chans=in_chans,
            size_divisor=patch_size,
        )
        self.decoder = decoder
        self.flavour = flavour

    @staticmethod
    def _resolve_layers(
        decoder: str,
        flavour: str,
        depth: int,
        decode_layers: Sequence[int] | None,
        aux_layers: Sequence[int] | None,
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        default_decode, default_aux = _DEFAULT_LAYERS.get((decoder, depth), (None, None))
        needs_aux = decoder != "mla"  # MLA's auxiliary heads sit on its streams, not on encoder layers
        if default_decode is None and (decode_layers is None or (needs_aux and aux_layers is None)):
            raise ValueError(
                f"SETR-{decoder} has default layer taps for 24- and 12-layer encoders only; for depth "
                f"{depth} pass decode_layers=(...)" + (" and aux_layers=(...)" if needs_aux else "")
            )
        decode = tuple(decode_layers if decode_layers is not None else default_decode)
        aux = tuple(aux_layers if aux_layers is not None else (default_aux or {}).get(flavour, ()))
        expected = 4 if decoder == "mla" else 1
        if len(decode) != expected:
            raise ValueError(f"SETR-{decoder} takes {expected} decode layer(s), got decode_layers={decode}")
        if decoder == "mla" and aux_layers:
            raise ValueError("SETR-MLA's auxiliary heads sit on its streams; aux_layers must not be given")
        return decode, aux


# The three encoders of the paper; DeiT-B distilled has the ViT-B architecture (its distillation
# token is dropped when its weights are loaded), hence the same parameter counts.
_ENCODERS = {
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "deit_base": dict(embed_dim=768, depth=12, num_heads=12),
}


def _create(decoder: str, encoder: str, kwargs: dict[str, Any]) -> SETR:
    args = dict(decoder=decoder, num_classes=19, img_size=768, **_ENCODERS[encoder])
    return SETR(**{**args, **kwargs})


_COUNT_NOTE = (
    "SETR Table 2 prints its #params beside Cityscapes results, but they are the official code's "
    "ADE20K builds (150 classes, 512x512) with every auxiliary head. The remaining -0.1 to -0.4% is "
    "exactly the unused conv_seg (512 -> K) that each official head carries and the workbench does "
    "not build; with it added, all six counts equal the paper's to the published digit."
)


def _paper(params_m: float) -> PaperFigures:
    return PaperFigures(
        "SETR Table 2",
        input_size=768,
        num_classes=19,
        params_m=params_m,
        build_kwargs=dict(img_size=768),
        params_kwargs=dict(num_classes=150, img_size=512),
        note=_COUNT_NOTE,
    )


def official_unused_params(model: SETR) -> int:
    """Parameters of the unused ``conv_seg`` (512 -> K, with bias) in every head of the official code.

    The official heads inherit them from mmseg 0.x's BaseDecodeHead; checkpoints carry them, the
    forward pass never reads them, the paper's #params counts them.
    """
    return (1 + len(model.aux_heads)) * (512 * model.num_classes + model.num_classes)


_setr = partial(register, family="SETR", task="segmentation", feature_indices=3)
_TINY = dict(
    embed_dim=32, depth=4, num_heads=2, img_size=64, head_channels=16, mla_channels=16, mla_head_channels=8
)
_TINY_UP = dict(_TINY, decode_layers=(3,), aux_layers=(1, 2, 3))
_TINY_MLA = dict(_TINY, decode_layers=(0, 1, 2, 3))


@_setr(paper=_paper(305.67), tiny=_TINY_UP)
def setr_naive_vit_large(**kwargs: Any) -> SETR:
    return _create("naive", "vit_large", kwargs)


@_setr(paper=_paper(318.31), tiny=_TINY_UP)
def setr_pup_vit_large(**kwargs: Any) -> SETR:
    return _create("pup", "vit_large", kwargs)


@_setr(paper=_paper(310.57), tiny=_TINY_MLA)
def setr_mla_vit_large(**kwargs: Any) -> SETR:
    return _create("mla", "vit_large", kwargs)


@_setr(paper=_paper(87.69), tiny=_TINY_UP)
def setr_naive_vit_base(**kwargs: Any) -> SETR:
    return _create("naive", "vit_base", kwargs)


@_setr(paper=_paper(97.64), tiny=_TINY_UP)
def setr_pup_vit_base(**kwargs: Any) -> SETR:
    return _create("pup", "vit_base", kwargs)


@_setr(paper=_paper(92.59), tiny=_TINY_MLA)
def setr_mla_vit_base(**kwargs: Any) -> SETR:
    return _create("mla", "vit_base", kwargs)


@_setr(paper=_paper(87.69), tiny=_TINY_UP)
def setr_naive_deit_base(**kwargs: Any) -> SETR:
    return _create("naive", "deit_base", kwargs)


@_setr(paper=_paper(97.64), tiny=_TINY_UP)
def setr_pup_deit_base(**kwargs: Any) -> SETR:
    return _create("pup", "deit_base", kwargs)


@_setr(paper=_paper(92.59), tiny=_TINY_MLA)
def setr_mla_deit_base(**kwargs: Any) -> SETR:
    return _create("mla", "deit_base", kwargs)
