"""Explain mode: record attention maps of chosen layers.

    with workbench.viz.record(model, layers=[23]) as rec:
        logits = model(images)
    rec.attention["blocks.23"].probs        # (B, heads, N, N)

Only the requested sites are hooked; outputs are bitwise identical with and without recording
(see ``workbench.models.explain``). Each forward pass inside the block replaces the previous maps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.models.explain import AttentionMap, AttentionSite


@dataclass
class Recording:
    attention: dict[str, AttentionMap] = field(default_factory=dict)


def _select(sites: dict[str, AttentionSite], layers: Sequence[int | str] | None) -> dict[str, AttentionSite]:
    if layers is None:
        return dict(sites)
    names = list(sites)
    chosen = {}
    for layer in layers:
        if isinstance(layer, int) and -len(names) <= layer < len(names):
            name = names[layer]
        elif isinstance(layer, str) and layer in sites:
            name = layer
        else:
            raise ValueError(
                f"unknown layer {layer!r}: expected an index in [0, {len(names)}) or one of {', '.join(names)}"
            )
        chosen[name] = sites[name]
    return chosen


@contextmanager
def record(
    model: nn.Module, layers: Sequence[int | str] | None = None, keep_grad: bool = False
) -> Iterator[Recording]:
    """Record the attention of ``layers`` (indices or names of ``model.attention_sites()``; None: all).

    ``keep_grad=True`` keeps the maps in the autograd graph (for gradient-weighted attention).
    """
    if not hasattr(model, "attention_sites"):
        raise ValueError(f"{type(model).__name__} exposes no attention_sites(); it cannot be recorded")
    sites = _select(model.attention_sites(), layers)
    recording = Recording()
    image_size: list[int] = []

    def remember_image_size(_module: nn.Module, args: tuple) -> None:
        image_size[:] = args[0].shape[-2:]

    def recorder(name: str, site: AttentionSite):
        def hook(module: nn.Module, args: tuple) -> None:
            with torch.set_grad_enabled(keep_grad and torch.is_grad_enabled()):
                recording.attention[name] = site.compute(module, args, tuple(image_size))

        return hook

    handles = [model.register_forward_pre_hook(remember_image_size)]
    try:
        handles += [
            site.module.register_forward_pre_hook(recorder(name, site)) for name, site in sites.items()
        ]
        yield recording
    finally:
        for handle in handles:
            handle.remove()
