"""mmcls.models.builder shim: the model registries."""

from mmcv.utils import Registry

MODELS = Registry("models")
BACKBONES = NECKS = HEADS = LOSSES = CLASSIFIERS = MODELS  # mmcls 0.x aliases them all to MODELS


def build_backbone(cfg):
    return BACKBONES.build(cfg)
