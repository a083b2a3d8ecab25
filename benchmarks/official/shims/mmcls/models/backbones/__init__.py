"""mmcls.models.backbones shim.

The official ``__init__`` imports all mmcls backbones and ends with
``from ...gpvit_dev.models.backbones.gpvit import GPViT``; only that last line matters here (the
mmseg GPViTSeg does ``from mmcls.models.backbones import GPViT``). It is resolved lazily so that
importing this package has no side effect. ``base_backbone.py`` is the official file.
"""


def __getattr__(name):
    if name == "GPViT":
        from mmcls.gpvit_dev.models.backbones.gpvit import GPViT

        return GPViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
