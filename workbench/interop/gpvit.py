"""Key mapping between workbench GPViT models and the official (mmcls / mmseg) checkpoints.

Official layout: backbone under ``backbone.`` (blocks as ``layers.N``, final norm ``ln1``, dense-output
norms ``normN``), classifier ``neck.`` (L1/L2) and ``head.fc.``; segmentors ``decode_head.`` and
``auxiliary_head.`` with mmcv ConvModule names. Each direction is an ordered list of regex renames
applied at dot-segment boundaries; a test checks that the two directions are inverse on every key.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from workbench.interop.keymap import rename_key, rename_keys

# Inside the backbone, workbench -> official. Regexes; the ungrouping entries precede the grouping ones.
_BACKBONE = [
    (r"ungrouping\.q_proj\.", "un_group_layer.attn.q_proj."),
    (r"ungrouping\.k_proj\.", "un_group_layer.attn.k_proj."),
    (r"ungrouping\.v_proj\.", "un_group_layer.attn.v_proj."),
    (r"ungrouping\.out_proj\.", "un_group_layer.attn.proj."),
    (r"ungrouping\.fuse\.", "un_group_layer.proj."),
    (r"ungrouping\.mlp\.fc1\.", "un_group_layer.ffn.layers.0.0."),
    (r"ungrouping\.mlp\.fc2\.", "un_group_layer.ffn.layers.1."),
    (r"ungrouping\.", "un_group_layer."),
    (r"grouping\.k_proj\.", "group_layer.attn.k_proj."),
    (r"grouping\.", "group_layer."),
    (r"group_tokens$", "group_token"),
    (r"propagation\.token_mlp\.fc1\.", "mixer.layers.0.patch_mixer.0."),
    (r"propagation\.token_mlp\.fc2\.", "mixer.layers.0.patch_mixer.3."),
    (r"propagation\.channel_mlp\.fc1\.", "mixer.layers.0.channel_mixer.0."),
    (r"propagation\.channel_mlp\.fc2\.", "mixer.layers.0.channel_mixer.3."),
    (r"propagation\.", "mixer.layers.0."),
    (r"stripes\.(\d)\.lepe\.", r"attns.\1.get_v."),
    (r"mlp\.fc1\.", "ffn.layers.0.0."),
    (r"mlp\.fc2\.", "ffn.layers.1."),
    (r"dwconv\.weight$", "dw.weight"),
    (r"^blocks\.", "layers."),
    (r"^norm\.", "ln1."),
    (r"^out_norms\.(\d+)\.", r"norm\1."),
]
_BACKBONE_BACK = [
    (r"un_group_layer\.attn\.q_proj\.", "ungrouping.q_proj."),
    (r"un_group_layer\.attn\.k_proj\.", "ungrouping.k_proj."),
    (r"un_group_layer\.attn\.v_proj\.", "ungrouping.v_proj."),
    (r"un_group_layer\.attn\.proj\.", "ungrouping.out_proj."),
    (r"un_group_layer\.proj\.", "ungrouping.fuse."),
    (r"un_group_layer\.ffn\.layers\.0\.0\.", "ungrouping.mlp.fc1."),
    (r"un_group_layer\.ffn\.layers\.1\.", "ungrouping.mlp.fc2."),
    (r"un_group_layer\.", "ungrouping."),
    (r"group_layer\.attn\.k_proj\.", "grouping.k_proj."),
    (r"group_layer\.", "grouping."),
    (r"group_token$", "group_tokens"),
    (r"mixer\.layers\.0\.patch_mixer\.0\.", "propagation.token_mlp.fc1."),
    (r"mixer\.layers\.0\.patch_mixer\.3\.", "propagation.token_mlp.fc2."),
    (r"mixer\.layers\.0\.channel_mixer\.0\.", "propagation.channel_mlp.fc1."),
    (r"mixer\.layers\.0\.channel_mixer\.3\.", "propagation.channel_mlp.fc2."),
    (r"mixer\.layers\.0\.", "propagation."),
    (r"attns\.(\d)\.get_v\.", r"stripes.\1.lepe."),
    (r"ffn\.layers\.0\.0\.", "mlp.fc1."),
    (r"ffn\.layers\.1\.", "mlp.fc2."),
    (r"dw\.weight$", "dwconv.weight"),
    (r"^layers\.", "blocks."),
    (r"^ln1\.", "norm."),
    (r"^norm(\d+)\.", r"out_norms.\1."),
]
# Classifier neck and head, and the mmseg decode heads (ConvModule: conv/bn like ours; conv_seg).
_OUTSIDE = [
    (r"^neck\.query_token$", "neck.group_token"),
    (r"^neck\.pool\.norm_query\.", "neck.norm_query."),
    (r"^neck\.pool\.k_proj\.", "neck.attn.k_proj."),
    (r"^head\.", "head.fc."),
    (r"^aux_heads\.0\.", "auxiliary_head."),
    (r"classifier\.", "conv_seg."),
]
_OUTSIDE_BACK = [
    (r"^neck\.group_token$", "neck.query_token"),
    (r"^neck\.norm_query\.", "neck.pool.norm_query."),
    (r"^neck\.attn\.k_proj\.", "neck.pool.k_proj."),
    (r"^head\.fc\.", "head."),
    (r"^auxiliary_head\.", "aux_heads.0."),
    (r"conv_seg\.", "classifier."),
]
_BACKBONE_KEYS = ("patch_embed.", "pos_embed", "blocks.", "norm.", "out_norms.")


def to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A workbench GPViT classifier or segmentor state dict -> official key names."""

    def rename(key: str) -> str:
        inner = key.removeprefix("backbone.")
        if key.startswith("backbone.") or key.startswith(_BACKBONE_KEYS):
            return "backbone." + rename_key(inner, _BACKBONE)
        return rename_key(key, _OUTSIDE)

    return rename_keys(state_dict, rename)


def from_official(state_dict: Mapping[str, torch.Tensor], segmentor: bool) -> dict[str, torch.Tensor]:
    """Official key names -> a workbench classifier (``segmentor=False``) or segmentor state dict."""
    prefix = "backbone." if segmentor else ""

    def rename(key: str) -> str:
        if key.startswith("backbone."):
            return prefix + rename_key(key.removeprefix("backbone."), _BACKBONE_BACK)
        return rename_key(key, _OUTSIDE_BACK)

    return rename_keys(state_dict, rename)
