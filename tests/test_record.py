"""Explain mode: recorded attention is the forward's own, on its gradient path, for every family."""

from __future__ import annotations

import types

import pytest
import torch
from timm.layers import Attention

from workbench.models.explain import EXPLICIT_ATOL, EXPLICIT_RTOL, View, seen_as
from workbench.viz import capture, record

from .tiny import tiny_gpvit_segmentor, tiny_setr, tiny_setr_hlg

FAMILIES = {
    "setr_naive": (lambda: tiny_setr("setr_naive_vit_base"), (48, 64)),
    "setr_mla": (lambda: tiny_setr("setr_mla_vit_base"), (48, 64)),
    "gpvit": (lambda: tiny_gpvit_segmentor("segformer"), (44, 60)),  # odd 6x8 grid: padded stripes
    "setr_hlg": (lambda: tiny_setr_hlg(), (52, 76)),  # windows padded at every stage
}


def _timm_explicit_probs(model, images):
    """Attention probabilities from timm's own non-fused Attention.forward (its attn_drop sees the softmax)."""
    probs = {}
    for i, block in enumerate(model.backbone.blocks):
        block.attn.fused_attn = False
        block.attn.forward = types.MethodType(Attention.forward, block.attn)
        block.attn.attn_drop.register_forward_hook(
            lambda _m, _a, out, i=i: probs.__setitem__(f"blocks.{i}", out)
        )
    with torch.no_grad():
        model(images)
    return probs


@pytest.mark.parametrize("family", FAMILIES)
def test_recording_every_site_keeps_outputs_within_the_stated_tolerance(family):
    build, size = FAMILIES[family]
    model = build().eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        plain = model(images)
        with record(model) as rec:
            recorded = model(images)
    torch.testing.assert_close(recorded, plain, atol=EXPLICIT_ATOL, rtol=EXPLICIT_RTOL)
    assert list(rec.attention) == list(model.attention_sites())
    for name, attention in rec.attention.items():
        if attention.kind == "grouping":
            torch.testing.assert_close(attention.probs.sum(-1), torch.ones(attention.probs.shape[:-1]))
        else:
            rows, cols = attention.grid
            row = attention.query_map(rows - 1, cols - 1)  # a corner token: padded windows included
            total = row.flatten(2).sum(-1)  # the class token's share is not on the grid
            prefix = attention.num_prefix_tokens
            expected = 1 - attention.probs[:, :, -1, :prefix].sum(-1) if prefix else torch.ones_like(total)
            if family == "setr_hlg":  # released HLG (D3): zero padding takes part, off the grid
                assert (total <= 1 + 1e-5).all() and (total > 0).all(), name
            else:
                torch.testing.assert_close(total, expected, msg=name)


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
        assert attention.tokens.stride == 16 and attention.tokens.image_size == (48, 64)
        torch.testing.assert_close(attention.probs, reference[name], rtol=1e-5, atol=1e-6)


def test_only_requested_layers_are_probed_and_probes_are_removed():
    model = tiny_setr("setr_pup_vit_base").eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), record(model, layers=[1, "blocks.3"]) as rec:
        model(images)
        assert model.backbone.blocks[0].attn.probe() is None
    assert list(rec.attention) == ["blocks.1", "blocks.3"]
    assert not model._forward_pre_hooks
    assert all(block.attn.probe() is None for block in model.backbone.blocks)


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


@pytest.mark.parametrize("family", ["setr_naive", "gpvit", "setr_hlg"])
def test_keep_grad_gives_the_gradient_of_the_logits_with_respect_to_the_maps(family):
    """The maps are on the output's autograd path: d(logit)/d(attention) exists, and scaling the
    attention that the forward used changes the logit as the gradient predicts."""
    build, size = FAMILIES[family]
    model = build().eval()
    images = torch.randn(1, 3, *size)
    with record(model, keep_grad=True) as rec:
        model(images)[0, 0].sum().backward()
    gradients = [attention.grad for attention in rec.attention.values()]
    assert all(grad is not None for grad in gradients)
    assert all(grad.abs().sum() > 0 for grad in gradients)
    with record(model) as rec:  # without keep_grad the maps are detached
        model(images)
    assert all(not attention.probs.requires_grad for attention in rec.attention.values())


def test_every_forward_is_kept_with_its_view():
    model = tiny_setr("setr_naive_vit_base").eval()
    images = torch.randn(1, 3, 32, 48)
    with torch.no_grad(), record(model, layers=[0]) as rec:
        with seen_as(View((32, 48))):
            model(images)
        with seen_as(View((32, 48), flip=True)):
            model(images.flip(-1))
    assert [forward.view.flip for forward in rec.forwards] == [False, True]
    first, flipped = (forward.attention["blocks.0"] for forward in rec.forwards)
    assert rec.attention["blocks.0"] is first
    # Each forward keeps its own maps: the flipped pass's are those of the flipped input alone.
    with torch.no_grad(), record(model, layers=[0]) as alone:
        model(images.flip(-1))
    torch.testing.assert_close(flipped.probs, alone.attention["blocks.0"].probs)
    assert not torch.allclose(flipped.probs, first.probs)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_rows_equal_the_recorded_rows(family):
    build, size = FAMILIES[family]
    model = build().eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        with record(model) as rec:
            model(images)
        with capture(model) as cached:
            model(images)
            model(images.flip(-1))  # only the first forward is kept
    for name, attention in rec.attention.items():
        if attention.kind == "grouping":
            continue
        rows, cols = attention.grid
        for row, col in ((0, 0), (rows - 1, cols // 2)):
            torch.testing.assert_close(
                cached[name].query_map(row, col, sample=1), attention.query_map(row, col)[1], msg=name
            )


def test_unknown_or_empty_layers_are_refused():
    model = tiny_setr("setr_naive_vit_base")
    with (
        pytest.raises(ValueError, match=r"unknown layer 7: expected an index in \[0, 4\)"),
        record(model, layers=[7]),
    ):
        pass
    with pytest.raises(ValueError, match="non-empty list"), record(model, layers=[]):
        pass
    with pytest.raises(ValueError, match="exposes no attention_sites"), record(torch.nn.Linear(2, 2)):
        pass


def test_the_classification_wrapper_exposes_its_models_sites():
    from workbench.models.classifier import Classifier

    from .tiny import tiny_gpvit

    wrapped = Classifier(tiny_gpvit(num_classes=3), num_classes=3).eval()
    with torch.no_grad(), record(wrapped, layers=["blocks.1.grouping"]) as rec:
        wrapped(torch.randn(1, 3, 32, 32))
    assert rec.attention["blocks.1.grouping"].probs.shape == (1, 6, 8, 16)
