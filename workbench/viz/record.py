"""Explain mode: record the attention of chosen layers, on the forward pass's own path.

    with workbench.viz.record(model, layers=[23]) as rec:
        logits = model(images)
    rec.attention["blocks.23"].probs        # (B, heads, N, N): the probabilities the forward used

Only the requested sites leave the fast path (``workbench.models.explain``); outputs equal the fast
path's within ``EXPLICIT_ATOL`` / ``EXPLICIT_RTOL`` (fp32). Every forward pass inside the block is kept
with its view (``rec.forwards``): multi-scale, flipped and sliding-window inference each add one.
``capture`` keeps q and k instead of probabilities, to answer single query rows later.

A recording belongs to the thread (or asyncio task) that opened it: forward passes of the same model in
other threads, e.g. other users' requests in a server, run the fast path and are not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.models.explain import (
    AttentionMap,
    AttentionSite,
    CachedAttention,
    Forward,
    Probe,
    Probing,
    cache_probe,
    current_view,
    probing,
    record_probe,
)


@dataclass
class Recording:
    """Every forward pass seen inside ``record``, in order, each with its view and its maps."""

    forwards: list[Forward] = field(default_factory=list)

    @property
    def attention(self) -> dict[str, AttentionMap]:
        """The maps of the first forward pass (for ``predict_probs``: the first scale, not flipped)."""
        return self.forwards[0].attention if self.forwards else {}


def select_sites(model: nn.Module, layers: Sequence[int | str] | None) -> dict[str, AttentionSite]:
    """The sites of ``model.attention_sites()`` named by ``layers`` (indices or names; None: all)."""
    if not hasattr(model, "attention_sites"):
        raise ValueError(f"{type(model).__name__} exposes no attention_sites(); it cannot be recorded")
    sites = model.attention_sites()
    if layers is None:
        return dict(sites)
    names = list(sites)
    if isinstance(layers, (str, int)) or len(layers) == 0:
        raise ValueError(
            f"layers must be a non-empty list of indices in [0, {len(names)}) or site names, or None for "
            f"all; got {layers!r}"
        )
    chosen = {}
    for layer in layers:
        if isinstance(layer, int) and not isinstance(layer, bool) and -len(names) <= layer < len(names):
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
def _probing(
    model: nn.Module,
    sites: dict[str, AttentionSite],
    make_probe: Callable[[str, AttentionSite, Callable[[], tuple[int, int]]], Probe],
    on_forward: Callable[[], None],
) -> Iterator[None]:
    """Open a recording of ``sites`` in the current context, and count ``model``'s forward passes there."""
    state = Probing()
    state.probes = {
        (site.module, site.slot): make_probe(name, site, lambda: state.image_size)
        for name, site in sites.items()
    }

    def before_forward(_module: nn.Module, args: tuple) -> None:
        # The hook sees every thread's forward passes: only this context's are this recording's.
        if state.active():
            state.image_size = tuple(args[0].shape[-2:])
            on_forward()

    handle = model.register_forward_pre_hook(before_forward)
    try:
        with probing(state):
            yield
    finally:
        handle.remove()


@contextmanager
def record(
    model: nn.Module, layers: Sequence[int | str] | None = None, keep_grad: bool = False
) -> Iterator[Recording]:
    """Record the attention of ``layers`` (indices or names of ``model.attention_sites()``; None: all).

    ``keep_grad=True`` keeps the maps in the autograd graph: after ``backward``, ``map.grad`` is
    d(back-propagated value)/d(attention) (gradient-weighted attention, Chefer et al. 2021).
    """
    sites = select_sites(model, layers)
    recording = Recording()

    def make_probe(name, site, image_size):
        def keep(attention: AttentionMap) -> None:
            recording.forwards[-1].attention[name] = attention

        return record_probe(site, image_size, keep, keep_grad and torch.is_grad_enabled())

    def start_forward() -> None:
        recording.forwards.append(Forward(current_view()))

    with _probing(model, sites, make_probe, start_forward):
        yield recording


@contextmanager
def capture(
    model: nn.Module, layers: Sequence[int | str] | None = None
) -> Iterator[dict[str, CachedAttention]]:
    """Keep q, k and the mask of ``layers`` during the *first* forward pass inside the block, without
    materialising any attention: ``cached[name].query_map(row, col)`` then computes one query's row."""
    sites = select_sites(model, layers)
    cached: dict[str, CachedAttention] = {}
    forwards = [0]

    def make_probe(name, site, image_size):
        def keep(attention: CachedAttention) -> None:
            if forwards[0] == 1:
                cached[name] = attention

        return cache_probe(site, image_size, keep)

    def count_forward() -> None:
        forwards[0] += 1

    with _probing(model, sites, make_probe, count_forward):
        yield cached
