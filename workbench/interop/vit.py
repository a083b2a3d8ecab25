"""Plain-ViT and SETR checkpoints -> workbench SETR: timm / Google JAX / DeiT encoders, the official
SETR release and mmseg 1.x SETR (see the key tables in the SETR specification).

Every layout is a key map (``KeyMap``) plus the few tensor layout changes JAX needs; each contributes
a format entry (``TIMM``, ``DEIT``, ``JAX``, ``SETR_OFFICIAL``, ``MMSEG_SETR``).

Prefix tokens: the class token, the register tokens (``reg_token``, DINOv2 with registers) and their
position entries load as they are; for a source that adds no position to them (timm's
``no_embed_class``: DeiT-3, DINOv2 with registers) into an encoder that does, zero entries stand for
them, which leaves the encoder's tokens those of the source. The distillation token is dropped
(SETR-DeiT's rule), and so is the class token where the encoder has none (MLA). Registers and layer
scale (``blocks.N.ls1.gamma``) change every block's output, so an encoder built without them (or
with them, for a source without) is refused in one line naming the keyword to build it with
(``reg_tokens=``, ``init_values=``, ``class_token=``, ``no_embed_class=``). The grid of the position
embedding is read by ``workbench.interop.posgrid``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from workbench.interop.formats import Format, StateDict, part_of
from workbench.interop.keymap import KeyMap, rename_keys
from workbench.interop.posgrid import KnownGrid, fit_grid
from workbench.models.setr import SETR

# Google's ViT .npz names ("/" read as ".") -> timm's. q, k and v arrive apart (fused below) and
# kernels in JAX layouts (transposed below).
JAX_VIT = KeyMap(
    [
        ("^blocks.{n}.norm1.", "^Transformer.encoderblock_{n}.LayerNorm_0."),
        ("^blocks.{n}.norm2.", "^Transformer.encoderblock_{n}.LayerNorm_2."),
        ("^blocks.{n}.attn.", "^Transformer.encoderblock_{n}.MultiHeadDotProductAttention_1."),
        ("^blocks.{n}.mlp.fc1.", "^Transformer.encoderblock_{n}.MlpBlock_3.Dense_0."),
        ("^blocks.{n}.mlp.fc2.", "^Transformer.encoderblock_{n}.MlpBlock_3.Dense_1."),
        ("attn.proj.", "attn.out."),
        ("^patch_embed.proj.", "^embedding."),
        ("^pos_embed$", "^Transformer.posembed_input.pos_embedding$"),
        ("^cls_token$", "^cls$"),
        ("^norm.", "^Transformer.encoder_norm."),
        ("weight$", "kernel$"),
        ("weight$", "scale$"),
    ]
)
# mmseg's ViT names -> timm's (inside ``backbone.``).
MMSEG_VIT = KeyMap(
    [
        ("patch_embed.proj.", "patch_embed.projection."),
        ("blocks.{n}.norm1.", "layers.{n}.ln1."),
        ("blocks.{n}.attn.qkv.weight$", "layers.{n}.attn.attn.in_proj_weight$"),
        ("blocks.{n}.attn.qkv.bias$", "layers.{n}.attn.attn.in_proj_bias$"),
        ("blocks.{n}.attn.proj.", "layers.{n}.attn.attn.out_proj."),
        ("blocks.{n}.norm2.", "layers.{n}.ln2."),
        ("blocks.{n}.mlp.fc1.", "layers.{n}.ffn.layers.0.0."),
        ("blocks.{n}.mlp.fc2.", "layers.{n}.ffn.layers.1."),
        ("norm.", "ln1."),
    ]
)
# mmseg SETR heads and MLA neck -> ours (the mmseg flavour keeps mmseg's module order).
MMSEG_UP_HEADS = KeyMap(
    [
        ("^aux_heads.{n}.", "^auxiliary_head.{n}."),
        ("stages.{n}.", "up_convs.{n}.0."),
        ("classifier.", "conv_seg."),
    ]
)
MMSEG_MLA = KeyMap(
    [
        ("^aux_heads.{n}.", "^auxiliary_head.{n}.conv_seg."),  # MLA's auxiliary heads are bare convs
        ("stream_heads.{n}.", "up_convs.{n}."),
        ("neck.norms.{n}.", "neck.norm.{n}."),
        ("neck.lateral_convs.{n}.", "neck.mla.channel_proj.{n}."),
        ("neck.stream_convs.{n}.", "neck.mla.feat_extract.{n}."),
        ("classifier.", "conv_seg."),
    ]
)
# fudan-zvg/SETR's MLA neck (inside its backbone) and heads: levels mla_p2 ... mla_p5 and heads
# head2 ... head5 are our streams 0 ... 3; each MLA stream head is Sequential(conv, bn, relu, conv, bn, relu).
OFFICIAL_MLA = KeyMap(
    [
        *[
            pair
            for j in range(4)
            for pair in (
                (f"^neck.norms.{j}.", f"^backbone.norm_{j}."),
                (f"^neck.lateral_convs.{j}.conv.", f"^backbone.mla.mla_p{j + 2}_1x1.0."),
                (f"^neck.lateral_convs.{j}.bn.", f"^backbone.mla.mla_p{j + 2}_1x1.1."),
                (f"^neck.stream_convs.{j}.conv.", f"^backbone.mla.mla_p{j + 2}.0."),
                (f"^neck.stream_convs.{j}.bn.", f"^backbone.mla.mla_p{j + 2}.1."),
                (f"^decode_head.stream_heads.{j}.0.conv.", f"^decode_head.mlahead.head{j + 2}.0."),
                (f"^decode_head.stream_heads.{j}.0.bn.", f"^decode_head.mlahead.head{j + 2}.1."),
                (f"^decode_head.stream_heads.{j}.1.conv.", f"^decode_head.mlahead.head{j + 2}.3."),
                (f"^decode_head.stream_heads.{j}.1.bn.", f"^decode_head.mlahead.head{j + 2}.4."),
            )
        ],
        ("^decode_head.classifier.", "^decode_head.cls."),
        ("^aux_heads.{n}.", "^auxiliary_head.{n}.aux."),
    ]
)


def _official_up_heads(model: SETR) -> KeyMap:
    """fudan-zvg/SETR Naive/PUP head names -> ours: ``conv_i`` / ``syncbn_fc_i`` are stage i, and each
    head's last conv (``conv_<stages>``) is its classifier."""
    heads = [("decode_head", "decode_head", model.decode_head)] + [
        (f"aux_heads.{i}", f"auxiliary_head.{i}", head) for i, head in enumerate(model.aux_heads)
    ]
    return KeyMap(
        [(f"^{ours}.classifier.", f"^{theirs}.conv_{len(head.stages)}.") for ours, theirs, head in heads]
        + [
            ("^aux_heads.{n}.", "^auxiliary_head.{n}."),
            ("stages.{n}.conv.", "conv_{n}."),
            ("stages.{n}.bn.", "syncbn_fc_{n}."),
        ]
    )


_QKV = ("query", "key", "value")


def jax_to_timm(arrays: StateDict) -> StateDict:
    """Google's ViT .npz (``Transformer/encoderblock_N/...``) -> timm names and layouts."""
    renamed = rename_keys(arrays, lambda key: JAX_VIT.to_ours(key.replace("/", ".")))
    out: StateDict = {}
    for key, value in renamed.items():
        if key == "patch_embed.proj.weight":
            value = value.permute(3, 2, 0, 1)  # HWIO -> OIHW
        elif key.endswith("attn.proj.weight"):
            value = value.flatten(0, 1).T  # (heads, head_dim, C) -> (C, heads * head_dim)
        elif key.endswith(("mlp.fc1.weight", "mlp.fc2.weight", "head.weight")):
            value = value.T
        elif any(f".attn.{x}." in key for x in _QKV):
            continue  # fused into qkv below
        out[key] = value
    blocks = {key.split(".")[1] for key in renamed if key.startswith("blocks.")}
    try:
        for n in sorted(blocks, key=int):
            attention = f"blocks.{n}.attn."
            out[attention + "qkv.weight"] = torch.cat(
                [renamed[attention + f"{x}.weight"].flatten(1).T for x in _QKV]
            )
            out[attention + "qkv.bias"] = torch.cat(
                [renamed[attention + f"{x}.bias"].flatten() for x in _QKV]
            )
    except KeyError as missing:
        raise _jax_lacks(missing.args[0]) from None
    return out


def _jax_lacks(key: str) -> ValueError:
    """The error for a .npz without the array that becomes timm's ``key``, named in the .npz's terms."""
    name = JAX_VIT.to_theirs(key).replace(".", "/")
    return ValueError(f"the .npz lacks the array {name!r} of Google's ViT layout")


def encoder_from_timm(
    state: StateDict, encoder: nn.Module, notes: list[str], known: KnownGrid | None
) -> StateDict:
    """timm-named encoder tensors -> our SETR encoder's (no prefix): drops the final norm and the
    classifiers, the DeiT distillation token and its position entry, the class token for MLA, and
    resamples the position grid bilinearly (SETR's rule) to the encoder's; refuses a source whose
    registers, layer scale or class token the encoder is not built for."""
    _check_built_for(state, encoder)
    dropped = [k for k in state if k.startswith(("norm.", "head", "fc_norm.", "pre_logits", "dist_token"))]
    if dropped:
        notes.append(
            f"dropped {len(dropped)} tensors SETR does not use (final norm, classifier, distillation)"
        )
    out = {k: v for k, v in state.items() if k not in dropped}
    if "pos_embed" in out:
        out["pos_embed"] = _encoder_pos_embed(state, encoder, notes, known)
        if encoder.cls_token is None:
            out.pop("cls_token", None)
            notes.append(
                "dropped cls_token and its position entry (this encoder has none: MLA, or class_token=False)"
            )
    return out


def _check_built_for(state: StateDict, encoder: nn.Module) -> None:
    """Refuse, in one line naming the keyword to build with, a source whose registers, layer scale
    or class token the encoder does not hold: each enters every block, so no load could give the
    source's features."""
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    if registers != encoder.num_reg_tokens:
        raise ValueError(
            f"the checkpoint has {registers or 'no'} register tokens (reg_token), the encoder "
            f"{encoder.num_reg_tokens}, and every block attends to them: build the segmentor with "
            f"reg_tokens={registers}"
        )
    scaled = any(k.endswith((".ls1.gamma", ".ls2.gamma")) for k in state)
    built = not isinstance(encoder.blocks[0].ls1, nn.Identity)
    if scaled and not built:
        raise ValueError(
            "the checkpoint has layer scale (blocks.N.ls1.gamma, ls2.gamma) on every residual branch: "
            "build the segmentor with init_values=1e-5 (any value: the gammas load)"
        )
    if built and not scaled:
        raise ValueError(
            "the checkpoint has no layer scale (blocks.N.ls1.gamma): build the segmentor without init_values"
        )
    if encoder.cls_token is not None and "cls_token" not in state:
        raise ValueError(
            "the checkpoint has no class token (cls_token): build the segmentor with class_token=False"
        )


def _encoder_pos_embed(
    state: StateDict, encoder: nn.Module, notes: list[str], known: KnownGrid | None
) -> torch.Tensor:
    """The source's (1, N, C) ``pos_embed`` as the encoder holds it: (1, H*W, C) on its grid, after the
    entries of the prefix tokens it keeps (class, registers) unless it is built with no_embed_class."""
    pos = state["pos_embed"]
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    # The prefix entries in timm's order: class, distillation, registers.
    prefix = [k for k in ("cls_token", "dist_token") if k in state] + ["reg_token"] * registers
    grid, entries = fit_grid(pos, prefix, tuple(encoder.patch_embed.grid_size), known, "bilinear", notes)
    kept = [
        i
        for i, name in enumerate(prefix)
        if name == "reg_token" or (name == "cls_token" and encoder.cls_token is not None)
    ]
    if "dist_token" in prefix and entries:
        notes.append("dropped the distillation token's position entry")
    if encoder.no_embed_class:
        if entries and kept:
            raise ValueError(
                "the checkpoint adds a position to its prefix tokens (class, registers), this encoder "
                "only to the grid: build the segmentor with no_embed_class=False"
            )
        return grid
    if entries:
        return torch.cat([pos[:, kept], grid], dim=1)
    if kept:
        notes.append(
            "the source's prefix tokens have no position entries (no_embed_class): zero entries stand "
            "for them, so they enter the blocks as they did there"
        )
    return torch.cat([pos.new_zeros(1, len(kept), pos.shape[2]), grid], dim=1)


def _setr(model: nn.Module, format_name: str) -> SETR:
    return part_of(model, SETR, format_name, "SETR segmentors")[1]


def _from_timm(
    state: StateDict, model: nn.Module, known: KnownGrid | None, format_name: str = "timm"
) -> tuple[StateDict, list[str]]:
    notes: list[str] = []
    # Facebook's DeiT-3 files name layer scale gamma_1 / gamma_2; timm's loader renames them so too.
    state = {re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key): value for key, value in state.items()}
    encoder = encoder_from_timm(state, _setr(model, format_name).backbone, notes, known)
    return {"backbone." + k: v for k, v in encoder.items()}, notes


def _from_jax(state: StateDict, model: nn.Module, known: KnownGrid | None) -> tuple[StateDict, list[str]]:
    converted, notes = _from_timm(jax_to_timm(state), model, known, "jax")
    absent = [k for k in model.backbone.state_dict() if "backbone." + k not in converted]
    if absent:
        raise _jax_lacks(absent[0])
    return converted, notes


def _check_aux_convs(model: SETR, others: StateDict, notes: list[str]) -> None:
    """mmseg's auxiliary heads have ``num_convs`` stages (2 in its ADE20K Naive config, else 1 or 2):
    the model must be built with as many (``aux_convs=``)."""
    stages = {k.split(".")[3] for k in others if k.startswith("auxiliary_head.0.up_convs.")}
    if not stages or not model.aux_heads or model.decoder == "mla":
        return
    built = len(model.aux_heads[0].stages)
    if len(stages) != built:
        raise ValueError(
            f"the checkpoint's auxiliary heads have {len(stages)} conv stages (mmseg num_convs="
            f"{len(stages)}), this model's {built}: build it with aux_convs={len(stages)}"
        )
    notes.append(f"detected {len(stages)} conv stages in each auxiliary head (aux_convs={len(stages)})")


def _split_backbone(state: StateDict) -> tuple[StateDict, StateDict]:
    """The ViT tensors under ``backbone.`` (prefix removed), and the rest (heads, MLA neck)."""
    neck = ("backbone.norm_", "backbone.mla.")
    backbone = {k[9:]: v for k, v in state.items() if k.startswith("backbone.") and not k.startswith(neck)}
    others = {k: v for k, v in state.items() if not k.startswith("backbone.") or k.startswith(neck)}
    return backbone, others


def _from_setr_release(
    state: StateDict, model: nn.Module, known: KnownGrid | None, mmseg: bool
) -> tuple[StateDict, list[str]]:
    """An official (fudan-zvg) or mmseg 1.x SETR segmentor checkpoint -> ``model``."""
    setr = _setr(model, "mmseg_setr" if mmseg else "setr_official")
    notes: list[str] = []
    backbone, others = _split_backbone(state)
    if mmseg:
        _check_aux_convs(setr, others, notes)
        backbone = rename_keys(backbone, MMSEG_VIT.to_ours)
        heads = rename_keys(others, (MMSEG_MLA if setr.decoder == "mla" else MMSEG_UP_HEADS).to_ours)
    else:
        unused = [k for k in others if k.split(".")[-2] == "conv_seg"]
        if unused:
            notes.append(f"dropped {len(unused)} tensors of the official heads' unused conv_seg")
        table = OFFICIAL_MLA if setr.decoder == "mla" else _official_up_heads(setr)
        heads = rename_keys({k: v for k, v in others.items() if k not in unused}, table.to_ours)
    encoder = encoder_from_timm(backbone, setr.backbone, notes, known)
    return {**{"backbone." + k: v for k, v in encoder.items()}, **heads}, notes


def _to_setr_release(model: nn.Module, mmseg: bool) -> StateDict:
    """A SETR segmentor under the official (fudan-zvg) or mmseg 1.x names; the flavour must match."""
    setr = _setr(model, "mmseg_setr" if mmseg else "setr_official")
    if (setr.flavour == "mmseg") != mmseg:
        raise ValueError(f"a {setr.flavour}-flavour SETR exports to the {setr.flavour} layout only")
    if mmseg:
        encoder, heads = MMSEG_VIT, MMSEG_MLA if setr.decoder == "mla" else MMSEG_UP_HEADS
    else:
        encoder, heads = KeyMap([]), OFFICIAL_MLA if setr.decoder == "mla" else _official_up_heads(setr)

    def rename(key: str) -> str:
        if key.startswith("backbone."):
            return "backbone." + encoder.to_theirs(key.removeprefix("backbone."))
        return heads.to_theirs(key)

    return rename_keys(setr.state_dict(), rename)


TIMM = Format(
    "timm", detect=lambda keys: any(k.startswith("blocks.0.attn.qkv") for k in keys), convert=_from_timm
)
DEIT = Format(
    "deit",
    detect=lambda keys: "dist_token" in keys,
    convert=lambda s, m, known: _from_timm(s, m, known, "deit"),
)
JAX = Format(
    "jax",
    detect=lambda keys: any(k.startswith("Transformer/") or k == "embedding/kernel" for k in keys),
    convert=_from_jax,
)
MMSEG_SETR = Format(
    "mmseg_setr",
    detect=lambda keys: any(k.endswith("attn.attn.in_proj_weight") for k in keys),
    convert=lambda s, m, known: _from_setr_release(s, m, known, mmseg=True),
    export=lambda m: _to_setr_release(m, mmseg=True),
)
SETR_OFFICIAL = Format(
    "setr_official",
    detect=lambda keys: any(k.startswith("backbone.blocks.0.") for k in keys),
    convert=lambda s, m, known: _from_setr_release(s, m, known, mmseg=False),
    export=lambda m: _to_setr_release(m, mmseg=False),
)
