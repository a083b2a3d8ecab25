"""The OFFICIAL GPViT-L1 (and its ADE20K UPerNet segmentor), built from the original repository's
source, for side-by-side timing with workbench's implementation. Benchmark use only.

The official code (ChenhongyiYang/GPViT) is not vendored: its model files are read at run time from
a checkout -- a normal directory or a bare git repository (read with ``git show``) -- given by
``--repo``, the ``GPVIT_REPO`` environment variable, or the default mirror path below. They are
written into a temporary package tree next to a copy of ``shims/`` (minimal, faithful stand-ins for
the mmcv 1.x / mmcls / mmseg symbols they import, since those packages pin old PyTorch versions)
and imported from there; ``sys.path`` is changed only when a builder here is called.

    build_official_gpvit_l1()    the mmseg ``GPViTSeg`` backbone of configs/gpvit/gpvit_l1_upernet.py
                                 (eval mode): images -> tuple of 4 (B, 216, H/8, W/8) maps
    build_official_upernet_l1()  that backbone + the official UPerHead (and FCN auxiliary head, built
                                 for the state dict only), eval mode: images -> logits (B, 150, H, W),
                                 as mmseg's EncoderDecoder.encode_decode

    python benchmarks/official/gpvit.py [--repo PATH]   # the fp32 equivalence check on 1x3x64x64
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

SHIMS = Path(__file__).resolve().parent / "shims"
_SEG = "downstream/mmsegmentation/"

# Official files: path in our temporary package tree -> path in the GPViT repository.
OFFICIAL_FILES = {
    "mmcls/gpvit_dev/models/backbones/gpvit.py": "mmcls/gpvit_dev/models/backbones/gpvit.py",
    "mmcls/gpvit_dev/models/utils/attentions.py": "mmcls/gpvit_dev/models/utils/attentions.py",
    "mmcls/gpvit_dev/models/modules/patch_embed.py": "mmcls/gpvit_dev/models/modules/patch_embed.py",
    "mmcls/gpvit_dev/models/build.py": "mmcls/gpvit_dev/models/build.py",
    "mmcls/models/backbones/base_backbone.py": "mmcls/models/backbones/base_backbone.py",
    "mmcls/models/utils/embed.py": "mmcls/models/utils/embed.py",
    "mmcls/models/utils/helpers.py": "mmcls/models/utils/helpers.py",
    "mmseg/models/backbones/gpvit.py": _SEG + "mmseg/models/backbones/gpvit.py",
    "mmseg/models/decode_heads/decode_head.py": _SEG + "mmseg/models/decode_heads/decode_head.py",
    "mmseg/models/decode_heads/psp_head.py": _SEG + "mmseg/models/decode_heads/psp_head.py",
    "mmseg/models/decode_heads/uper_head.py": _SEG + "mmseg/models/decode_heads/uper_head.py",
    "mmseg/models/decode_heads/fcn_head.py": _SEG + "mmseg/models/decode_heads/fcn_head.py",
    "mmseg/ops/wrappers.py": _SEG + "mmseg/ops/wrappers.py",
}

# downstream/mmsegmentation/configs/gpvit/gpvit_l1_upernet.py, model part (training-only keys --
# init_cfg with the ImageNet checkpoint, losses -- left out; img_size is not set there, so GPViTSeg's
# default 224 applies: a 28x28 position grid resampled bicubically to the input's grid every forward).
BACKBONE_CFG = dict(
    type="GPViTSeg",
    arch="L1",
    out_indices=[2, 5, 8, 11],
    drop_path_rate=0.1,
    convert_syncbn=True,
    att_with_cp=False,
    group_with_cp=False,
)
NORM_CFG = dict(type="SyncBN", requires_grad=True)
DECODE_HEAD_CFG = dict(
    type="UPerHead",
    in_channels=[216, 216, 216, 216],
    in_index=[0, 1, 2, 3],
    pool_scales=(1, 2, 3, 6),
    channels=512,
    dropout_ratio=0.1,
    num_classes=150,
    norm_cfg=NORM_CFG,
    align_corners=False,
    loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
)
AUXILIARY_HEAD_CFG = dict(
    type="FCNHead",
    in_channels=216,
    in_index=3,
    channels=256,
    num_convs=1,
    concat_input=False,
    dropout_ratio=0.1,
    num_classes=150,
    norm_cfg=NORM_CFG,
    align_corners=False,
    loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
)

_tree: tempfile.TemporaryDirectory | None = None  # the package tree, kept for the process' lifetime
_tree_repo: str | None = None


def resolve_repo(repo: str | os.PathLike | None = None) -> Path:
    """``repo``, else $GPVIT_REPO; neither: refused in one line saying what to give."""
    chosen = repo or os.environ.get("GPVIT_REPO")
    if not chosen:
        raise FileNotFoundError(
            "the official GPViT code is read from a checkout (or bare clone) of "
            "https://github.com/ChenhongyiYang/GPViT: set GPVIT_REPO or pass --repo"
        )
    return Path(chosen)


def read_official(repo: Path, path: str, rev: str = "HEAD") -> str:
    """One file of the GPViT repository: from the work tree of a normal checkout, or with
    ``git show`` from a bare repository."""
    if (repo / path).is_file():
        return (repo / path).read_text()
    if (repo / "HEAD").is_file() and (repo / "objects").is_dir():  # a bare repository
        result = subprocess.run(
            ["git", "--git-dir", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True
        )
        if result.returncode == 0:
            return result.stdout
        raise FileNotFoundError(f"{path} not in {repo}@{rev}: {result.stderr.strip()}")
    raise FileNotFoundError(f"{repo} is neither a GPViT checkout nor a bare clone of one (no {path})")


def _install(repo: str | os.PathLike | None = None) -> None:
    """Build the temporary package tree (shims + official files) once and put it first on sys.path."""
    global _tree, _tree_repo
    repo_path = resolve_repo(repo)
    if _tree is not None:
        if str(repo_path) != _tree_repo:
            raise RuntimeError(f"official modules already imported from {_tree_repo}; one repo per process")
        return
    for name in ("mmcv", "mmcls", "mmseg"):
        if name in sys.modules:
            raise RuntimeError(
                f"a real {name!r} is already imported; run the official builds in a fresh process"
            )
    tree = tempfile.TemporaryDirectory(prefix="gpvit_official_")
    root = Path(tree.name)
    shutil.copytree(
        SHIMS, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "_fallback")
    )
    if importlib.util.find_spec("einops") is None:  # the official attentions.py imports einops
        shutil.copy(SHIMS / "_fallback" / "einops.py", root / "einops.py")
    for ours, theirs in OFFICIAL_FILES.items():
        target = root / ours
        if target.exists():
            raise RuntimeError(f"official file {theirs} would overwrite the shim {ours}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(read_official(repo_path, theirs))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    _tree, _tree_repo = tree, str(repo_path)


def build_official_gpvit_l1(img_size: int = 224, repo: str | os.PathLike | None = None) -> nn.Module:
    """The official mmseg ``GPViTSeg`` L1 backbone of the ADE20K UPerNet config, in eval mode.

    ``img_size`` only sets the stored position-embedding grid (img_size / 8); the config leaves it at
    GPViTSeg's default 224 (the ImageNet grid, resampled to the input's grid at every forward), which
    is also what workbench's ``gpvit_l1`` / ``gpvit_l1_upernet`` store. Returns a module whose
    forward(images) gives a tuple of the 4 maps of layers (2, 5, 8, 11), each (B, 216, H/8, W/8).
    """
    _install(repo)
    importlib.import_module("mmseg.models.backbones.gpvit")  # registers GPViTSeg
    from mmseg.models.builder import BACKBONES

    backbone = BACKBONES.build({**BACKBONE_CFG, "img_size": img_size})
    backbone.eval()  # not chained: the official BaseBackbone.train() returns None, so .eval() does too
    return backbone


class OfficialUPerNet(nn.Module):
    """mmseg's EncoderDecoder at test time (``encode_decode``, mode 'whole'), reduced to what runs:
    backbone -> decode head -> bilinear resize to the input. The auxiliary FCN head is built (it is
    part of the official model and state dict) but, as in mmseg's inference, not run."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, auxiliary_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.align_corners = decode_head.align_corners

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from mmseg.ops import resize  # the official mmseg resize (F.interpolate)

        features = self.backbone(images)  # extract_feat (no neck in this config)
        out = self.decode_head(features)  # decode_head.forward_test == forward
        return resize(input=out, size=images.shape[2:], mode="bilinear", align_corners=self.align_corners)


def build_official_upernet_l1(
    num_classes: int = 150, img_size: int = 224, repo: str | os.PathLike | None = None
) -> nn.Module:
    """The official GPViT-L1 UPerNet of configs/gpvit/gpvit_l1_upernet.py (SyncBN heads), eval mode:
    forward(images) -> decode-head logits (B, num_classes, H, W)."""
    backbone = build_official_gpvit_l1(img_size=img_size, repo=repo)
    importlib.import_module("mmseg.models.decode_heads.uper_head")  # registers UPerHead
    importlib.import_module("mmseg.models.decode_heads.fcn_head")  # registers FCNHead
    from mmseg.models.builder import HEADS

    decode_head = HEADS.build({**DECODE_HEAD_CFG, "num_classes": num_classes})
    auxiliary_head = HEADS.build({**AUXILIARY_HEAD_CFG, "num_classes": num_classes})
    model = OfficialUPerNet(backbone, decode_head, auxiliary_head)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Equivalence check against workbench (tiny input, fp32, CPU)


def _randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every LayerNorm / BatchNorm non-trivial affine parameters and running statistics, so that
    a norm mismatch (eps, placement, running stats) cannot hide behind the identity defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_backbone(repo=None, size: int = 64) -> float:
    """Our random-init gpvit_l1 (dense taps 2, 5, 8, 11) converted with ``to_official`` into the
    official backbone: max |difference| over the 4 output maps, fp32."""
    import timm

    import workbench  # noqa: F401  (registers the models with timm)
    from workbench.interop.gpvit import to_official

    torch.manual_seed(0)
    ours = timm.create_model("gpvit_l1", num_classes=0, global_pool="", out_indices=(2, 5, 8, 11)).eval()
    _randomize_norms(ours)
    official = build_official_gpvit_l1(repo=repo)
    state = {k.removeprefix("backbone."): v for k, v in to_official(ours.state_dict()).items()}
    official.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours.forward_dense(x), official(x)
    assert len(a) == len(b) == 4 and all(p.shape == q.shape for p, q in zip(a, b, strict=True)), (
        "output shapes differ"
    )
    print(
        f"backbone  params: official {_params(official):,}, ours {_params(ours):,}; "
        f"output max |value| {max(q.abs().max().item() for q in b):.3g}"
    )
    return max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))


def check_upernet(repo=None, size: int = 64) -> float:
    """Our random-init gpvit_l1_upernet converted with ``to_official`` into the official segmentor:
    max |difference| of the logits at input resolution, fp32."""
    from workbench.interop.gpvit import to_official
    from workbench.models import create_segmentor

    torch.manual_seed(0)
    ours = create_segmentor("gpvit_l1_upernet", num_classes=150).eval()
    _randomize_norms(ours)
    official = build_official_upernet_l1(repo=repo)
    official.load_state_dict(to_official(ours.state_dict()), strict=True)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), official(x)
    assert a.shape == b.shape == (1, 150, size, size), (a.shape, b.shape)
    print(
        f"upernet   params: official {_params(official):,}, ours {_params(ours):,}; "
        f"logits max |value| {b.abs().max().item():.3g}"
    )
    return (a - b).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", help="GPViT checkout or bare clone (default: $GPVIT_REPO)")
    parser.add_argument("--size", type=int, default=64, help="square input size of the check (default 64)")
    parser.add_argument("--backbone-only", action="store_true", help="skip the UPerNet check")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    diff = check_backbone(args.repo, args.size)
    print(f"backbone  (4 maps, 1x3x{args.size}x{args.size}, fp32): max abs diff {diff:.3e}")
    ok = diff < 1e-4
    if not args.backbone_only:
        diff = check_upernet(args.repo, args.size)
        print(f"upernet   (logits, 1x3x{args.size}x{args.size}, fp32): max abs diff {diff:.3e}")
        ok = ok and diff < 1e-4
    print("OK" if ok else "MISMATCH (tolerance 1e-4)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
