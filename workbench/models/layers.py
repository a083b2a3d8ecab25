"""Building blocks shared by the decode heads of every family."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU, 'same' padding (mmcv's ConvModule with BN and ReLU).

    The SETR heads of the official code keep the conv bias before BN (``bias=True``); mmseg drops it.
    BatchNorm2d becomes SyncBatchNorm under DDP through ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = False) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
                bn=nn.BatchNorm2d(out_channels),
                act=nn.ReLU(inplace=True),
            )
        )


def resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) maps to ``size``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def upsample(x: torch.Tensor, scale: int, align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling of (B, C, H, W) maps by an integer factor (1 is a no-op)."""
    if scale == 1:
        return x
    return resize(x, (x.shape[-2] * scale, x.shape[-1] * scale), align_corners)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads), channels grouped head-major."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)
