"""``load_pretrained``: released checkpoints of every supported layout into workbench models.

    report = workbench.load_pretrained(model, "gpvit_l1_in1k")        # catalogue name (downloads)
    report = workbench.load_pretrained(model, "jx_vit_large_p16_384-b3be5167.pth")
    print(report)                                                    # format, converted, missing ...

Everything is converted and checked before any tensor is copied: a failed load leaves the model
exactly as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from workbench.interop.files import read_state_dict
from workbench.interop.gpvit import from_official
from workbench.interop.vit import setr_state

FORMATS = ("auto", "workbench", "gpvit", "setr_official", "mmseg_setr", "timm", "deit", "jax", "hlg")


@dataclass
class LoadReport:
    format: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the source does not provide
    unexpected: list[str] = field(default_factory=list)  # source tensors the model has no place for
    mismatched: list[str] = field(default_factory=list)  # "key: source shape vs model shape"
    kept: list[str] = field(default_factory=list)  # model tensors outside what the source covers
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def listing(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

        lines = [f"{self.source} ({self.format}): {len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "mismatched", "kept"):
            items = getattr(self, name)
            if items:
                lines.append(f"  {name} {len(items)}: {listing(items)}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def detect_format(state: dict[str, torch.Tensor], model: nn.Module) -> str:
    keys = set(state)
    if len(keys & set(model.state_dict())) >= 0.9 * len(keys):
        return "workbench"
    checks = (
        ("jax", lambda k: k.startswith("Transformer/") or k == "embedding/kernel"),
        ("gpvit", lambda k: ".group_layer." in k or ".attns.0.get_v." in k),
        ("mmseg_setr", lambda k: k.endswith("attn.attn.in_proj_weight")),
        ("setr_official", lambda k: k.startswith("backbone.blocks.0.")),
        ("deit", lambda k: k == "dist_token"),
        ("timm", lambda k: k.startswith("blocks.0.attn.qkv")),
        ("hlg", lambda k: k.startswith(("s0_conv.", "block1.", "backbone.s0_conv."))),
    )
    for name, test in checks:
        if any(test(k) for k in keys):
            return name
    raise ValueError(
        f"cannot tell the checkpoint layout from its keys (first: {sorted(keys)[:5]}); pass format= one of {FORMATS[1:]}"
    )


def _hlg_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released HLG backbone names (``s0_conv``, ``blockN``, ``norm_out_i``) -> ours."""
    renames = (
        (r"^s0_conv\.", "stem."),
        (r"\.down_proj\.proj\.", ".mlp_step.downsample."),
        (r"\.mlp\.fc1\.", ".mlp_step.mlp.0."),
        (r"\.mlp\.norm1\.", ".mlp_step.mlp.1."),
        (r"\.mlp\.fc2\.", ".mlp_step.mlp.3."),
        (r"\.mlp\.norm2\.", ".mlp_step.mlp.4."),
        (r"\.mlp\.fc3\.", ".mlp_step.mlp.6."),
        (r"\.norm2\.", ".mlp_step.norm."),
        (r"\.spatial_smooth\.0\.", ".smooth.block."),
        (r"\.norm0\.", ".local_norm."),
        (r"\.pos_local\.", ".local_attn.position_bias."),
        (r"\.h0_norm\.", ".window_norm."),
        (r"^block4\.(\d+)\.norm1\.", r"block4.\1.attn_norm."),
        (r"\.norm1\.", ".query_norm."),
        (r"\.aux_q\.", ".query_conv."),
        (r"\.pos_global\.", ".global_attn.position_bias."),
        (r"^norm_out_(\d)\.", r"norms.\1."),
        (r"^norm\.", "norms.3."),
    )
    out = {}
    for key, value in state.items():
        key = key.removeprefix("backbone.")
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        key = re.sub(r"^block([1-4])\.", lambda m: f"stages.{int(m.group(1)) - 1}.", key)
        out[key] = value
    return out


def convert(
    state: dict[str, torch.Tensor], kind: str, model: nn.Module, notes: list[str]
) -> dict[str, torch.Tensor]:
    """Source tensors -> the model's key names (shapes untouched except documented resampling)."""
    from workbench.models import SETR, GPViT
    from workbench.models.hlg import HLG
    from workbench.models.segmentor import Segmentor

    if kind == "workbench":
        return dict(state)
    if kind in ("timm", "deit", "jax", "setr_official", "mmseg_setr"):
        if not isinstance(model, SETR):
            raise ValueError(f"a {kind} checkpoint loads into SETR segmentors, not {type(model).__name__}")
        return setr_state(state, kind, model, notes)
    if kind == "gpvit":
        backbone = model.backbone if isinstance(model, Segmentor) else model
        if not isinstance(backbone, GPViT):
            raise ValueError(f"a GPViT checkpoint loads into GPViT models, not {type(model).__name__}")
        converted = from_official(state, segmentor=isinstance(model, Segmentor))
        prefix = "backbone." if isinstance(model, Segmentor) else ""
        if isinstance(model, Segmentor):
            classifier = [k for k in converted if k.startswith(("neck.", "head."))]
            if classifier:
                notes.append(f"dropped the ImageNet classifier's neck and head ({len(classifier)} tensors)")
                converted = {k: v for k, v in converted.items() if k not in classifier}
        key = prefix + "pos_embed"
        if key in converted and converted[key].shape != backbone.pos_embed.shape:
            side = round(converted[key].shape[1] ** 0.5)
            converted[key] = resample_abs_pos_embed(
                converted[key],
                new_size=backbone.pretrain_grid,
                old_size=(side, side),
                num_prefix_tokens=0,
                antialias=False,
            )  # bicubic, as the model itself resamples
            notes.append(
                f"resampled pos_embed {side}x{side} -> {backbone.pretrain_grid[0]}x{backbone.pretrain_grid[1]} (bicubic)"
            )
        return converted
    if kind == "hlg":
        backbone = model.backbone if isinstance(model, Segmentor) else model
        if not isinstance(backbone, HLG):
            raise ValueError(f"an HLG checkpoint loads into HLG models, not {type(model).__name__}")
        converted = _hlg_keys(state)
        if isinstance(model, Segmentor):
            dropped = [k for k in converted if k.startswith("head.")]
            if dropped:
                notes.append("dropped the ImageNet classifier head")
            return {"backbone." + k: v for k, v in converted.items() if k not in dropped}
        return converted
    raise ValueError(f"unknown format {kind!r}; expected one of {FORMATS}")


def load_pretrained(
    model: nn.Module, source: str | Path, format: str = "auto", strict: bool = True
) -> LoadReport:
    """Load ``source`` (a path, a URL or a catalogue name) into ``model``; see ``LoadReport``.

    Backbone-only sources fill a segmentor's backbone and keep its heads as initialised. A classifier
    head whose class count differs is dropped (reported). Position embeddings are resampled to the
    model's grid. With ``strict``, any missing, unexpected or mis-shaped tensor (outside those
    documented cases) raises a ValueError listing them, and nothing is loaded.
    """
    from workbench.interop.download import resolve_source

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = resolve_source(source)
    state = read_state_dict(path)
    kind = detect_format(state, model) if format == "auto" else format
    report = LoadReport(kind, str(source))
    converted = convert(state, kind, model, report.notes)
    expected = model.state_dict()
    for key, value in list(converted.items()):
        if key in expected and value.shape != expected[key].shape:
            if _is_classifier(key):
                report.notes.append(
                    f"dropped {key}: {tuple(value.shape)} in the source, {tuple(expected[key].shape)} here (another class count)"
                )
                del converted[key]
                continue
            report.mismatched.append(
                f"{key}: source {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
            )
    report.unexpected = sorted(k for k in converted if k not in expected)
    covered = (
        "backbone."
        if not any(k.startswith(("decode_head.", "neck.", "head.")) for k in converted)
        and hasattr(model, "decode_head")
        else ""
    )
    absent = sorted(k for k in expected if k not in converted)
    # Dense-output norms exist only in GPViT's segmentation checkpoints: new when loading ImageNet weights.
    fresh = [k for k in absent if kind == "gpvit" and ".out_norms." in f".{k}"]
    if fresh:
        report.notes.append(f"{len(fresh)} dense-output norm tensors are new in this model (initialised)")
    report.missing = [
        k for k in absent if k.startswith(covered) and not _is_dropped_head(k, report) and k not in fresh
    ]
    report.kept = [k for k in absent if k not in report.missing]
    if strict and not report.clean:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}; nothing was loaded.\n{report}")
    loadable = {k: v for k, v in converted.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict({**expected, **{k: v.to(expected[k].dtype) for k, v in loadable.items()}})
    report.loaded = sorted(loadable)
    return report


def _is_classifier(key: str) -> bool:
    """The last layer that maps to classes: its shape follows the class count, nothing else does."""
    return bool(
        re.fullmatch(
            r"(.*\.)?classifier\.(weight|bias)|head\.(weight|bias)|aux_heads\.\d+\.(weight|bias)", key
        )
    )


def _is_dropped_head(key: str, report: LoadReport) -> bool:
    return any(note.startswith(f"dropped {key}:") for note in report.notes)
