"""Fallback for ``einops.rearrange``, used only when the real einops is not installed.

The official attentions.py calls ``rearrange`` with exactly two patterns (split / merge heads);
this implements those two with reshape / permute and refuses anything else.
"""

import re

import torch


def rearrange(tensor: torch.Tensor, pattern: str, **sizes) -> torch.Tensor:
    spec = re.sub(r"\s+", " ", pattern.replace("->", " -> ")).strip()
    if spec == "b n (h c) -> b h n c":
        b, n, _ = tensor.shape
        return tensor.reshape(b, n, sizes["h"], -1).permute(0, 2, 1, 3)
    if spec == "b h n c -> b n (h c)":
        b, h, n, c = tensor.shape
        return tensor.permute(0, 2, 1, 3).reshape(b, n, h * c)
    raise NotImplementedError(f"einops fallback does not handle the pattern {pattern!r}")
