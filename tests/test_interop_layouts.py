"""Position-embedding layouts of released ViTs: non-square grids, no_embed_class, registers, saved sizes.

Each stand-in is a tiny timm ``VisionTransformer`` (or GPViT export) saved as its release would be; a
load either gives the source's own features or is refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

from workbench.cli import main
from workbench.interop import load_pretrained
from workbench.interop.release_file import save_release_file
from workbench.models.layers import resample_pos_embed

from .test_interop import _jax_arrays
from .tiny import tiny_gpvit, tiny_setr_encoder

ONE_LINE = r"[^\n]*$"


def _setr(decoder: str, img_size) -> torch.nn.Module:
    return tiny_setr_encoder(decoder, 4, img_size=img_size)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random, so that a class token, position entry or register out of place shows."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model.eval()


def _timm_vit(img_size, **kwargs) -> VisionTransformer:
    return _randomised(
        VisionTransformer(
            img_size=img_size, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=10, **kwargs
        )
    )


def _feature_gap(source: VisionTransformer, setr: torch.nn.Module) -> float:
    """Max |difference| between the source's ``forward_features`` patch tokens and the SETR encoder's
    last block output (B, C, h, w) through the source's final norm, at the source's own size."""
    images = torch.randn(2, 3, *source.patch_embed.img_size)
    with torch.no_grad():
        theirs = source.forward_features(images)[:, source.num_prefix_tokens :]
        ours = source.norm(setr.backbone.forward_dense(images)[-1].flatten(2).transpose(1, 2))
    return (theirs - ours).abs().max().item()


def test_a_class_token_and_a_3x5_grid_load_exactly_or_are_refused(tmp_path):
    source = _timm_vit((48, 80))
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    naive = _setr("naive", (48, 80))
    assert load_pretrained(naive, tmp_path / "vit.pth").clean
    assert _feature_gap(source, naive) < 1e-6
    mla = _setr("mla", (48, 80))
    load_pretrained(mla, tmp_path / "vit.pth")
    assert torch.equal(mla.backbone.pos_embed, source.pos_embed[:, 1:])
    # 16 entries beside a class token: also a 4x4 grid without the class entry, the grid of this model
    with pytest.raises(
        ValueError, match=r"^cannot tell .* 3x5 or 5x3 with the prefix entries, or 4x4 without"
    ):
        load_pretrained(_setr("mla", 64), tmp_path / "vit.pth")


def test_no_embed_class_loads_exactly_with_a_zero_class_entry(tmp_path):
    source = _timm_vit((48, 80), no_embed_class=True)
    torch.save(source.state_dict(), tmp_path / "deit3.pth")
    model = _setr("pup", (48, 80))
    report = load_pretrained(model, tmp_path / "deit3.pth")
    assert report.clean and any("no_embed_class" in note for note in report.notes)
    assert _feature_gap(source, model) < 1e-6
    assert not model.backbone.pos_embed[:, 0].any()


def test_registers_are_refused_in_one_line_naming_what_holds_them(tmp_path):
    source = _timm_vit((48, 80), reg_tokens=4, no_embed_class=True)
    torch.save(source.state_dict(), tmp_path / "dinov2_reg4.pth")
    model = _setr("naive", (48, 80))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^the checkpoint has 4 register tokens .*reg_tokens=4" + ONE_LINE):
        load_pretrained(model, tmp_path / "dinov2_reg4.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_size_saved_beside_the_file_or_pos_grid_decides(tmp_path):
    """4x4 beside a class token reads two ways (3x5 with its entry); timm's config.json or pos_grid tells."""
    source = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=2,
        num_classes=10,
        no_embed_class=True,
    )
    _randomised(source)
    save_for_hf(source, tmp_path / "hub")
    model = _setr("naive", (48, 80))
    report = load_pretrained(model, tmp_path / "hub" / "pytorch_model.bin")
    assert any("4x4 grid (config.json beside the file" in note for note in report.notes)
    expected = resample_pos_embed(source.pos_embed, (3, 5), (4, 4), rule="bilinear")
    torch.testing.assert_close(model.backbone.pos_embed[:, 1:], expected, rtol=0, atol=0)
    at_own_size = _setr("naive", 64)
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"^cannot tell .*pass pos_grid=\(H, W\)" + ONE_LINE):
        load_pretrained(at_own_size, tmp_path / "bare.pth")
    load_pretrained(at_own_size, tmp_path / "bare.pth", pos_grid=(4, 4))
    assert _feature_gap(source, at_own_size) < 1e-6
    with pytest.raises(ValueError, match=r"^pos_grid=5x5 gives 25 position entries, but pos_embed has 16"):
        load_pretrained(at_own_size, tmp_path / "bare.pth", pos_grid=(5, 5))


def test_a_4x8_grid_loads_at_its_size_and_resamples_with_pos_grid(tmp_path, capsys):
    source = _timm_vit((64, 128))
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    same = _setr("pup", (64, 128))
    assert load_pretrained(same, tmp_path / "vit.pth").clean
    assert _feature_gap(source, same) < 1e-6
    with pytest.raises(ValueError, match=r"^cannot tell .*: it reads as 4x8 or 8x4 with the prefix entries;"):
        load_pretrained(_setr("pup", 64), tmp_path / "vit.pth")
    command = ["convert", str(tmp_path / "vit.pth"), str(tmp_path / "out"), "--model", "setr_pup_vit_base"]
    command += [f"--model-arg={arg}" for arg in ("embed_dim=32", "depth=4", "num_heads=2", "img_size=64")]
    command += ["--model-arg=decode_layers=[3]", "--model-arg=aux_layers=[1]"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: cannot tell the position grid") and err.count("\n") == 1
    assert main([*command, "--pos-grid", "4x8"]) == 0
    assert "resampled pos_embed 4x8 -> 4x4 (bilinear)" in capsys.readouterr().out
    assert main([*command[:2], str(tmp_path / "other"), *command[3:], "--pos-grid", "4by8"]) == 2
    assert capsys.readouterr().err == "workbench: --pos-grid expects HxW in tokens (e.g. 24x32), got '4by8'\n"


def test_gpvit_exported_at_64x128_round_trips_and_resamples_with_pos_grid(tmp_path):
    original = _randomised(tiny_gpvit(img_size=(64, 128)))
    save_release_file(original, "gpvit", tmp_path / "gpvit.pth")
    copy = tiny_gpvit(img_size=(64, 128)).eval()
    assert load_pretrained(copy, tmp_path / "gpvit.pth").clean
    images = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(original(images), copy(images))
    square = tiny_gpvit(img_size=64)
    with pytest.raises(
        ValueError, match=r"^cannot tell .*128 entries.*: it reads as 8x16 or 16x8;" + ONE_LINE
    ):
        load_pretrained(square, tmp_path / "gpvit.pth")
    load_pretrained(square, tmp_path / "gpvit.pth", pos_grid=(8, 16))
    expected = resample_pos_embed(original.pos_embed, (8, 8), (8, 16), rule="bicubic")
    torch.testing.assert_close(square.pos_embed, expected, rtol=0, atol=0)


def test_what_a_converter_trips_on_is_one_line(tmp_path):
    arrays = _jax_arrays()
    arrays["embedding/kernel"] = np.zeros((16, 3), np.float32)  # not the HWIO kernel of Google's layout
    np.savez(tmp_path / "vit.npz", **arrays)
    with pytest.raises(
        ValueError, match=r"^cannot convert .*vit\.npz as a jax checkpoint: RuntimeError" + ONE_LINE
    ):
        load_pretrained(_setr("naive", 64), tmp_path / "vit.npz")
