"""Interoperability with released checkpoints: key mappings between the workbench and official layouts."""
