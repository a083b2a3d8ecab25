"""Released checkpoints into workbench models: official GPViT / SETR / HLG, mmseg SETR, timm / JAX / DeiT ViT.

Importing it installs ``released_weights`` as the loader behind ``timm.create_model(name, pretrained=True)``.
"""

from workbench.interop.download import CATALOGUE, Release, download
from workbench.interop.export import ExportResult, export
from workbench.interop.load import FORMATS, LoadReport, export_state, load_pretrained, load_weights
from workbench.interop.pretrained import released_weights
from workbench.models.registry import set_pretrained_loader

set_pretrained_loader(released_weights)

__all__ = [
    "CATALOGUE",
    "FORMATS",
    "ExportResult",
    "LoadReport",
    "Release",
    "download",
    "export",
    "export_state",
    "load_pretrained",
    "load_weights",
    "released_weights",
]
