"""SETR's decoders on any timm ViT encoder (``workbench.models.setr_timm``): tiny encoders built from
timm's own classes (no downloads), through forward and losses, the taps, freezing, weight files, the
explain probes, refusals and a config-driven training step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

import workbench
from workbench.config import OptimConfig, load_config
from workbench.engine import train
from workbench.engine.optim import param_groups
from workbench.models import SETR, TimmSETR, create_segmentor
from workbench.models.explain import EXPLICIT_ATOL, EXPLICIT_RTOL
from workbench.models.setr_timm import default_layers
from workbench.viz import capture

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = {"vit_small_patch14_reg4_dinov2": 14, "deit3_small_patch16_224": 16, "eva02_tiny_patch14_224": 14}
TINY = dict(depth=2, embed_dim=48, num_heads=2)
HEADS = dict(head_channels=16, mla_channels=16, mla_head_channels=8)
ONE_LINE = r"[^\n]*$"


def _segmentor(
    decoder: str = "setr_pup", encoder: str = "vit_small_patch14_reg4_dinov2", **kwargs
) -> TimmSETR:
    depth = 4 if decoder == "setr_mla" else 2  # MLA reads four distinct blocks
    encoder_kwargs = {
        **TINY,
        "depth": depth,
        "img_size": 4 * ENCODERS[encoder],
        **kwargs.pop("encoder_kwargs", {}),
    }
    return create_segmentor(
        decoder, encoder=encoder, num_classes=5, encoder_kwargs=encoder_kwargs, **HEADS, **kwargs
    )


def _images(patch: int, seed: int = 0) -> torch.Tensor:
    """Two non-square inputs of 4 x 6 patches."""
    return torch.randn(2, 3, 4 * patch, 6 * patch, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("decoder", ["setr_naive", "setr_pup", "setr_mla"])
def test_every_decoder_segments_at_a_non_square_size_and_every_parameter_learns(decoder, encoder):
    model = _segmentor(decoder, encoder)
    images = _images(ENCODERS[encoder])
    assert model.size_divisor == ENCODERS[encoder]
    assert model(images).shape == (2, 5, *images.shape[-2:])
    model.losses(images, torch.randint(0, 5, (2, *images.shape[-2:])))["loss"].backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent, f"no gradient: {silent}"


def test_the_decoder_reads_raw_grid_tokens_without_class_token_or_registers():
    model = _segmentor("setr_naive").eval()
    vit, images = model.backbone.vit, _images(14)
    assert vit.num_prefix_tokens == 5  # class token + 4 registers
    block_outputs, head_inputs = {}, []
    for i in model.backbone.out_indices:
        vit.blocks[i].register_forward_hook(lambda _m, _a, out, i=i: block_outputs.__setitem__(i, out))
    model.decode_head.register_forward_pre_hook(lambda _m, args: head_inputs.append(args[0]))
    with torch.no_grad():
        model(images)
    last = block_outputs[model.backbone.out_indices[-1]]  # (B, 5 + 4*6, C), no final norm
    assert last.shape[1] == 5 + 4 * 6
    grid = last[:, 5:].transpose(1, 2).reshape(2, 48, 4, 6)
    assert torch.equal(head_inputs[0], grid)


def test_taps_are_the_papers_for_12_and_24_layers_and_scaled_otherwise():
    assert default_layers("naive", "official", 12) is None and default_layers("mla", "mmseg", 24) is None
    # 1-based layer l of 24 -> round(l * 6 / 24), halves up; 0-based here.
    assert default_layers("naive", "official", 6) == ((5,), (2, 3, 4))
    assert default_layers("pup", "official", 6) == ((5,), (2, 3, 4, 5))
    assert default_layers("pup", "mmseg", 6) == ((5,), (2, 3, 4))
    assert default_layers("mla", "official", 6) == ((1, 2, 4, 5), ())
    assert default_layers("mla", "official", 4) == ((0, 1, 2, 3), ())
    with pytest.raises(ValueError, match="four distinct encoder blocks; the encoder has 3"):
        default_layers("mla", "official", 3)
    paper = _segmentor("setr_naive", encoder_kwargs=dict(depth=12))
    assert paper.backbone.out_indices == (2, 5, 8, 11)  # SETR-Naive-Base: Z^3/6/9 aux, Z^12 decoded
    scaled = _segmentor("setr_pup", encoder_kwargs=dict(depth=6), aux_heads=False)
    assert scaled.backbone.out_indices == (5,) and len(scaled.backbone.vit.blocks) == 6


def test_a_frozen_encoder_takes_no_gradient_and_stays_in_eval_mode():
    model = _segmentor(freeze_encoder=True, encoder_kwargs=dict(drop_path_rate=0.5)).train()
    assert model.frozen_encoder and not _segmentor().frozen_encoder
    assert not any(m.training for m in model.backbone.modules())
    assert model.decode_head.training and all(head.training for head in model.aux_heads)
    images = _images(14)
    with torch.no_grad():  # drop-path would make two training-mode passes differ
        assert all(
            map(torch.equal, model.backbone.forward_dense(images), model.backbone.forward_dense(images))
        )
    model.losses(images, torch.randint(0, 5, (2, *images.shape[-2:])))["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.decode_head.parameters())
    optimised = {id(p) for group in param_groups(model, OptimConfig()) for p in group["params"]}
    decoder = {id(p) for name, p in model.named_parameters() if not name.startswith("backbone.")}
    assert optimised == decoder


def test_encoder_checkpoint_loads_the_files_weights(tmp_path):
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", **TINY, img_size=56, num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "encoder.pth")
    model = _segmentor("setr_naive", encoder_checkpoint=tmp_path / "encoder.pth")
    saved, loaded = vit.state_dict(), model.backbone.vit.state_dict()
    assert set(loaded) <= set(saved) and "blocks.1.attn.qkv.weight" in loaded
    assert all(torch.equal(value, saved[key]) for key, value in loaded.items())
    random = _segmentor("setr_naive").backbone.vit.state_dict()
    assert not torch.equal(random["blocks.0.attn.qkv.weight"], loaded["blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match="checkpoint 'missing.pth' is not a file" + ONE_LINE):
        _segmentor(encoder_checkpoint="missing.pth")


def test_the_explain_probes_record_the_forward_path_and_answer_clicks():
    model = _segmentor("setr_pup").eval()
    images = _images(14, seed=1)
    with torch.no_grad():
        fast = model(images)
        with workbench.viz.record(model) as recording:
            recorded = model(images)
        with capture(model) as cached:
            model(images)
    assert_close(recorded, fast, atol=EXPLICIT_ATOL, rtol=EXPLICIT_RTOL)
    assert list(recording.attention) == ["blocks.0", "blocks.1"]
    for name, full in recording.attention.items():
        assert full.probs.shape == (2, 2, 5 + 24, 5 + 24) and full.grid == (4, 6)
        for row, col in ((0, 0), (3, 5), (1, 3)):
            assert_close(cached[name].query_map(row, col, sample=1), full.query_map(row, col)[1])
    session = workbench.Predictor(model).open(
        (np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)
    )
    assert session.attention_at(30, 45, "blocks.1").shape == (60, 90)


@pytest.mark.parametrize(
    ("name", "encoder", "message"),
    [
        (
            "setr_pup",
            "vit_not_a_model",
            "unknown timm model 'vit_not_a_model': expected a timm plain ViT",
        ),
        ("setr_pup", "resnet18", "resnet18 is not a timm plain ViT that takes any input size"),
        ("setr_pup", None, "setr_pup needs encoder=, the name of a timm plain ViT"),
        ("setr_pup_vit_base", "deit3_small_patch16_224", "encoder= goes with a bare SETR decoder name"),
    ],
)
def test_refusals_name_what_is_expected(name, encoder, message):
    with pytest.raises(ValueError, match=message + ONE_LINE):
        create_segmentor(name, encoder=encoder, num_classes=5)


def test_registered_names_build_as_before():
    model = create_segmentor(
        "setr_naive_vit_base", num_classes=5, embed_dim=32, depth=12, num_heads=2, img_size=64
    )
    assert type(model) is SETR and model.backbone.out_indices == (2, 5, 8, 11)


def test_a_config_names_the_encoder_and_one_step_trains_only_the_decoder(tmp_path):
    vit = timm.create_model("deit3_small_patch16_224", **TINY, img_size=64, num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "deit3.pth")
    kwargs = (
        "{encoder: deit3_small_patch16_224, encoder_kwargs: {depth: 2, embed_dim: 48, num_heads: 2, "
        f"img_size: 64}}, encoder_checkpoint: {tmp_path / 'deit3.pth'}, freeze_encoder: true, head_channels: 16}}"
    )
    overrides = ["model.name=setr_pup", f"model.kwargs={kwargs}", "iters=1", "checkpoint_interval=1"]
    cfg = load_config(ROOT / "configs" / "tiny_setr.yaml", [f"work_dir={tmp_path / 'run'}", *overrides])
    train(cfg, progress=False)
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "iter_0000001" / "model.safetensors"))
    encoder = {
        k.removeprefix("backbone.vit."): v for k, v in trained.items() if k.startswith("backbone.vit.")
    }
    saved = vit.state_dict()
    assert encoder and all(torch.equal(value, saved[key]) for key, value in encoder.items())
    assert "decode_head.classifier.weight" in trained


def test_a_saved_run_loads_without_its_encoder_file(tmp_path):
    """A run started from an encoder file predicts from its own checkpoint once that file is gone."""
    from workbench.build import build_model
    from workbench.config import load_config
    from workbench.inference import load_predictor
    from workbench.interop.checkpoint import save_weights

    encoder_kwargs = dict(TINY, img_size=64)
    vit = timm.create_model("deit3_small_patch16_224", pretrained=False, **encoder_kwargs)
    encoder_file = tmp_path / "encoder.pth"
    torch.save(vit.state_dict(), encoder_file)
    cfg = load_config("tiny_setr")
    cfg.model.name = "setr_naive"
    cfg.model.kwargs = dict(
        **HEADS,
        encoder="deit3_small_patch16_224",
        encoder_kwargs=encoder_kwargs,
        encoder_checkpoint=str(encoder_file),
    )
    model = build_model(cfg)
    folder = tmp_path / "run"
    folder.mkdir()
    save_weights(folder, model, cfg)
    encoder_file.unlink()
    predictor = load_predictor(folder)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    assert predictor(image).labels.shape == (40, 56)
