"""Minimal stand-in for mmcv 1.x: only what the official GPViT / mmseg UPerHead files import.

The official GPViT code was written against mmcv 1.x (mmcls 0.24, mmseg 0.2x), which pin old
PyTorch versions and are not installed here. Each shim below reproduces the mmcv 1.x behaviour
of one symbol (module names, defaults, forward semantics) so that the *official* model files,
read unmodified from a GPViT checkout, build the same module tree with the same state-dict keys.
"""

__version__ = "1.7.0"  # the mmcv 1.x release these shims emulate
