"""Key mapping between workbench GPViT models and the official (mmcls / mmseg) checkpoints.

Official layout: backbone under ``backbone.`` (blocks as ``layers.N``, final norm ``ln1``, dense-output
norms ``normN``), classifier ``neck.`` (L1/L2) and ``head.fc.``; segmentors ``decode_head.`` and
``auxiliary_head.`` with mmcv ConvModule names (``conv``, ``bn``) like ours.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from workbench.interop.formats import Format, StateDict, part_of
from workbench.interop.keymap import KeyMap, rename_keys
from workbench.interop.posgrid import KnownGrid, fit_grid
from workbench.models.gpvit import GPViT

# Inside the backbone: (workbench, official), most specific first.
BACKBONE = KeyMap(
    [
        ("ungrouping.q_proj.", "un_group_layer.attn.q_proj."),
        ("ungrouping.k_proj.", "un_group_layer.attn.k_proj."),
        ("ungrouping.v_proj.", "un_group_layer.attn.v_proj."),
        ("ungrouping.out_proj.", "un_group_layer.attn.proj."),
        ("ungrouping.fuse.", "un_group_layer.proj."),
        ("ungrouping.mlp.fc1.", "un_group_layer.ffn.layers.0.0."),
        ("ungrouping.mlp.fc2.", "un_group_layer.ffn.layers.1."),
        ("ungrouping.", "un_group_layer."),
        ("grouping.k_proj.", "group_layer.attn.k_proj."),
        ("grouping.", "group_layer."),
        ("group_tokens$", "group_token$"),
        ("propagation.token_mlp.fc1.", "mixer.layers.0.patch_mixer.0."),
        ("propagation.token_mlp.fc2.", "mixer.layers.0.patch_mixer.3."),
        ("propagation.channel_mlp.fc1.", "mixer.layers.0.channel_mixer.0."),
        ("propagation.channel_mlp.fc2.", "mixer.layers.0.channel_mixer.3."),
        ("propagation.", "mixer.layers.0."),
        ("stripes.{n}.lepe.", "attns.{n}.get_v."),
        ("mlp.fc1.", "ffn.layers.0.0."),
        ("mlp.fc2.", "ffn.layers.1."),
        ("dwconv.weight$", "dw.weight$"),
        ("^blocks.", "^layers."),
        ("^norm.", "^ln1."),
        ("^out_norms.{n}.", "^norm{n}."),
    ]
)
# Classifier neck and head, decode and auxiliary heads.
OUTSIDE = KeyMap(
    [
        ("^neck.query_token$", "^neck.group_token$"),
        ("^neck.pool.norm_query.", "^neck.norm_query."),
        ("^neck.pool.k_proj.", "^neck.attn.k_proj."),
        ("^head.", "^head.fc."),
        ("^aux_heads.0.", "^auxiliary_head."),
        ("classifier.", "conv_seg."),
    ]
)
_BACKBONE_KEYS = ("patch_embed.", "pos_embed", "blocks.", "norm.", "out_norms.")


def to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A workbench GPViT classifier or segmentor state dict -> official key names."""

    def rename(key: str) -> str:
        if key.startswith("backbone.") or key.startswith(_BACKBONE_KEYS):
            return "backbone." + BACKBONE.to_theirs(key.removeprefix("backbone."))
        return OUTSIDE.to_theirs(key)

    return rename_keys(state_dict, rename)


def from_official(state_dict: Mapping[str, torch.Tensor], segmentor: bool) -> dict[str, torch.Tensor]:
    """Official key names -> a workbench classifier (``segmentor=False``) or segmentor state dict."""
    return _renamed(state_dict, "backbone." if segmentor else "")


def _renamed(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Official key names -> ours, the backbone's under ``prefix`` (where the model holds its GPViT)."""

    def rename(key: str) -> str:
        if key.startswith("backbone."):
            return prefix + BACKBONE.to_ours(key.removeprefix("backbone."))
        return OUTSIDE.to_ours(key)

    return rename_keys(state_dict, rename)


def _checked(model: nn.Module) -> nn.Module:
    """``model`` itself, once it is known to be (or to hold) a GPViT."""
    part_of(model, GPViT, "gpvit", "GPViT models")
    return model


def _from_release(state: StateDict, model: nn.Module, known: KnownGrid | None) -> tuple[StateDict, list[str]]:
    """An official classifier or segmentor checkpoint -> ``model``: a dense model (segmentor, or
    detector with the GPViT in its adapter) takes the backbone (and a segmentor the heads, if the
    source has them) and drops the ImageNet classifier, and the final norm where its GPViT has none
    (the detection configs' ``final_norm=False``); position embeddings are resampled bicubically, as
    mmcls does, to the model's pre-training grid (the file's grid read by ``posgrid``: it has no
    prefix tokens)."""
    prefix, backbone = part_of(model, GPViT, "gpvit", "GPViT models")
    converted, notes = _renamed(state, prefix), []
    if prefix:
        classifier = [k for k in converted if k.startswith(("neck.", "head."))]
        if classifier:
            notes.append(f"dropped the ImageNet classifier's neck and head ({len(classifier)} tensors)")
        final_norm = [
            k for k in converted if k.startswith(prefix + "norm.") and isinstance(backbone.norm, nn.Identity)
        ]
        if final_norm:
            notes.append(f"dropped the final norm ln1 ({len(final_norm)} tensors): this GPViT has none")
        dropped = {*classifier, *final_norm}
        converted = {k: v for k, v in converted.items() if k not in dropped}
    key = prefix + "pos_embed"
    if key in converted:
        converted[key], _ = fit_grid(converted[key], (), backbone.pretrain_grid, known, "bicubic", notes)
    return converted, notes


# Dense-output norms exist only in the segmentation checkpoints: new when loading ImageNet weights.
GPVIT_RELEASE = Format(
    "gpvit",
    detect=lambda keys: any(".group_layer." in k or ".attns.0.get_v." in k for k in keys),
    convert=_from_release,
    fresh=".out_norms.",
    export=lambda model: to_official(_checked(model).state_dict()),
)
