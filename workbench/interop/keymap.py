"""Renaming state-dict keys between two layouts with ordered, dot-segment-bounded substitutions."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch

Renames = Sequence[tuple[str, str]]


def _segment(pattern: str) -> re.Pattern:
    """Match ``pattern`` only where a dot-separated segment starts (so 'grouping.' misses 'ungrouping.')."""
    if pattern.startswith("^"):
        return re.compile(pattern)
    return re.compile(r"(?:^|(?<=\.))" + pattern)


def rename_key(key: str, renames: Renames) -> str:
    for pattern, replacement in renames:
        key = _segment(pattern).sub(replacement, key)
    return key


def rename_keys(
    state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str]
) -> dict[str, torch.Tensor]:
    """Rename every key with ``rename``; two keys landing on one name is an error, never a silent loss."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key in renamed:
            raise ValueError(f"two keys map to {new_key!r} (one of them {key!r})")
        renamed[new_key] = value
    return renamed
