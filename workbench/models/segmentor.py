"""Segmentor: a backbone, an optional neck, a decode head and auxiliary heads.

``model(images)`` returns the decode head's logits resized to the input resolution;
``model.losses(images, targets)`` returns the training losses (main + weighted auxiliary).
The auxiliary heads run only inside ``losses``: inference pays nothing for them.

timm's feature contract (``feature_info``, ``forward_intermediates``, ``prune_intermediate_layers``,
hence ``timm.create_model(name, features_only=True)``) is the encoder's: the backbone's maps (SETR's
blocks at stride 16, GPViT's layers at stride 8, HLG's four stages), as the backbone defines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.layers import check_dtype, check_images, resize

HeadInput = int | tuple[int, ...]


def _take(features: Sequence[torch.Tensor], index: HeadInput) -> torch.Tensor | list[torch.Tensor]:
    return features[index] if isinstance(index, int) else [features[i] for i in index]


class Segmentor(nn.Module):
    """Encoder-decoder segmentor.

    Args:
        backbone: its ``forward_dense`` maps images (B, in_chans, H, W) to a list of NCHW feature maps.
        decode_head: maps its input (one map, or a list for ``decode_in`` tuples) to logits (B, K, h, w).
        decode_in: which backbone (or neck) outputs feed the decode head.
        aux_heads: auxiliary heads, each fed ``features[aux_in[i]]``; their losses weigh ``aux_weight``.
        neck: optional module mapping the backbone's list of features to another list.
        size_divisor: input sides must be multiples of this (the patch size for plain ViTs).
        min_size: input sides must be at least this many pixels.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        decode_head: nn.Module,
        decode_in: HeadInput,
        num_classes: int,
        in_chans: int,
        size_divisor: int,
        aux_heads: Sequence[nn.Module] = (),
        aux_in: Sequence[HeadInput] = (),
        aux_weight: float = 0.4,
        neck: nn.Module | None = None,
        min_size: int = 1,
        ignore_index: int = 255,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if len(aux_heads) != len(aux_in):
            raise ValueError(f"{len(aux_heads)} auxiliary heads but {len(aux_in)} auxiliary inputs")
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.aux_heads = nn.ModuleList(aux_heads)
        self.decode_in = decode_in
        self.aux_in = tuple(aux_in)
        self.aux_weight = aux_weight
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.size_divisor = size_divisor
        self.min_size = max(min_size, size_divisor)
        self.ignore_index = ignore_index
        self.align_corners = align_corners

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a ValueError naming what was expected if ``images`` cannot go through the model."""
        check_images(images, self.in_chans, self.min_size, self.size_divisor)
        check_dtype(images, next(self.parameters()))

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone (and neck) features: a list of NCHW maps."""
        self.check_images(images)
        features = self.backbone.forward_dense(images)
        return self.neck(features) if self.neck is not None else features

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The backbone's ``feature_info`` (channels, stride, module), module names from the segmentor."""
        return [{**info, "module": f"backbone.{info['module']}"} for info in self.backbone.feature_info]

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` of the backbone, with its semantics: maps ``indices`` of
        ``feature_info`` (None: all; n: the last n; a list: those), through the backbone's final norm
        if ``norm``, none after the last taken run with ``stop_early``. Returns the maps, or (the
        backbone's final features, maps). Neck and heads do not run."""
        self.check_images(images)
        return self.backbone.forward_intermediates(
            images,
            indices=indices,
            norm=norm,
            stop_early=stop_early,
            output_fmt=output_fmt,
            intermediates_only=intermediates_only,
        )

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's pruning: the backbone drops what follows the last of ``indices`` (and its final norm
        if ``prune_norm``); ``prune_head`` drops the neck, decode and auxiliary heads, which read maps
        that may be gone, leaving an encoder for ``forward_intermediates``. Returns the indices kept."""
        kept = self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=True)
        if prune_head:
            self.neck, self.decode_head, self.aux_heads, self.aux_in = (
                None,
                nn.Identity(),
                nn.ModuleList(),
                (),
            )
            self.num_classes = 0
        return kept

    def forward(self, images: torch.Tensor, resize_logits: bool = True) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the resolution of ``images`` (B, in_chans, H, W).
        ``resize_logits=False`` gives the decode head's logits at its own resolution (GPViT 1/8, HLG
        and SETR-MLA 1/4, SETR-PUP 1/2, SETR-Naive 1/16), before the bilinear resize to the input:
        what the Predictor takes its labels from without the K x H x W resize."""
        features = self.extract_features(images)
        logits = self.decode_head(_take(features, self.decode_in))
        return resize(logits, images.shape[-2:], self.align_corners) if resize_logits else logits

    def losses(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses for images (B, C, H, W) and integer label maps ``targets`` (B, H, W).

        Cross-entropy with ``ignore_index`` on logits resized to the label size. Returns
        ``loss_main``, ``loss_aux{i}`` (unweighted) and ``loss``, the total to back-propagate:
        ``loss_main + aux_weight * sum(loss_aux{i})``.
        """
        if targets.ndim != 3 or targets.shape[0] != images.shape[0] or targets.is_floating_point():
            raise ValueError(
                f"expected integer targets of shape ({images.shape[0]}, H, W), got "
                f"{tuple(targets.shape)} {targets.dtype}"
            )
        features = self.extract_features(images)
        size = targets.shape[-2:]

        def cross_entropy(head: nn.Module, index: HeadInput) -> torch.Tensor:
            logits = resize(head(_take(features, index)), size, self.align_corners)
            return F.cross_entropy(logits, targets.long(), ignore_index=self.ignore_index)

        losses = {"loss_main": cross_entropy(self.decode_head, self.decode_in)}
        total = losses["loss_main"]
        for i, (head, index) in enumerate(zip(self.aux_heads, self.aux_in, strict=True)):
            losses[f"loss_aux{i}"] = cross_entropy(head, index)
            total = total + self.aux_weight * losses[f"loss_aux{i}"]
        losses["loss"] = total
        return losses

    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (timm's convention): those its parts name."""
        return {
            f"{part}.{name}"
            for part, module in self.named_children()
            if hasattr(module, "no_weight_decay")
            for name in module.no_weight_decay()
        }

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style groups: backbone and neck. What they leave unmatched, the decode and auxiliary
        heads, is the head group (mmseg's recipes give it ``head_lr_mult``; SETR-MLA's neck is not)."""
        return dict(backbone=r"^backbone\.", neck=r"^neck\.")

    def attention_sites(self) -> dict:
        """Attention the explain mode can record (``workbench.viz.record``): the backbone's sites, then
        the decode head's (named ``decode_head.<site>``) where it has attention of its own."""
        sites = dict(self.backbone.attention_sites())
        if hasattr(self.decode_head, "attention_sites"):
            sites.update(
                {f"decode_head.{name}": site for name, site in self.decode_head.attention_sites().items()}
            )
        return sites
