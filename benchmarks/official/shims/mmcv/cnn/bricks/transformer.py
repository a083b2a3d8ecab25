"""mmcv.cnn.bricks.transformer shims: FFN, AdaptivePadding, build_dropout (mmcv 1.x)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from mmcv.cnn import Linear, build_activation_layer
from mmcv.runner.base_module import BaseModule, Sequential
from mmcv.utils import to_2tuple

from . import Dropout, DropPath

_DROPOUT_LAYERS = {"DropPath": DropPath, "Dropout": Dropout}


def build_dropout(cfg: dict, default_args: dict | None = None) -> nn.Module:
    """``dict(type='DropPath', drop_prob=p)`` -> DropPath(p); 'Dropout' -> mmcv Dropout."""
    cfg_ = copy.deepcopy(cfg)
    for key, value in (default_args or {}).items():
        cfg_.setdefault(key, value)
    return _DROPOUT_LAYERS[cfg_.pop("type")](**cfg_)


class FFN(BaseModule):
    """mmcv 1.x FFN: ``layers`` = [Sequential(Linear, act, Dropout)] * (num_fcs - 1) + [Linear, Dropout]
    (state-dict keys ``layers.0.0.*`` and ``layers.1.*`` for num_fcs=2); the output goes through
    ``dropout_layer`` and is added to ``identity`` (default: the input) when ``add_identity``."""

    def __init__(
        self,
        embed_dims=256,
        feedforward_channels=1024,
        num_fcs=2,
        act_cfg=dict(type="ReLU", inplace=True),  # noqa: B006 (mmcv's default)
        ffn_drop=0.0,
        dropout_layer=None,
        add_identity=True,
        init_cfg=None,
        **kwargs,
    ):
        super().__init__(init_cfg)
        # mmcv's deprecated_api_warning renames these old argument names
        ffn_drop = kwargs.pop("dropout", ffn_drop)
        add_identity = kwargs.pop("add_residual", add_identity)
        assert num_fcs >= 2, f"num_fcs should be no less than 2. got {num_fcs}."
        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        self.num_fcs = num_fcs
        self.act_cfg = act_cfg
        self.activate = build_activation_layer(act_cfg)
        layers = []
        in_channels = embed_dims
        for _ in range(num_fcs - 1):
            layers.append(
                Sequential(Linear(in_channels, feedforward_channels), self.activate, nn.Dropout(ffn_drop))
            )
            in_channels = feedforward_channels
        layers.append(Linear(feedforward_channels, embed_dims))
        layers.append(nn.Dropout(ffn_drop))
        self.layers = Sequential(*layers)
        self.dropout_layer = build_dropout(dropout_layer) if dropout_layer else nn.Identity()
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        out = self.layers(x)
        if not self.add_identity:
            return self.dropout_layer(out)
        if identity is None:
            identity = x
        return identity + self.dropout_layer(out)


class AdaptivePadding(nn.Module):
    """mmcv's AdaptivePadding: pad the input so a conv of this kernel / stride / dilation covers it
    entirely; 'corner' pads bottom-right, 'same' pads around (as TF's SAME)."""

    def __init__(self, kernel_size=1, stride=1, dilation=1, padding="corner"):
        super().__init__()
        assert padding in ("same", "corner")
        self.padding = padding
        self.kernel_size = to_2tuple(kernel_size)
        self.stride = to_2tuple(stride)
        self.dilation = to_2tuple(dilation)

    def get_pad_shape(self, input_shape):
        input_h, input_w = input_shape
        kernel_h, kernel_w = self.kernel_size
        stride_h, stride_w = self.stride
        output_h = math.ceil(input_h / stride_h)
        output_w = math.ceil(input_w / stride_w)
        pad_h = max((output_h - 1) * stride_h + (kernel_h - 1) * self.dilation[0] + 1 - input_h, 0)
        pad_w = max((output_w - 1) * stride_w + (kernel_w - 1) * self.dilation[1] + 1 - input_w, 0)
        return pad_h, pad_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self.get_pad_shape(x.size()[-2:])
        if pad_h > 0 or pad_w > 0:
            if self.padding == "corner":
                x = F.pad(x, [0, pad_w, 0, pad_h])
            else:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return x


__all__ = ["FFN", "AdaptivePadding", "build_dropout"]
