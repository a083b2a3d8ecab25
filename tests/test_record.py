"""Explain mode: recorded attention is correct, outputs are unchanged, nothing lingers afterwards."""

from __future__ import annotations

import pytest
import torch

from workbench.viz import record

from .tiny import tiny_setr


def _timm_explicit_probs(model, images):
    """Attention probabilities from timm's own non-fused path (its attn_drop sees the softmax)."""
    probs = {}
    for i, block in enumerate(model.backbone.blocks):
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(
            lambda _m, _a, out, i=i: probs.__setitem__(f"blocks.{i}", out)
        )
    with torch.no_grad():
        model(images)
    return probs


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_recording_leaves_outputs_bitwise_identical(decoder):
    model = tiny_setr(f"setr_{decoder}_vit_base").eval()
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        plain = model(images)
        with record(model) as rec:
            recorded = model(images)
    assert torch.equal(plain, recorded)
    assert list(rec.attention) == [f"blocks.{i}" for i in range(4)]


@pytest.mark.parametrize("decoder", ["naive", "mla"])
def test_recorded_probabilities_equal_timms_explicit_attention(decoder):
    model = tiny_setr(f"setr_{decoder}_vit_base").eval()
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad(), record(model) as rec:
        model(images)
    reference = _timm_explicit_probs(model, images)
    prefix = 1 if decoder == "naive" else 0
    for name, attention in rec.attention.items():
        assert attention.probs.shape == (2, 2, prefix + 12, prefix + 12)
        assert attention.grid == (3, 4) and attention.num_prefix_tokens == prefix
        torch.testing.assert_close(attention.probs, reference[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(attention.probs.sum(-1), torch.ones(2, 2, prefix + 12))


def test_only_requested_layers_are_recorded_and_hooks_are_removed():
    model = tiny_setr("setr_pup_vit_base").eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), record(model, layers=[1, "blocks.3"]) as rec:
        model(images)
    assert list(rec.attention) == ["blocks.1", "blocks.3"]
    assert not model._forward_pre_hooks
    assert all(not block.attn._forward_pre_hooks for block in model.backbone.blocks)


def test_query_map_is_the_row_of_a_token_on_its_grid():
    model = tiny_setr("setr_naive_vit_base").eval()
    with torch.no_grad(), record(model, layers=[-1]) as rec:
        model(torch.randn(1, 3, 48, 64))
    attention = rec.attention["blocks.3"]
    spatial = attention.query_map(1, 2)
    assert spatial.shape == (1, 2, 3, 4)
    torch.testing.assert_close(spatial.flatten(2), attention.probs[:, :, 1 + 1 * 4 + 2, 1:])
    with pytest.raises(ValueError, match="outside the 3x4 token grid"):
        attention.query_map(3, 0)


def test_keep_grad_lets_gradients_flow_through_the_maps():
    model = tiny_setr("setr_mla_vit_base").eval()
    images = torch.randn(1, 3, 32, 32, requires_grad=True)
    with record(model, layers=[0], keep_grad=True) as rec:
        model(images)
    rec.attention["blocks.0"].probs[..., 0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_unknown_layers_are_refused():
    model = tiny_setr("setr_naive_vit_base")
    with (
        pytest.raises(ValueError, match=r"unknown layer 7: expected an index in \[0, 4\)"),
        record(model, layers=[7]),
    ):
        pass
    with pytest.raises(ValueError, match="exposes no attention_sites"), record(torch.nn.Linear(2, 2)):
        pass
