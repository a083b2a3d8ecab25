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

from workbench.models.explain import AttentionSite


@dataclass
class AttentionMap:
    """Attention probabilities of one site for the last forward pass.

    Attributes:
        probs: (B, heads, N_query, N_key); token order is ``num_prefix_tokens`` prefix tokens, then
            the image tokens of ``grid`` in row-major order.
        kind: the site's kind ("self" for self-attention).
        grid: (rows, cols) of the image-token grid.
        num_prefix_tokens: tokens before the grid (1 for a kept class token).
    """

    probs: torch.Tensor
    kind: str
    grid: tuple[int, int]
    num_prefix_tokens: int

    def query_map(self, row: int, col: int) -> torch.Tensor:
        """Where the image token at (row, col) looks: (B, heads, rows, cols), prefix keys left out."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"token ({row}, {col}) is outside the {rows}x{cols} token grid")
        query = self.num_prefix_tokens + row * cols + col
        keys = self.probs[:, :, query, self.num_prefix_tokens :]
        return keys.reshape(*keys.shape[:2], rows, cols)


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
                probs = site.probs(module, args)
            grid = (image_size[0] // site.stride, image_size[1] // site.stride)
            recording.attention[name] = AttentionMap(probs, site.kind, grid, site.num_prefix_tokens)

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
