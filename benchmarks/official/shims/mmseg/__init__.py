"""Minimal stand-in for the GPViT repository's ``downstream/mmsegmentation/mmseg`` package.

Shimmed: package scaffolding, registries, the loss / pixel-sampler builders the decode heads call
in their constructors (inference never uses them). Read from the official checkout at run time:
``mmseg/models/backbones/gpvit.py`` (GPViTSeg), ``mmseg/models/decode_heads/{decode_head,psp_head,
uper_head,fcn_head}.py`` and ``mmseg/ops/wrappers.py`` (resize).
"""

__version__ = "0.29.1"
