"""Key mapping between workbench HLG models and the released HLG backbones (fudan-zvg/SETR,
``mmseg/models/backbones/hlg.py``: ``s0_conv``, ``blockN``, ``norm_out_i``)."""

from __future__ import annotations

from torch import nn

from workbench.interop.formats import Format, StateDict, part_of
from workbench.interop.keymap import KeyMap, rename_keys
from workbench.models.hlg import HLG

# (workbench, released), applied in order: block4's ``norm1`` before every other ``norm1``, the
# stage prefix (block1..4 -> stages.0..3) last.
RELEASED = KeyMap(
    [
        ("^stem.", "^s0_conv."),
        ("mlp_step.downsample.", "down_proj.proj."),
        ("mlp_step.mlp.0.", "mlp.fc1."),
        ("mlp_step.mlp.1.", "mlp.norm1."),
        ("mlp_step.mlp.3.", "mlp.fc2."),
        ("mlp_step.mlp.4.", "mlp.norm2."),
        ("mlp_step.mlp.6.", "mlp.fc3."),
        ("mlp_step.norm.", "norm2."),
        ("smooth.block.", "spatial_smooth.0."),
        ("local_norm.", "norm0."),
        ("local_attn.position_bias.", "pos_local."),
        ("window_norm.", "h0_norm."),
        ("^stages.3.{n}.attn_norm.", "^block4.{n}.norm1."),
        ("query_norm.", "norm1."),
        ("query_conv.", "aux_q."),
        ("global_attn.position_bias.", "pos_global."),
        ("^norms.{n}.", "^norm_out_{n}."),
        ("^norms.3.", "^norm."),
        *[(f"^stages.{i}.", f"^block{i + 1}.") for i in range(4)],
    ]
)


def _from_released(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """Released backbone tensors -> an HLG classifier's keys, or a dense model's backbone (a
    segmentor's, or a detector's pyramid body) without the ImageNet head."""
    prefix, _ = part_of(model, HLG, "hlg", "HLG models")
    converted = rename_keys(state, lambda key: RELEASED.to_ours(key.removeprefix("backbone.")))
    if not prefix:
        return converted, []
    dropped = [k for k in converted if k.startswith("head.")]
    notes = ["dropped the ImageNet classifier head"] if dropped else []
    return {prefix + k: v for k, v in converted.items() if k not in dropped}, notes


def _to_released(model: nn.Module) -> StateDict:
    """The HLG backbone (and a classifier's head) under the released names; the release has no
    segmentation heads, so a segmentor exports its backbone."""
    prefix, backbone = part_of(model, HLG, "hlg", "HLG models")
    outer = "backbone." if prefix else ""
    return {outer + RELEASED.to_theirs(k): v for k, v in backbone.state_dict().items()}


HLG_RELEASE = Format(
    "hlg",
    detect=lambda keys: any(k.startswith(("s0_conv.", "block1.", "backbone.s0_conv.")) for k in keys),
    convert=lambda state, model, known: _from_released(state, model),  # no position grid to read
    export=_to_released,
)
