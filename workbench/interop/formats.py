"""Format entries: each released checkpoint layout says how to recognise it and how to convert it.

Every family module of ``workbench.interop`` contributes its entries beside its key maps;
``load_pretrained`` walks them in detection order and never names a format itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # posgrid reads StateDict from here
    from workbench.interop.posgrid import KnownGrid

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Format:
    """A released checkpoint layout.

    ``detect(keys)`` tells it from the source's key names alone; ``convert(state, model, known)``
    returns the tensors under ``model``'s key names plus notes on what it dropped, resampled or
    detected (raising a ValueError when the model cannot take this layout); ``known`` is the position
    grid the caller gave or the file's saved size records (``posgrid.KnownGrid``), or None.
    ``fresh`` is a key fragment of model tensors this layout never holds: left as initialised and
    reported, never counted as missing.
    ``export(model)`` writes a model's tensors in this layout (for the layouts the workbench's own
    models were released in), so that a model round-trips through its official checkpoint layout.
    """

    name: str
    detect: Callable[[set[str]], bool]
    convert: Callable[[StateDict, nn.Module, KnownGrid | None], tuple[StateDict, list[str]]]
    fresh: str = ""
    export: Callable[[nn.Module], StateDict] | None = None


# Where a dense model holds a family's backbone: a segmentor's ``backbone``, a detector's pyramid body
# (``backbone.body``, e.g. HLG) or the ViT inside the body's adapter (``backbone.body.vit``, GPViT).
BACKBONE_PREFIXES = ("backbone.", "backbone.body.", "backbone.body.vit.")


def part_of(model: nn.Module, cls: type[nn.Module], format_name: str, fits: str) -> tuple[str, nn.Module]:
    """``model`` or the backbone it holds (at one of ``BACKBONE_PREFIXES``), whichever is a ``cls``, with
    its key prefix in ``model``'s state dict (``""``: ``model`` itself); else a ValueError saying what
    ``fits``."""
    for prefix in ("", *BACKBONE_PREFIXES):
        try:
            part = model.get_submodule(prefix.removesuffix("."))
        except AttributeError:
            continue
        if isinstance(part, cls):
            return prefix, part
    raise ValueError(f"a {format_name} checkpoint loads into {fits}, not {type(model).__name__}")
