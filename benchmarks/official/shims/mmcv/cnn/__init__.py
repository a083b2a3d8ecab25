"""mmcv.cnn shims: the layer builders (norm / conv / activation), Linear and ConvModule.

Semantics follow mmcv 1.x ``mmcv/cnn/bricks``:

- ``build_norm_layer(cfg, num_features, postfix='')`` returns ``(name, layer)`` where name is the
  layer's abbreviation ('ln', 'bn', 'gn', 'in') plus ``postfix``; eps defaults to 1e-5; the
  ``requires_grad`` key sets the parameters' flag. 'SyncBN' is ``nn.SyncBatchNorm`` as in mmcv (in
  eval mode, or without torch.distributed, it computes plain batch norm with running statistics).
- ``build_conv_layer(None | dict(type='Conv2d'), ...)`` is ``nn.Conv2d(...)``.
- ``build_activation_layer(dict(type='GELU'))`` etc. are the torch.nn activations.
- ``ConvModule``: conv -> norm -> activation, conv bias only without a norm (``bias='auto'``),
  submodules named ``conv``, ``bn`` (the norm's abbreviation) and ``activate``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .bricks import DropPath  # mmcv.cnn re-exports the bricks (listed in __all__)

# mmcv NORM_LAYERS: type -> (class, abbreviation used in module names)
_NORM_LAYERS = {
    "BN": (nn.BatchNorm2d, "bn"),
    "BN1d": (nn.BatchNorm1d, "bn"),
    "BN2d": (nn.BatchNorm2d, "bn"),
    "BN3d": (nn.BatchNorm3d, "bn"),
    "SyncBN": (nn.SyncBatchNorm, "bn"),
    "GN": (nn.GroupNorm, "gn"),
    "LN": (nn.LayerNorm, "ln"),
    "IN": (nn.InstanceNorm2d, "in"),
    "IN1d": (nn.InstanceNorm1d, "in"),
    "IN2d": (nn.InstanceNorm2d, "in"),
    "IN3d": (nn.InstanceNorm3d, "in"),
}

_CONV_LAYERS = {"Conv": nn.Conv2d, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}

_ACTIVATION_LAYERS = {
    "ReLU": nn.ReLU,
    "LeakyReLU": nn.LeakyReLU,
    "PReLU": nn.PReLU,
    "RReLU": nn.RReLU,
    "ReLU6": nn.ReLU6,
    "ELU": nn.ELU,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
}


def build_norm_layer(cfg: dict, num_features: int, postfix: int | str = "") -> tuple[str, nn.Module]:
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise TypeError(f"norm cfg must be a dict with a 'type', got {cfg!r}")
    cfg_ = copy.deepcopy(cfg)
    layer_type = cfg_.pop("type")
    if layer_type not in _NORM_LAYERS:
        raise KeyError(f"Unrecognized norm type {layer_type}")
    norm_layer, abbr = _NORM_LAYERS[layer_type]
    name = abbr + str(postfix)
    requires_grad = cfg_.pop("requires_grad", True)
    cfg_.setdefault("eps", 1e-5)
    if layer_type != "GN":
        layer = norm_layer(num_features, **cfg_)
    else:
        layer = norm_layer(num_channels=num_features, **cfg_)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return name, layer


def build_conv_layer(cfg: dict | None, *args, **kwargs) -> nn.Module:
    cfg_ = dict(type="Conv2d") if cfg is None else copy.deepcopy(cfg)
    layer_type = cfg_.pop("type")
    if layer_type not in _CONV_LAYERS:
        raise KeyError(f"Unrecognized conv type {layer_type}")
    return _CONV_LAYERS[layer_type](*args, **kwargs, **cfg_)


def build_activation_layer(cfg: dict) -> nn.Module:
    cfg_ = copy.deepcopy(cfg)
    layer_type = cfg_.pop("type")
    if layer_type not in _ACTIVATION_LAYERS:
        raise KeyError(f"Unrecognized activation type {layer_type}")
    return _ACTIVATION_LAYERS[layer_type](**cfg_)


class Linear(nn.Linear):
    """mmcv.cnn.bricks.wrappers.Linear: nn.Linear (mmcv adds only an empty-batch path for old torch)."""


class ConvModule(nn.Module):
    """mmcv.cnn.ConvModule (1.x) for the default order ('conv', 'norm', 'act')."""

    _abbr_ = "conv_block"

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias="auto",
        conv_cfg=None,
        norm_cfg=None,
        act_cfg=dict(type="ReLU"),  # noqa: B006 (mmcv's default)
        inplace=True,
        with_spectral_norm=False,
        padding_mode="zeros",
        order=("conv", "norm", "act"),
    ):
        super().__init__()
        if with_spectral_norm or padding_mode != "zeros" or tuple(order) != ("conv", "norm", "act"):
            raise NotImplementedError("this ConvModule shim covers the default conv -> norm -> act only")
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        self.inplace = inplace
        self.order = tuple(order)
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        if bias == "auto":
            bias = not self.with_norm
        self.with_bias = bias
        self.conv = build_conv_layer(
            conv_cfg,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.in_channels, self.out_channels = self.conv.in_channels, self.conv.out_channels
        if self.with_norm:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
            if self.with_bias and isinstance(norm, (_BatchNorm, _InstanceNorm)):
                pass  # mmcv only warns that the bias is redundant
        else:
            self.norm_name = None
        if self.with_activation:
            act_cfg_ = copy.deepcopy(act_cfg)
            if act_cfg_["type"] not in ["Tanh", "PReLU", "Sigmoid", "HSigmoid", "Swish", "GELU"]:
                act_cfg_.setdefault("inplace", inplace)
            self.activate = build_activation_layer(act_cfg_)

    @property
    def norm(self):
        return getattr(self, self.norm_name) if self.norm_name else None

    def forward(self, x: torch.Tensor, activate: bool = True, norm: bool = True) -> torch.Tensor:
        for layer in self.order:
            if layer == "conv":
                x = self.conv(x)
            elif layer == "norm" and norm and self.with_norm:
                x = self.norm(x)
            elif layer == "act" and activate and self.with_activation:
                x = self.activate(x)
        return x


__all__ = [
    "ConvModule",
    "DropPath",
    "Linear",
    "build_activation_layer",
    "build_conv_layer",
    "build_norm_layer",
]
