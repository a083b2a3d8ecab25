"""Decode heads shared by the hierarchical and high-resolution backbones (GPViT, HLG).

Each head takes a list of NCHW maps and returns logits at the resolution of the first map; the
segmentor resizes them to the input. Structure and widths follow mmsegmentation's heads of the same
name, so that the official checkpoints (trained with them) map onto these modules one to one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from workbench.models.layers import ConvBNReLU, resize


class UPerHead(nn.Module):
    """UPerNet (Xiao et al., ECCV 2018): pyramid pooling on the deepest map, FPN top-down, fusion.

    Args:
        in_channels: channels of each input map, shallow to deep.
        channels: width of every internal map (512 in the GPViT configs).
        pool_scales: output sizes of the pyramid-pooling branches.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        deepest = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(deepest, channels, 1))
            for scale in pool_scales
        )
        self.bottleneck = ConvBNReLU(deepest + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.align_corners = align_corners

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Maps (B, C_i, H_i, W_i), shallow to deep -> logits (B, K, H_0, W_0)."""
        deepest = features[-1]
        size = deepest.shape[-2:]
        pooled = [deepest] + [resize(ppm(deepest), size, self.align_corners) for ppm in self.psp_modules]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat(pooled, dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level adds the coarser one
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], laterals[i - 1].shape[-2:], self.align_corners
            )
        outputs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        outputs = [resize(x, outputs[0].shape[-2:], self.align_corners) for x in outputs]
        return self.classifier(self.dropout(self.fpn_bottleneck(torch.cat(outputs, dim=1))))


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021): per-map 1x1 projection, concat, fuse."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 256,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels)
        self.fusion_conv = ConvBNReLU(len(in_channels) * channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.align_corners = align_corners

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Maps (B, C_i, H_i, W_i) -> logits (B, K, H_0, W_0)."""
        size = features[0].shape[-2:]
        projected = [
            resize(conv(x), size, self.align_corners) for conv, x in zip(self.convs, features, strict=True)
        ]
        return self.classifier(self.dropout(self.fusion_conv(torch.cat(projected, dim=1))))


class FCNHead(nn.Module):
    """FCN head (mmseg FCNHead, concat_input=False), used as the auxiliary head: convs, dropout, 1x1."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(
            *(ConvBNReLU(c_in, c_out, 3) for c_in, c_out in itertools.pairwise(widths))
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K, H, W)."""
        return self.classifier(self.dropout(self.convs(x)))
