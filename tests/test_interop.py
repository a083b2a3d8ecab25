"""Checkpoint interop: every format, written in its released layout, loads with nothing left over."""

from __future__ import annotations

import http.server
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer, _load_weights

import workbench
from workbench.cli import main
from workbench.interop import CATALOGUE, download, load_pretrained, load_weights
from workbench.interop.checkpoint import checkpoint_config, load_state, save_checkpoint
from workbench.interop.download import resolve_source
from workbench.interop.gpvit import to_official
from workbench.interop.vit import jax_to_timm
from workbench.models import list_models, model_info
from workbench.models.gpvit import gpvit_l1
from workbench.models.layers import resample_pos_embed

from .test_gpvit import _official_l1_keys
from .tiny import TINY_GPVIT, TINY_HLG, tiny_gpvit_segmentor, tiny_setr_hlg


def _distinct(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A different random tensor per key (so a tensor landing in the wrong place shows)."""
    out = {}
    for i, (key, shape) in enumerate(sorted(shapes.items())):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(i, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=torch.Generator().manual_seed(i)) + 0.5
        else:
            out[key] = torch.randn(shape, generator=torch.Generator().manual_seed(i))
    return out


def _tiny_setr(decoder: str, flavour: str = "official", **kwargs):
    layers = (
        dict(decode_layers=(0, 1, 2, 3)) if decoder == "mla" else dict(decode_layers=(3,), aux_layers=(1, 3))
    )
    tiny = dict(
        embed_dim=32,
        depth=4,
        num_heads=2,
        img_size=96,
        head_channels=16,
        mla_channels=16,
        mla_head_channels=8,
    )
    return workbench.create_segmentor(
        f"setr_{decoder}_vit_base", num_classes=5, flavour=flavour, **{**tiny, **layers, **kwargs}
    )


def _tiny_timm_vit(**kwargs) -> dict[str, torch.Tensor]:
    vit = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=10, **kwargs
    )
    return {k: v + 0.01 * i for i, (k, v) in enumerate(vit.state_dict().items())}


def test_official_gpvit_l1_classifier_with_its_333_tensors(tmp_path):
    source = _distinct(_official_l1_keys())
    path = tmp_path / "gpvit_l1_in1k_300e.pth"
    torch.save({"meta": {"epoch": 300, "mmcls_version": "0.25.0"}, "state_dict": source}, path)
    model = gpvit_l1()
    report = load_pretrained(model, path)
    assert report.format == "gpvit" and report.clean and not report.kept and len(report.loaded) == 333
    landed = to_official(model.state_dict())
    assert landed.keys() == source.keys()
    assert all(torch.equal(landed[k], v) for k, v in source.items())


def test_gpvit_imagenet_weights_into_a_segmentor_backbone(tmp_path):
    source = _distinct(_official_l1_keys())
    torch.save({"state_dict": source}, tmp_path / "in1k.pth")
    model = workbench.create_segmentor("gpvit_l1_segformer", num_classes=150)
    report = load_pretrained(model, tmp_path / "in1k.pth")
    assert report.clean and all(k.startswith(("decode_head.", "backbone.out_norms.")) for k in report.kept)
    assert any("neck and head" in n for n in report.notes) and any(
        "out_norms tensors are new" in n for n in report.notes
    )
    assert torch.equal(model.backbone.blocks[1].group_tokens, source["backbone.layers.1.group_token"])


def test_gpvit_segmentor_round_trip_gives_identical_outputs(tmp_path):
    original = tiny_gpvit_segmentor("upernet").eval()
    torch.save({"state_dict": to_official(original.state_dict()), "meta": {}}, tmp_path / "upernet.pth")
    copy = tiny_gpvit_segmentor("upernet").eval()
    report = load_pretrained(copy, tmp_path / "upernet.pth")
    assert report.clean and not report.kept
    images = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(original(images), copy(images))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_vit_weights_into_setr_with_bilinear_grid_resampling(tmp_path, suffix):
    from safetensors.torch import save_file

    source = _tiny_timm_vit()
    path = tmp_path / f"vit{suffix}"
    save_file(source, str(path)) if suffix == ".safetensors" else torch.save(source, path)
    model = _tiny_setr("pup")
    report = load_pretrained(model, path)
    assert report.format == "timm" and report.clean
    assert all(k.startswith(("decode_head.", "aux_heads.")) for k in report.kept)
    assert torch.equal(model.backbone.blocks[2].attn.qkv.weight, source["blocks.2.attn.qkv.weight"])
    grid = source["pos_embed"][:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False)
    expected = torch.cat([source["pos_embed"][:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)


def test_mla_drops_the_class_token(tmp_path):
    torch.save(_tiny_timm_vit(), tmp_path / "vit.pth")
    model = _tiny_setr("mla")
    report = load_pretrained(model, tmp_path / "vit.pth")
    assert report.clean and model.backbone.pos_embed.shape == (1, 36, 32)
    assert any("cls_token" in note for note in report.notes)


def test_deit_distilled_weights(tmp_path):
    deit = VisionTransformerDistilled(
        img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=10
    )
    source = deit.state_dict()
    assert source["pos_embed"].shape[1] == 18  # class + distillation + 16 patches
    torch.save({"model": source}, tmp_path / "deit.pth")
    model = _tiny_setr("naive")
    report = load_pretrained(model, tmp_path / "deit.pth")
    assert report.format == "deit" and report.clean
    assert any("distillation token's position" in n for n in report.notes)
    torch.testing.assert_close(model.backbone.pos_embed[:, 0].detach(), source["pos_embed"][:, 0])


def _jax_arrays(depth: int = 4, dim: int = 32, heads: int = 2) -> dict[str, np.ndarray]:
    """Google's ViT .npz layout (Transformer/encoderblock_N/...), random values."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    arrays = {"embedding/kernel": r(16, 16, 3, dim), "embedding/bias": r(dim), "cls": r(1, 1, dim)}
    arrays["Transformer/posembed_input/pos_embedding"] = r(1, 17, dim)
    for n in range(depth):
        p = f"Transformer/encoderblock_{n}/"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            arrays[p + f"{norm}/scale"], arrays[p + f"{norm}/bias"] = r(dim), r(dim)
        for x in ("query", "key", "value"):
            arrays[p + f"MultiHeadDotProductAttention_1/{x}/kernel"] = r(dim, heads, dim // heads)
            arrays[p + f"MultiHeadDotProductAttention_1/{x}/bias"] = r(heads, dim // heads)
        arrays[p + "MultiHeadDotProductAttention_1/out/kernel"] = r(heads, dim // heads, dim)
        arrays[p + "MultiHeadDotProductAttention_1/out/bias"] = r(dim)
        arrays[p + "MlpBlock_3/Dense_0/kernel"], arrays[p + "MlpBlock_3/Dense_0/bias"] = (
            r(dim, 4 * dim),
            r(4 * dim),
        )
        arrays[p + "MlpBlock_3/Dense_1/kernel"], arrays[p + "MlpBlock_3/Dense_1/bias"] = (
            r(4 * dim, dim),
            r(dim),
        )
    arrays["Transformer/encoder_norm/scale"], arrays["Transformer/encoder_norm/bias"] = r(dim), r(dim)
    arrays["head/kernel"], arrays["head/bias"] = r(dim, 10), r(10)
    return arrays


def test_jax_npz_conversion_agrees_with_timms_own_loader(tmp_path):
    arrays = _jax_arrays()
    np.savez(tmp_path / "vit.npz", **arrays)
    reference = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=10
    )
    _load_weights(reference, str(tmp_path / "vit.npz"))
    ours = jax_to_timm({k: torch.from_numpy(v) for k, v in arrays.items()})
    for key, value in ours.items():
        torch.testing.assert_close(value, reference.state_dict()[key], msg=key)
    model = _tiny_setr("naive")
    report = load_pretrained(model, tmp_path / "vit.npz")
    assert report.format == "jax" and report.clean
    torch.testing.assert_close(
        model.backbone.blocks[3].mlp.fc2.weight.detach(), reference.blocks[3].mlp.fc2.weight
    )


def test_npz_missing_an_array_is_named(tmp_path):
    arrays = _jax_arrays()
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(
        ValueError, match="lacks the array 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias'"
    ):
        load_pretrained(_tiny_setr("naive"), tmp_path / "broken.npz")


def _bn(prefix: str, n: int) -> dict[str, tuple]:
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def _vit_backbone(
    prefix: str = "backbone.", mmseg: bool = False, depth: int = 4, dim: int = 32
) -> dict[str, tuple]:
    if mmseg:
        keys = {
            f"{prefix}patch_embed.projection.weight": (dim, 3, 16, 16),
            f"{prefix}patch_embed.projection.bias": (dim,),
        }
        for n in range(depth):
            p = f"{prefix}layers.{n}."
            keys |= {
                p + "ln1.weight": (dim,),
                p + "ln1.bias": (dim,),
                p + "ln2.weight": (dim,),
                p + "ln2.bias": (dim,),
            }
            keys |= {p + "attn.attn.in_proj_weight": (3 * dim, dim), p + "attn.attn.in_proj_bias": (3 * dim,)}
            keys |= {p + "attn.attn.out_proj.weight": (dim, dim), p + "attn.attn.out_proj.bias": (dim,)}
            keys |= {p + "ffn.layers.0.0.weight": (4 * dim, dim), p + "ffn.layers.0.0.bias": (4 * dim,)}
            keys |= {p + "ffn.layers.1.weight": (dim, 4 * dim), p + "ffn.layers.1.bias": (dim,)}
    else:
        keys = {prefix + k: tuple(v.shape) for k, v in _tiny_timm_vit().items() if not k.startswith("head.")}
    return keys | {f"{prefix}cls_token": (1, 1, dim), f"{prefix}pos_embed": (1, 17, dim)}


def test_official_setr_pup_release_layout(tmp_path):
    """fudan-zvg/SETR names: conv_i / syncbn_fc_i, classifier conv_4, aux heads, unused conv_seg."""
    k, c = 5, 16
    keys = _vit_backbone() | {"decode_head.norm.weight": (32,), "decode_head.norm.bias": (32,)}
    for i in range(4):
        keys |= {
            f"decode_head.conv_{i}.weight": (c, 32 if i == 0 else c, 3, 3),
            f"decode_head.conv_{i}.bias": (c,),
        }
        keys |= _bn(f"decode_head.syncbn_fc_{i}", c)
    keys |= {"decode_head.conv_4.weight": (k, c, 1, 1), "decode_head.conv_4.bias": (k,)}
    keys |= {"decode_head.conv_seg.weight": (k, 512, 1, 1), "decode_head.conv_seg.bias": (k,)}
    for a in range(2):
        p = f"auxiliary_head.{a}."
        keys |= {
            p + "norm.weight": (32,),
            p + "norm.bias": (32,),
            p + "conv_0.weight": (c, 32, 3, 3),
            p + "conv_0.bias": (c,),
        }
        keys |= _bn(p + "syncbn_fc_0", c) | {p + "conv_1.weight": (k, c, 1, 1), p + "conv_1.bias": (k,)}
        keys |= {p + "conv_seg.weight": (k, 512, 1, 1), p + "conv_seg.bias": (k,)}
    source = _distinct(keys)
    torch.save({"meta": {}, "state_dict": source}, tmp_path / "setr_pup.pth")
    model = _tiny_setr("pup")
    report = load_pretrained(model, tmp_path / "setr_pup.pth")
    assert report.format == "setr_official" and report.clean and not report.kept
    assert torch.equal(model.decode_head.classifier.weight, source["decode_head.conv_4.weight"])
    assert torch.equal(
        model.decode_head.stages[3].bn.running_var, source["decode_head.syncbn_fc_3.running_var"]
    )
    assert torch.equal(model.aux_heads[1].classifier.bias, source["auxiliary_head.1.conv_1.bias"])


def test_official_setr_mla_release_layout(tmp_path):
    k, m, h = 5, 16, 8
    keys = _vit_backbone()
    for j in range(4):
        keys |= {f"backbone.norm_{j}.weight": (32,), f"backbone.norm_{j}.bias": (32,)}
        keys |= {f"backbone.mla.mla_p{j + 2}_1x1.0.weight": (m, 32, 1, 1)} | _bn(
            f"backbone.mla.mla_p{j + 2}_1x1.1", m
        )
        keys |= {f"backbone.mla.mla_p{j + 2}.0.weight": (m, m, 3, 3)} | _bn(f"backbone.mla.mla_p{j + 2}.1", m)
        keys |= {f"decode_head.mlahead.head{j + 2}.0.weight": (h, m, 3, 3)} | _bn(
            f"decode_head.mlahead.head{j + 2}.1", h
        )
        keys |= {f"decode_head.mlahead.head{j + 2}.3.weight": (h, h, 3, 3)} | _bn(
            f"decode_head.mlahead.head{j + 2}.4", h
        )
        keys |= {
            f"auxiliary_head.{j}.aux.weight": (k, m, 1, 1),
            f"auxiliary_head.{j}.conv_seg.weight": (k, 512, 1, 1),
        }
        keys |= {f"auxiliary_head.{j}.conv_seg.bias": (k,)}
    keys |= {"decode_head.cls.weight": (k, 4 * h, 3, 3), "decode_head.cls.bias": (k,)}
    keys |= {"decode_head.conv_seg.weight": (k, 512, 1, 1), "decode_head.conv_seg.bias": (k,)}
    source = _distinct(keys)
    torch.save({"state_dict": source}, tmp_path / "setr_mla.pth")
    model = _tiny_setr("mla")
    report = load_pretrained(model, tmp_path / "setr_mla.pth")
    assert report.clean and not report.kept
    assert torch.equal(model.neck.lateral_convs[3].conv.weight, source["backbone.mla.mla_p5_1x1.0.weight"])
    assert torch.equal(model.neck.stream_convs[0].bn.bias, source["backbone.mla.mla_p2.1.bias"])
    assert torch.equal(
        model.decode_head.stream_heads[2][1].conv.weight, source["decode_head.mlahead.head4.3.weight"]
    )
    assert torch.equal(model.aux_heads[3].weight, source["auxiliary_head.3.aux.weight"])


@pytest.mark.parametrize("decoder", ["naive", "mla"])
def test_mmseg_setr_layout(tmp_path, decoder):
    k, c = 5, 16
    keys = _vit_backbone(mmseg=True) | {"backbone.ln1.weight": (32,), "backbone.ln1.bias": (32,)}
    if decoder == "naive":
        keys |= {"decode_head.norm.weight": (32,), "decode_head.norm.bias": (32,)}
        keys |= {"decode_head.up_convs.0.0.conv.weight": (c, 32, 1, 1)} | _bn(
            "decode_head.up_convs.0.0.bn", c
        )
        keys |= {"decode_head.conv_seg.weight": (k, c, 1, 1), "decode_head.conv_seg.bias": (k,)}
        for a in range(2):
            p = f"auxiliary_head.{a}."
            keys |= {
                p + "norm.weight": (32,),
                p + "norm.bias": (32,),
                p + "up_convs.0.0.conv.weight": (c, 32, 1, 1),
            }
            keys |= _bn(p + "up_convs.0.0.bn", c) | {
                p + "conv_seg.weight": (k, c, 1, 1),
                p + "conv_seg.bias": (k,),
            }
    else:
        m, h = 16, 8
        for i in range(4):
            keys |= {f"neck.norm.{i}.weight": (32,), f"neck.norm.{i}.bias": (32,)}
            keys |= {f"neck.mla.channel_proj.{i}.conv.weight": (m, 32, 1, 1)} | _bn(
                f"neck.mla.channel_proj.{i}.bn", m
            )
            keys |= {f"neck.mla.feat_extract.{i}.conv.weight": (m, m, 3, 3)} | _bn(
                f"neck.mla.feat_extract.{i}.bn", m
            )
            keys |= {f"decode_head.up_convs.{i}.0.conv.weight": (h, m, 3, 3)} | _bn(
                f"decode_head.up_convs.{i}.0.bn", h
            )
            keys |= {f"decode_head.up_convs.{i}.1.conv.weight": (h, h, 3, 3)} | _bn(
                f"decode_head.up_convs.{i}.1.bn", h
            )
            keys |= {
                f"auxiliary_head.{i}.conv_seg.weight": (k, m, 1, 1),
                f"auxiliary_head.{i}.conv_seg.bias": (k,),
            }
        keys |= {"decode_head.conv_seg.weight": (k, 4 * h, 1, 1), "decode_head.conv_seg.bias": (k,)}
    source = _distinct(keys)
    torch.save({"meta": {}, "state_dict": source}, tmp_path / "mmseg.pth")
    model = _tiny_setr(decoder, flavour="mmseg", **({"aux_layers": (1, 3)} if decoder == "naive" else {}))
    report = load_pretrained(model, tmp_path / "mmseg.pth")
    assert report.format == "mmseg_setr" and report.clean and not report.kept
    assert torch.equal(
        model.backbone.blocks[2].attn.qkv.weight, source["backbone.layers.2.attn.attn.in_proj_weight"]
    )
    assert torch.equal(model.decode_head.classifier.weight, source["decode_head.conv_seg.weight"])


def _released_hlg_names(ours: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """Our HLG keys written with the released backbone's module names (mmseg/models/backbones/hlg.py)."""
    renames = [
        ("stem.", "s0_conv."), (".mlp_step.downsample.", ".down_proj.proj."), (".mlp_step.mlp.0.", ".mlp.fc1."),
        (".mlp_step.mlp.1.", ".mlp.norm1."), (".mlp_step.mlp.3.", ".mlp.fc2."), (".mlp_step.mlp.4.", ".mlp.norm2."),
        (".mlp_step.mlp.6.", ".mlp.fc3."), (".mlp_step.norm.", ".norm2."), (".smooth.block.", ".spatial_smooth.0."),
        (".local_norm.", ".norm0."), (".local_attn.position_bias.", ".pos_local."), (".window_norm.", ".h0_norm."),
        (".query_norm.", ".norm1."), (".attn_norm.", ".norm1."), (".query_conv.", ".aux_q."),
        (".global_attn.position_bias.", ".pos_global."), ("norms.3.", "norm."),
    ]  # fmt: skip
    out = {}
    for key, value in ours.items():
        for a, b in renames:
            key = key.replace(a, b) if not a.startswith(("stem.", "norms.")) or key.startswith(a) else key
        if key.startswith("stages."):
            stage, rest = key.split(".", 2)[1:]
            key = f"block{int(stage) + 1}.{rest}"
        key = key.replace("norms.", "norm_out_") if key.startswith("norms.") else key
        out[key] = tuple(value.shape)
    return out


def test_hlg_released_backbone_layout(tmp_path):
    from workbench.models.hlg import hlg_tiny

    classifier = hlg_tiny(num_classes=10, **TINY_HLG)
    released = _released_hlg_names(classifier.state_dict())
    assert "block4.0.norm1.weight" in released and "block1.1.pos_local.pos3.2.weight" in released
    source = _distinct(released)
    torch.save({"model": source}, tmp_path / "hlg_tiny.pth")
    report = load_pretrained(classifier, tmp_path / "hlg_tiny.pth")
    assert report.format == "hlg" and report.clean and len(report.loaded) == len(source)
    assert torch.equal(classifier.stages[3][0].attn_norm.weight, source["block4.0.norm1.weight"])
    segmentor = tiny_setr_hlg()
    report = load_pretrained(segmentor, tmp_path / "hlg_tiny.pth")
    assert report.clean and all(k.startswith(("decode_head.", "aux_heads.")) for k in report.kept)


def test_workbench_checkpoint_and_head_dropped_for_other_class_counts(tmp_path):
    trained = tiny_gpvit_segmentor("segformer", num_classes=7)
    save_checkpoint(tmp_path, 1, trained, workbench.config.Config(), {})
    model = tiny_gpvit_segmentor("segformer", num_classes=3)
    report = load_pretrained(model, tmp_path)
    assert report.format == "workbench" and report.clean
    assert report.kept == ["decode_head.classifier.bias", "decode_head.classifier.weight"]
    assert torch.equal(model.backbone.pos_embed, trained.backbone.pos_embed)


def test_another_architecture_is_refused_and_nothing_is_loaded(tmp_path):
    torch.save(_tiny_timm_vit(), tmp_path / "vit.pth")
    model = _tiny_setr("naive", embed_dim=64, num_heads=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"(?s)does not fit SETR; nothing was loaded.*mismatched \d+: backbone\.cls_token"
    ):
        load_pretrained(model, tmp_path / "vit.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="loads into SETR segmentors, not GPViTSegmentor"):
        load_pretrained(tiny_gpvit_segmentor("upernet"), tmp_path / "vit.pth")


def test_truncated_and_malicious_files_are_refused(tmp_path):
    torch.save(_tiny_timm_vit(), tmp_path / "vit.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "vit.pth").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cannot read .*cut\.pth \(truncated or not a checkpoint\?\)"):
        load_pretrained(_tiny_setr("naive"), tmp_path / "cut.pth")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(
        ValueError, match=r"refused to load .*evil\.pth: it holds pickled objects other than tensors"
    ):
        load_pretrained(_tiny_setr("naive"), tmp_path / "evil.pth")
    assert not marker.exists()


class _Server:
    """A static file server on 127.0.0.1 that counts requests."""

    def __init__(self, root: Path) -> None:
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                outer.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_cache_integrity_and_offline_errors(tmp_path, monkeypatch):
    import hashlib

    served = tmp_path / "served"
    served.mkdir()
    torch.save(_tiny_timm_vit(), served / "vit-small.pth")
    digest = hashlib.sha256((served / "vit-small.pth").read_bytes()).hexdigest()
    server = _Server(served)
    try:
        cache = tmp_path / "cache"
        path = download(f"{server.url}/vit-small.pth", sha256=digest, cache_dir=cache, progress=False)
        assert path.read_bytes() == (served / "vit-small.pth").read_bytes() and server.requests == 1
        download(f"{server.url}/vit-small.pth", sha256=digest[:8], cache_dir=cache, progress=False)
        assert server.requests == 1  # served from the cache
        with pytest.raises(
            ValueError, match=r"sha256 is [0-9a-f]{64}, expected 0000\.\.\.; the download was discarded"
        ):
            download(
                f"{server.url}/vit-small.pth", sha256="0000", cache_dir=tmp_path / "other", progress=False
            )
        assert not any((tmp_path / "other").iterdir())
        with pytest.raises(ValueError, match=r"cannot download .*missing\.pth"):
            download(f"{server.url}/missing.pth", cache_dir=cache, progress=False)
        release = workbench.interop.Release(
            f"{server.url}/vit-small.pth", "setr_pup_vit_base", "timm", digest[:8]
        )
        monkeypatch.setitem(workbench.interop.CATALOGUE, "tiny_vit_test", release)
        report = load_pretrained(_tiny_setr("pup"), "tiny_vit_test")
        assert report.format == "timm" and report.clean
    finally:
        server.close()
    with pytest.raises(
        ValueError, match=r"cannot download http://127\.0\.0\.1:9/x\.pth: .*Without network access"
    ):
        download("http://127.0.0.1:9/x.pth", cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(
        ValueError, match=r"no direct download link; get it from https://github\.com/fudan-zvg/SETR"
    ):
        load_pretrained(_tiny_setr("pup"), "setr_pup_cityscapes")


def test_convert_command_writes_a_workbench_checkpoint(tmp_path, capsys):
    torch.save({"state_dict": _distinct(_official_l1_keys())}, tmp_path / "gpvit_l1.pth")
    assert (
        main(["convert", str(tmp_path / "gpvit_l1.pth"), str(tmp_path / "out"), "--model", "gpvit_l1"]) == 0
    )
    assert "333 tensors loaded" in capsys.readouterr().out
    model = gpvit_l1()
    workbench.engine.load_weights(model, tmp_path / "out")
    assert (
        main(["convert", str(tmp_path / "gpvit_l1.pth"), str(tmp_path / "bad"), "--model", "gpvit_l2"]) == 2
    )
    assert "does not fit GPViT; nothing was loaded" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_gpvit_position_embedding_resampled_bicubically_for_another_pretraining_size(tmp_path):
    source = _distinct(_official_l1_keys())
    torch.save({"state_dict": source}, tmp_path / "l1.pth")
    model = gpvit_l1(img_size=256)  # a 32 x 32 position grid
    report = load_pretrained(model, tmp_path / "l1.pth")
    assert report.clean and any("28x28 -> 32x32 (bicubic)" in note for note in report.notes)
    grid = source["backbone.pos_embed"].reshape(1, 28, 28, 216).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.pos_embed.detach(), expected.flatten(2).transpose(1, 2))


def test_classifier_head_dropped_when_the_class_count_differs(tmp_path):
    torch.save({"state_dict": _distinct(_official_l1_keys())}, tmp_path / "l1.pth")
    model = gpvit_l1(num_classes=10)
    report = load_pretrained(model, tmp_path / "l1.pth")
    assert report.clean and report.kept == ["head.bias", "head.weight"]
    assert any("(1000, 216) in the source, (10, 216) here" in note for note in report.notes)


def test_converted_segmentor_serves_the_predictor(tmp_path):
    torch.save({"state_dict": _distinct(_official_l1_keys())}, tmp_path / "l1.pth")
    out = tmp_path / "segformer"
    assert main(["convert", str(tmp_path / "l1.pth"), str(out), "--model", "gpvit_l1_segformer"]) == 0
    predictor = workbench.Predictor.from_checkpoint(out, device="cpu")
    prediction = predictor(np.zeros((40, 48, 3), dtype=np.uint8))
    assert prediction.labels.shape == (40, 48) and prediction.colorize().shape == (40, 48, 3)
    assert len(predictor.classes) == 150


def test_every_registered_model_carries_a_timm_pretrained_cfg():
    """The Predictor normalises with ``model.pretrained_cfg``: it must be the training pipeline's."""
    data = workbench.config.Config().data
    for name in list_models():
        info = model_info(name)
        cfg = info.pretrained_cfg
        assert cfg["architecture"] == name and cfg["num_classes"] == info.paper.num_classes, name
        assert cfg["input_size"] == (3, info.paper.input_size, info.paper.input_size), name
        assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD, name
        assert tuple(round(255 * m, 3) for m in cfg["mean"]) == tuple(data.mean), name
        assert cfg["interpolation"] == ("bicubic" if info.task == "classification" else "bilinear"), name
    built = [
        timm.create_model("hlg_tiny", num_classes=2, **TINY_HLG),
        timm.create_model("gpvit_l1", num_classes=2, **TINY_GPVIT),
        tiny_gpvit_segmentor("upernet"),
        _tiny_setr("naive"),
    ]
    for model in built:
        assert model.pretrained_cfg == model_info(model.pretrained_cfg["architecture"]).pretrained_cfg
    built[-1].pretrained_cfg["num_classes"] = 0  # each model owns its copy
    assert _tiny_setr("naive").pretrained_cfg["num_classes"] == 19


@pytest.mark.parametrize("rule", ["bilinear", "bicubic"])
def test_resample_pos_embed_keeps_prefix_tokens_and_follows_the_rule(rule):
    pos_embed = torch.randn(1, 1 + 4 * 6, 8)
    resampled = resample_pos_embed(pos_embed, (8, 9), (4, 6), num_prefix_tokens=1, rule=rule)
    grid = pos_embed[:, 1:].reshape(1, 4, 6, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(8, 9), mode=rule, align_corners=False)
    assert torch.equal(resampled[:, :1], pos_embed[:, :1])
    torch.testing.assert_close(resampled[:, 1:], expected.flatten(2).transpose(1, 2))
    assert resample_pos_embed(pos_embed, (4, 6), (4, 6), 1, rule) is pos_embed
    with pytest.raises(ValueError, match=r"rule must be one of \('bilinear', 'bicubic'\), got 'nearest'"):
        resample_pos_embed(pos_embed, (8, 9), (4, 6), 1, "nearest")


def test_every_catalogue_download_is_hash_checked_and_the_others_say_where_to_get_them():
    downloadable = [name for name, release in CATALOGUE.items() if release.downloadable]
    assert "jx_vit_large_p16_384" in downloadable
    for name, release in CATALOGUE.items():
        assert release.model in list_models() and release.format in workbench.interop.FORMATS, name
        if release.downloadable:  # checked against the published hash, or the first download's
            assert release.url.startswith("https://"), name
            assert release.sha256 is None or re.fullmatch(r"[0-9a-f]{8,64}", release.sha256), name
            continue
        where = re.escape(release.page)
        with pytest.raises(
            ValueError,
            match=rf"^{name} has no direct download link; get it from {where} and pass the file's path",
        ):
            resolve_source(name)


def _mmseg_naive_keys(aux_convs: int) -> dict[str, tuple]:
    """mmseg 1.x SETR-Naive: auxiliary SETRUPHeads with ``num_convs`` [ConvModule, Upsample] stages."""
    k, c = 5, 16
    keys = _vit_backbone(mmseg=True) | {"backbone.ln1.weight": (32,), "backbone.ln1.bias": (32,)}
    for head in ("decode_head.", "auxiliary_head.0.", "auxiliary_head.1."):
        convs = aux_convs if head.startswith("aux") else 1
        keys |= {head + "norm.weight": (32,), head + "norm.bias": (32,)}
        for i in range(convs):
            keys |= {f"{head}up_convs.{i}.0.conv.weight": (c, 32 if i == 0 else c, 1, 1)}
            keys |= _bn(f"{head}up_convs.{i}.0.bn", c)
        keys |= {head + "conv_seg.weight": (k, c, 1, 1), head + "conv_seg.bias": (k,)}
    return keys


def test_mmseg_naive_ade20k_auxiliary_heads_with_two_convs_are_detected(tmp_path, capsys):
    """mmseg's setr_vit-l_naive_8xb2-160k_ade20k-512x512.py gives its auxiliary heads num_convs=2."""
    source = _distinct(_mmseg_naive_keys(aux_convs=2))
    torch.save({"state_dict": source}, tmp_path / "naive_ade20k.pth")
    with pytest.raises(ValueError, match=r"auxiliary heads have 2 conv stages .* build it with aux_convs=2"):
        load_pretrained(_tiny_setr("naive", flavour="mmseg"), tmp_path / "naive_ade20k.pth")
    model = _tiny_setr("naive", flavour="mmseg", aux_convs=2)
    assert model.aux_heads[0].up_scales == (4, 4)  # each mmseg stage upsamples x4
    report = load_pretrained(model, tmp_path / "naive_ade20k.pth")
    assert report.clean and not report.kept and any("2 conv stages" in note for note in report.notes)
    assert torch.equal(
        model.aux_heads[1].stages[1].conv.weight, source["auxiliary_head.1.up_convs.1.0.conv.weight"]
    )
    with pytest.raises(ValueError, match=r"aux_convs .* needs flavour='mmseg'"):
        _tiny_setr("naive", aux_convs=2)
    model_args = ["embed_dim=32", "depth=4", "num_heads=2", "img_size=96", "head_channels=16"]
    model_args += ["decode_layers=[3]", "aux_layers=[1, 3]", "flavour=mmseg", "aux_convs=2"]
    command = ["convert", str(tmp_path / "naive_ade20k.pth"), str(tmp_path / "out")]
    command += ["--model", "setr_naive_vit_base", "--num-classes", "5"]
    assert main([*command, *(x for arg in model_args for x in ("--model-arg", arg))]) == 0
    assert "(aux_convs=2)" in capsys.readouterr().out
    converted = workbench.interop.checkpoint.checkpoint_config(tmp_path / "out")
    assert converted.model.kwargs["aux_convs"] == 2 and converted.model.kwargs["aux_layers"] == [1, 3]
    assert main([*command[:2], str(tmp_path / "out2"), *command[3:], "--model-arg", "depth"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "workbench: --model-arg expects key=value (e.g. aux_convs=2), got 'depth'"
    )


def test_convert_takes_a_workbench_gpvit_run_with_its_model_arguments(tmp_path, capsys):
    trained = tiny_gpvit_segmentor("segformer")
    save_checkpoint(tmp_path / "run", 3, trained, workbench.config.Config(), {})
    args = ["embed_dim=24", "depth=4", "group_layers={1: 8, 3: 4}", "out_indices=[0, 1, 2, 3]"]
    command = ["convert", str(tmp_path / "run"), str(tmp_path / "out"), "--model", "gpvit_l1_segformer"]
    command += ["--num-classes", "5", *(x for arg in args for x in ("--model-arg", arg))]
    assert main(command) == 0
    assert "(workbench): " in capsys.readouterr().out
    copy = tiny_gpvit_segmentor("segformer")
    load_weights(copy, tmp_path / "out")
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), copy.state_dict().values(), strict=True)
    )


def test_damaged_or_incomplete_checkpoints_give_one_line_errors(tmp_path, capsys):
    folder = save_checkpoint(tmp_path, 1, tiny_gpvit_segmentor("segformer"), workbench.config.Config(), {})
    model = tiny_gpvit_segmentor("segformer")
    with pytest.raises(
        ValueError, match=r"checkpoint .*iter_0000001 has no EMA weights \(ema\.safetensors\)"
    ):
        load_pretrained(model, tmp_path, ema=True)
    weights = (folder / "model.safetensors").read_bytes()
    for damaged in (b"", weights[: len(weights) // 2]):
        (folder / "model.safetensors").write_bytes(damaged)
        with pytest.raises(
            ValueError,
            match=r"^cannot read .*model\.safetensors \(truncated or not a checkpoint\?\): [^\n]*$",
        ):
            load_weights(model, tmp_path)
    (folder / "state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"^cannot read .*state\.pt \(truncated or not a checkpoint\?\)"):
        load_state(tmp_path)
    (folder / "config.yaml").write_text("")
    with pytest.raises(ValueError, match=r"config\.yaml is missing or empty"):
        checkpoint_config(folder)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    tiny = [
        "--model-arg",
        "embed_dim=24",
        "--model-arg",
        "depth=4",
        "--model-arg",
        "group_layers={1: 8, 3: 4}",
    ]
    assert (
        main(["convert", str(tmp_path / "notes.txt"), str(tmp_path / "out"), "--model", "gpvit_l1", *tiny])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("workbench: cannot read ") and "notes.txt" in err and err.count("\n") == 1
