"""Minimal stand-in for the GPViT repository's ``mmcls`` package (mmcls 0.24 + ``gpvit_dev``).

Only the scaffolding is shimmed here (registries, logger, package __init__s that would otherwise
import every mmcls model). The model code itself -- ``mmcls/gpvit_dev/**``,
``mmcls/models/backbones/base_backbone.py``, ``mmcls/models/utils/{embed,helpers}.py`` -- is read
from the official checkout at run time and placed next to these files (benchmarks/official/gpvit.py).
"""

__version__ = "0.24.1"
