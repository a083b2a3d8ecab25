"""Register tokens and layer scale in SETR's encoder: DINOv2-with-registers and DeiT-3 files load and
give the source's own features; the explain probes see the registers as prefix tokens.

Each source is a tiny timm ``VisionTransformer`` in the layout of a release, every parameter random
(layer-scale gammas and registers included), so a register, gamma or position entry out of place shows.
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from workbench.interop import load_pretrained
from workbench.models.explain import EXPLICIT_ATOL, EXPLICIT_RTOL
from workbench.viz import capture, record

from .tiny import tiny_setr_encoder

ONE_LINE = r"[^\n]*$"

# Release layouts as timm builds them: the keywords the source and the segmentor share.
LAYOUTS = {
    # DINOv2 with registers (timm's vit_*_reg4_dinov2): patch 14, no position on class or registers
    "dinov2_reg4": dict(
        patch_size=14, img_size=(42, 70), reg_tokens=4, no_embed_class=True, init_values=1e-5
    ),
    # DeiT-3: a class token without a position entry, layer scale
    "deit3": dict(patch_size=16, img_size=(48, 80), no_embed_class=True, init_values=1e-6),
    # timm's default layout with registers: position entries for the class token and every register
    "reg4_embed_class": dict(patch_size=16, img_size=(48, 80), reg_tokens=4),
    # timm's vit_*_reg4_gap: registers and no class token
    "reg4_gap": dict(patch_size=16, img_size=(48, 80), reg_tokens=4, no_embed_class=True, class_token=False),
}


def _source(layout: str) -> VisionTransformer:
    pool = "avg" if LAYOUTS[layout].get("class_token") is False else "token"
    source = VisionTransformer(
        embed_dim=32, depth=2, num_heads=2, num_classes=10, global_pool=pool, **LAYOUTS[layout]
    )
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_(0, 0.3)
    return source.eval()


def _setr(decoder: str = "naive", **keywords) -> torch.nn.Module:
    return tiny_setr_encoder(decoder, 2, **keywords)


def _saved(source: VisionTransformer, tmp_path, name: str):
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    return path


def _feature_gap(source: VisionTransformer, setr: torch.nn.Module) -> float:
    """Max |difference| between the source's ``forward_features`` patch tokens and the SETR encoder's
    last block output through the source's final norm, at the source's own size."""
    images = torch.randn(2, 3, *source.patch_embed.img_size)
    with torch.no_grad():
        theirs = source.forward_features(images)[:, source.num_prefix_tokens :]
        ours = source.norm(setr.backbone.forward_dense(images)[-1].flatten(2).transpose(1, 2))
    return (theirs - ours).abs().max().item()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_release_loads_into_a_segmentor_built_in_its_layout_with_its_features(layout, tmp_path):
    source = _source(layout)
    model = _setr(**LAYOUTS[layout])
    assert model.backbone.num_prefix_tokens == source.num_prefix_tokens
    assert model.backbone.pos_embed.shape == source.pos_embed.shape
    report = load_pretrained(model, _saved(source, tmp_path, layout))
    assert report.clean, report
    assert _feature_gap(source, model) < 1e-6
    assert torch.equal(model.backbone.pos_embed, source.pos_embed)
    if source.reg_token is not None:
        assert torch.equal(model.backbone.reg_token, source.reg_token)
    if "init_values" in LAYOUTS[layout]:
        assert torch.equal(model.backbone.blocks[1].ls2.gamma, source.blocks[1].ls2.gamma)


@pytest.mark.parametrize("layout", ["dinov2_reg4", "deit3", "reg4_gap"])
def test_a_no_embed_class_release_loads_into_timms_default_layout_with_zero_prefix_entries(layout, tmp_path):
    source = _source(layout)
    model = _setr(**{**LAYOUTS[layout], "no_embed_class": False})
    report = load_pretrained(model, _saved(source, tmp_path, layout))
    assert report.clean and any("no_embed_class" in note for note in report.notes)
    assert not model.backbone.pos_embed[:, : source.num_prefix_tokens].any()
    assert _feature_gap(source, model) < 1e-6


def test_mla_keeps_the_registers_and_drops_the_class_token(tmp_path):
    source = _source("reg4_embed_class")
    model = _setr("mla", **LAYOUTS["reg4_embed_class"])
    assert model.backbone.cls_token is None and model.backbone.num_prefix_tokens == 4
    report = load_pretrained(model, _saved(source, tmp_path, "reg4"))
    assert report.clean and any("dropped cls_token" in note for note in report.notes)
    assert torch.equal(model.backbone.pos_embed, source.pos_embed[:, 1:])
    with pytest.raises(ValueError, match=r"SETR-MLA .* class_token=True"):
        _setr("mla", class_token=True)


@pytest.mark.parametrize(
    ("layout", "built", "message"),
    [
        (
            "dinov2_reg4",
            dict(init_values=1e-5, no_embed_class=True),
            r"^the checkpoint has 4 register tokens .*build the segmentor with reg_tokens=4",
        ),
        (
            "dinov2_reg4",
            dict(reg_tokens=2, init_values=1e-5),
            r"^the checkpoint has 4 register tokens .*build the segmentor with reg_tokens=4",
        ),
        (
            "deit3",
            dict(reg_tokens=4, init_values=1e-6),
            r"^the checkpoint has no register tokens .*build the segmentor with reg_tokens=0",
        ),
        (
            "deit3",
            dict(no_embed_class=True),
            r"^the checkpoint has layer scale .*build the segmentor with init_values=",
        ),
        (
            "reg4_embed_class",
            dict(reg_tokens=4, init_values=1e-5),
            r"^the checkpoint has no layer scale .*build the segmentor without init_values",
        ),
        (
            "reg4_gap",
            dict(reg_tokens=4, no_embed_class=True),
            r"^the checkpoint has no class token .*build the segmentor with class_token=False",
        ),
        (
            "reg4_embed_class",
            dict(reg_tokens=4, no_embed_class=True),
            r"^the checkpoint adds a position to its prefix tokens .*segmentor with no_embed_class=False",
        ),
    ],
)
def test_a_segmentor_built_otherwise_is_refused_in_one_line_naming_what_to_build(
    layout, built, message, tmp_path
):
    source = _source(layout)
    model = _setr(patch_size=LAYOUTS[layout]["patch_size"], img_size=LAYOUTS[layout]["img_size"], **built)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message + ONE_LINE):
        load_pretrained(model, _saved(source, tmp_path, layout))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _timm_explicit_probs(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attention probabilities from timm's own non-fused Attention.forward (its attn_drop sees them)."""
    probs = {}
    for i, block in enumerate(model.backbone.blocks):
        block.attn.fused_attn = False
        block.attn.forward = Attention.forward.__get__(block.attn)
        block.attn.attn_drop.register_forward_hook(
            lambda _m, _a, out, i=i: probs.__setitem__(f"blocks.{i}", out)
        )
    with torch.no_grad():
        model(images)
    return probs


def test_the_explain_probes_see_class_and_registers_as_prefix_tokens(tmp_path):
    source = _source("dinov2_reg4")
    model = _setr(**LAYOUTS["dinov2_reg4"])
    load_pretrained(model, _saved(source, tmp_path, "dinov2_reg4"))
    images = torch.randn(2, 3, 56, 84)  # another size than the source's: a 4x6 grid
    with torch.no_grad():
        plain = model(images)
        with record(model) as rec:
            recorded = model(images)
        with capture(model) as cached:
            model(images)
    torch.testing.assert_close(recorded, plain, atol=EXPLICIT_ATOL, rtol=EXPLICIT_RTOL)
    reference = _timm_explicit_probs(model, images)
    assert list(rec.attention) == ["blocks.0", "blocks.1"]
    for name, attention in rec.attention.items():
        assert attention.probs.shape == (2, 2, 5 + 24, 5 + 24)
        assert attention.grid == (4, 6) and attention.num_prefix_tokens == 5
        assert attention.tokens.stride == 14 and attention.tokens.image_size == (56, 84)
        torch.testing.assert_close(attention.probs, reference[name], rtol=1e-5, atol=1e-6)
        row = attention.query_map(3, 5)
        torch.testing.assert_close(row.flatten(2), attention.probs[:, :, 5 + 3 * 6 + 5, 5:])
        torch.testing.assert_close(cached[name].query_map(3, 5, sample=1), row[1])


def test_facebooks_deit3_file_names_layer_scale_gamma_and_loads(tmp_path):
    """Facebook's DeiT-3 release writes ``blocks.N.gamma_1`` / ``gamma_2`` inside {"model": ...}; timm
    renames them ``ls1.gamma`` / ``ls2.gamma``, and so does the loader."""
    source = _source("deit3")
    state = {
        key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): value
        for key, value in source.state_dict().items()
    }
    assert "blocks.0.gamma_1" in state
    path = tmp_path / "deit_3_small_224_1k.pth"
    torch.save({"model": state}, path)
    model = _setr(**LAYOUTS["deit3"])
    report = load_pretrained(model, path)
    assert report.clean, report
    assert _feature_gap(source, model) < 1e-6
