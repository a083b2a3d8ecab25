"""Recording state belongs to the call: forwards of other threads neither see nor disturb a recording,
and a capture keeps only what its queries need."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from workbench.models.explain import TokenGrid
from workbench.viz import capture, record

from .tiny import tiny_gpvit_segmentor, tiny_setr, tiny_setr_hlg

FAMILIES = {
    "setr": lambda: tiny_setr("setr_naive_vit_base"),
    "gpvit": lambda: tiny_gpvit_segmentor("segformer"),
    "setr_hlg": lambda: tiny_setr_hlg(),
}
SIZE_A, SIZE_B = (48, 48), (64, 96)
WAIT_S = 60


def _capture(model, images):
    with torch.no_grad(), capture(model) as cached:
        model(images)
    return cached


def _record(model, images):
    with torch.no_grad(), record(model) as recording:
        model(images)
    return recording


def _assert_same_cache(cached, expected):
    assert list(cached) == list(expected)
    for name, kept in cached.items():
        assert kept.tokens == expected[name].tokens and kept.layout == expected[name].layout, name
        torch.testing.assert_close(kept.q, expected[name].q, msg=name)
        torch.testing.assert_close(kept.k, expected[name].k, msg=name)


def _paused_in_thread_a(model, run_a, run_b, pause_at):
    """Run ``run_a`` in thread A, stop A before ``pause_at`` runs (its first call), run ``run_b`` in
    this thread meanwhile, then let A finish. Returns (A's result, B's result)."""
    a_paused, b_done = threading.Event(), threading.Event()
    thread_a: list[threading.Thread] = []

    def pause(_module, _args):
        if threading.current_thread() is thread_a[0] and not a_paused.is_set():
            a_paused.set()
            assert b_done.wait(WAIT_S), "thread B never finished"

    def in_thread_a():
        thread_a.append(threading.current_thread())
        return run_a()

    handle = pause_at.register_forward_pre_hook(pause)
    try:
        with ThreadPoolExecutor(1) as pool:
            result_a = pool.submit(in_thread_a)
            assert a_paused.wait(WAIT_S), "thread A never reached the pause"
            try:
                result_b = run_b()
            finally:
                b_done.set()
            return result_a.result(WAIT_S), result_b
    finally:
        handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_recording_in_another_thread_mid_forward_keeps_each_sessions_grid_and_maps(family):
    """Thread A stops halfway through its captured forward (48x48); thread B records a 64x96 forward of
    the same model meanwhile. Each keeps its own image's grids and maps."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    images_a, images_b = torch.randn(1, 3, *SIZE_A), torch.randn(1, 3, *SIZE_B)
    expected_a, expected_b = _capture(model, images_a), _record(model, images_b)
    sites = list(model.attention_sites().values())
    middle = sites[len(sites) // 2].module
    cached_a, recording_b = _paused_in_thread_a(
        model, lambda: _capture(model, images_a), lambda: _record(model, images_b), middle
    )
    _assert_same_cache(cached_a, expected_a)
    assert all(kept.tokens.image_size == SIZE_A for kept in cached_a.values())
    assert len(recording_b.forwards) == 1 and list(recording_b.attention) == list(expected_b.attention)
    for name, attention in recording_b.attention.items():
        assert attention.tokens == expected_b.attention[name].tokens, name
        assert attention.tokens.image_size == SIZE_B, name
        torch.testing.assert_close(attention.probs, expected_b.attention[name].probs, msg=name)
    if family == "setr":
        assert cached_a["blocks.3"].tokens == TokenGrid(3, 3, 16, SIZE_A)
        assert recording_b.attention["blocks.3"].tokens == TokenGrid(4, 6, 16, SIZE_B)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forward_outside_any_recording_is_neither_probed_nor_counted(family):
    """Thread A opens a capture and waits; a plain forward in thread B sees no probe, and A's capture
    keeps A's own forward, not B's (which ran first)."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    images_a, images_b = torch.randn(1, 3, *SIZE_A), torch.randn(1, 3, *SIZE_B)
    expected_a = _capture(model, images_a)
    sites = model.attention_sites()
    opened = torch.nn.Identity()  # called inside A's capture, before A's forward: A waits there

    def run_a():
        with torch.no_grad(), capture(model) as cached:
            opened(images_a)
            model(images_a)
        return cached

    def run_b():
        assert all(site.module.probe(site.slot) is None for site in sites.values())
        with torch.no_grad():
            model(images_b)

    cached_a, _ = _paused_in_thread_a(model, run_a, run_b, opened)
    _assert_same_cache(cached_a, expected_a)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_capture_keeps_q_and_k_without_the_storage_they_were_cut_from(family):
    """SETR's q and k are views of the fused qkv (v included), HLG's k of the fused kv: a capture
    keeps compact copies, each holding its own elements only."""
    model = FAMILIES[family]().eval()
    cached = _capture(model, torch.randn(1, 3, *SIZE_A))
    for name, kept in cached.items():
        for tensor in (kept.q, kept.k):
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
