"""Released checkpoints into workbench models: official GPViT / SETR / HLG, mmseg SETR, timm / JAX / DeiT ViT."""

from workbench.interop.download import CATALOGUE, Release, download
from workbench.interop.load import FORMATS, LoadReport, export_state, load_pretrained, load_weights

__all__ = [
    "CATALOGUE",
    "FORMATS",
    "LoadReport",
    "Release",
    "download",
    "export_state",
    "load_pretrained",
    "load_weights",
]
