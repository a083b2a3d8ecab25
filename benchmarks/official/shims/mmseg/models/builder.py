"""mmseg.models.builder shim: registries and builders used by the official backbone / heads."""

from mmcv.utils import Registry
from torch import nn

MODELS = Registry("models")
BACKBONES = NECKS = HEADS = LOSSES = SEGMENTORS = MODELS


class _InferenceOnlyLoss(nn.Module):
    """Placeholder for ``build_loss(dict(type='CrossEntropyLoss', ...))``: the decode heads build
    their loss in ``__init__``; mmseg's CrossEntropyLoss has no parameters or buffers, so this
    leaves the state dict unchanged. Calling it (training) is not supported."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.loss_name = cfg.get("loss_name", "loss_ce")

    def forward(self, *args, **kwargs):
        raise NotImplementedError("the benchmark shims build the official heads for inference only")


def build_loss(cfg):
    return _InferenceOnlyLoss(cfg)


def build_head(cfg):
    return HEADS.build(cfg)


def build_backbone(cfg):
    return BACKBONES.build(cfg)
