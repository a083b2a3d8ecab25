"""Plain-ViT and SETR checkpoints -> workbench SETR: timm / Google JAX / DeiT encoders, the official
SETR release and mmseg 1.x SETR (see the key tables in the SETR specification)."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed

from workbench.interop.keymap import KeyMap

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
MMSEG_UP_HEADS = KeyMap([("stages.{n}.", "up_convs.{n}.0."), ("classifier.", "conv_seg.")])
MMSEG_MLA = KeyMap(
    [
        ("stream_heads.{n}.", "up_convs.{n}."),
        ("neck.norms.{n}.", "neck.norm.{n}."),
        ("neck.lateral_convs.{n}.", "neck.mla.channel_proj.{n}."),
        ("neck.stream_convs.{n}.", "neck.mla.feat_extract.{n}."),
        ("classifier.", "conv_seg."),
    ]
)


def jax_to_timm(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Google's ViT .npz (``Transformer/encoderblock_N/...``) -> timm names and layouts."""
    out: dict[str, torch.Tensor] = {}
    try:
        kernel = arrays["embedding/kernel"]
        out["patch_embed.proj.weight"] = kernel.permute(3, 2, 0, 1)  # HWIO -> OIHW
        out["patch_embed.proj.bias"] = arrays["embedding/bias"]
        if "cls" in arrays:
            out["cls_token"] = arrays["cls"]
        out["pos_embed"] = arrays["Transformer/posembed_input/pos_embedding"]
        depth = 1 + max(
            int(k.split("/")[1].split("_")[1]) for k in arrays if k.startswith("Transformer/encoderblock_")
        )
        for n in range(depth):
            p, b = f"Transformer/encoderblock_{n}/", f"blocks.{n}."
            attention = p + "MultiHeadDotProductAttention_1/"
            for norm, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
                out[b + f"{name}.weight"], out[b + f"{name}.bias"] = (
                    arrays[p + f"{norm}/scale"],
                    arrays[p + f"{norm}/bias"],
                )
            out[b + "attn.qkv.weight"] = torch.cat(
                [arrays[attention + f"{x}/kernel"].flatten(1).T for x in ("query", "key", "value")]
            )
            out[b + "attn.qkv.bias"] = torch.cat(
                [arrays[attention + f"{x}/bias"].flatten() for x in ("query", "key", "value")]
            )
            out[b + "attn.proj.weight"] = arrays[attention + "out/kernel"].flatten(0, 1).T
            out[b + "attn.proj.bias"] = arrays[attention + "out/bias"]
            for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
                out[b + f"mlp.{name}.weight"] = arrays[p + f"MlpBlock_3/{dense}/kernel"].T
                out[b + f"mlp.{name}.bias"] = arrays[p + f"MlpBlock_3/{dense}/bias"]
    except KeyError as missing:
        raise ValueError(f"the .npz lacks the array {missing.args[0]!r} of Google's ViT layout") from None
    return out


def encoder_from_timm(state: dict[str, torch.Tensor], encoder, notes: list[str]) -> dict[str, torch.Tensor]:
    """timm-named encoder tensors -> our SETR encoder's (no prefix): drops the final norm and the
    classifiers, the DeiT distillation token and its position entry, the class token for MLA, and
    resamples the position grid bilinearly (SETR's rule) to the encoder's."""
    dropped = [k for k in state if k.startswith(("norm.", "head", "fc_norm.", "pre_logits", "dist_token"))]
    if dropped:
        notes.append(
            f"dropped {len(dropped)} tensors SETR does not use (final norm, classifier, distillation)"
        )
    out = {k: v for k, v in state.items() if k not in dropped}
    if "pos_embed" in out:
        pos = out["pos_embed"]
        prefix = 1 + int("dist_token" in state)
        grid_tokens = pos.shape[1] - prefix
        side = round(grid_tokens**0.5)
        if side * side != grid_tokens:  # no class token at all (e.g. an MLA-style file)
            prefix, side = 0, round(pos.shape[1] ** 0.5)
        cls, grid = pos[:, :1] if prefix else pos[:, :0], pos[:, prefix:]
        target = encoder.patch_embed.grid_size
        if (side, side) != tuple(target):
            grid = resample_abs_pos_embed(
                grid,
                new_size=target,
                old_size=(side, side),
                num_prefix_tokens=0,
                interpolation="bilinear",
                antialias=False,
            )
            notes.append(f"resampled pos_embed {side}x{side} -> {target[0]}x{target[1]} (bilinear)")
        keep_cls = encoder.num_prefix_tokens > 0
        if prefix == 2:
            notes.append("dropped the distillation token's position entry")
        out["pos_embed"] = torch.cat([cls, grid], dim=1) if keep_cls else grid
        if not keep_cls:
            out.pop("cls_token", None)
            notes.append("dropped cls_token and its position entry (MLA runs without the class token)")
    return out


def official_heads(state: dict[str, torch.Tensor], model, notes: list[str]) -> dict[str, torch.Tensor]:
    """fudan-zvg/SETR head names -> ours (``conv_i`` / ``syncbn_fc_i`` / last conv = classifier)."""
    out: dict[str, torch.Tensor] = {}
    unused = [k for k in state if k.split(".")[-2] == "conv_seg"]
    if unused:
        notes.append(f"dropped {len(unused)} tensors of the official heads' unused conv_seg")
    heads = {"decode_head.": model.decode_head} | {
        f"auxiliary_head.{i}.": h for i, h in enumerate(model.aux_heads)
    }
    for key, value in state.items():
        if key in unused:
            continue
        prefix = next((p for p in heads if key.startswith(p)), None)
        rest = key[len(prefix) :] if prefix else key
        ours = (
            ("decode_head." if prefix == "decode_head." else f"aux_heads.{prefix.split('.')[1]}.")
            if prefix
            else ""
        )
        parts = rest.split(".")
        if prefix is None:  # MLA neck inside the official backbone
            if rest.startswith("backbone.norm_"):
                out[f"neck.norms.{parts[1].split('_')[1]}.{parts[2]}"] = value
            elif rest.startswith("backbone.mla.mla_p"):
                level = int(parts[2][5]) - 2  # mla_p2 ... mla_p5 = Z^6 ... Z^24
                group = "lateral_convs" if parts[2].endswith("_1x1") else "stream_convs"
                out[f"neck.{group}.{level}.{'conv' if parts[3] == '0' else 'bn'}.{parts[4]}"] = value
            else:
                out[key] = value
        elif parts[0] == "norm":
            out[ours + rest] = value
        elif parts[0].startswith("conv_"):
            index = int(parts[0][5:])
            stages = len(heads[prefix].stages)
            out[ours + (f"stages.{index}.conv." if index < stages else "classifier.") + parts[1]] = value
        elif parts[0].startswith("syncbn_fc_"):
            out[ours + f"stages.{parts[0][10:]}.bn.{parts[1]}"] = value
        elif parts[0] == "mlahead":  # head2 ... head5, Sequential(conv, bn, relu, conv, bn, relu)
            stream = int(parts[1][4]) - 2
            layer, kind = {"0": ("0", "conv"), "1": ("0", "bn"), "3": ("1", "conv"), "4": ("1", "bn")}[
                parts[2]
            ]
            out[f"decode_head.stream_heads.{stream}.{layer}.{kind}.{parts[3]}"] = value
        elif parts[0] == "cls":
            out[f"decode_head.classifier.{parts[1]}"] = value
        elif parts[0] == "aux":
            out[ours.removesuffix(".") + "." + parts[1]] = value
        else:
            out[key] = value
    return out


def setr_state(state: dict[str, torch.Tensor], kind: str, model, notes: list[str]) -> dict[str, torch.Tensor]:
    """A checkpoint of ``kind`` (timm, deit, jax, setr_official, mmseg_setr) -> our SETR's keys."""
    if kind == "jax":
        state = jax_to_timm(state)
    if kind in ("timm", "deit", "jax"):
        return {"backbone." + k: v for k, v in encoder_from_timm(state, model.backbone, notes).items()}
    backbone = {
        k[9:]: v
        for k, v in state.items()
        if k.startswith("backbone.") and not k.startswith(("backbone.norm_", "backbone.mla."))
    }
    others = {
        k: v
        for k, v in state.items()
        if not k.startswith("backbone.") or k.startswith(("backbone.norm_", "backbone.mla."))
    }
    if kind == "mmseg_setr":
        backbone = {MMSEG_VIT.to_ours(k): v for k, v in backbone.items()}
        table = MMSEG_MLA if model.decoder == "mla" else MMSEG_UP_HEADS
        heads = {}
        for key, value in others.items():
            key = table.to_ours(key).replace("auxiliary_head.", "aux_heads.", 1)
            if model.decoder == "mla" and key.startswith("aux_heads."):  # MLA's aux heads are bare convs
                key = key.replace(".classifier.", ".", 1)
            heads[key] = value
    else:
        heads = official_heads(others, model, notes)
    encoder = encoder_from_timm(backbone, model.backbone, notes)
    return {**{"backbone." + k: v for k, v in encoder.items()}, **heads}
