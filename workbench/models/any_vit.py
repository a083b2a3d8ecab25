"""Any timm ViT, explained: the probes of the explain mode on a plain ViT the workbench did not build.

    vit = timm.create_model("vit_small_patch14_reg4_dinov2", dynamic_img_size=True)
    model = ExplainedViT(vit)            # the same module objects; attention sites for the probes
    with workbench.viz.record(model) as rec:
        tokens = model(images)           # (B, N, C): vit.forward_features
    rec.attention["blocks.11"].probs     # (B, heads, N, N) over [class, registers, grid]

How it reaches inside a model it did not build: every attention class of timm's plain ViTs calls
``F.scaled_dot_product_attention(q, k, v, attn_mask=...)`` on its fast path, after its own q/k
computation (q/k norms, EVA's rotary embedding, BEiT's relative position bias as the mask). While a
recording of the current context probes an attention, a ``TorchFunctionMode`` entered around that
module's forward (and only its forward) catches the SDPA call and hands q, k and the mask to the
probe; the probabilities it returns are multiplied with v, as ``explain.attend`` does for the
workbench's own models. So the same probes (record, capture, rollout, relevance) fit every
supported family without a line per attention class, and the recorded map is the one the forward used.

The model is used as given: its modules are the same objects. Each attention module gets a forward
pre-hook and a forward hook (``ExplainedViT.remove`` takes them off); they do nothing unless a
recording open in the calling context (thread, asyncio task) probes that module, so another thread's
forward of the same model runs timm's own code untouched.

Where tokens sit: timm's order [class token, distillation token, registers, grid], ``num_prefix_tokens``
of them ahead of the grid; the grid comes from the patch embedding of the latest forward in this
context (any size with ``dynamic_img_size=True``). Token (r, c) covers input pixels [r*p, (r+1)*p) x
[c*p, (c+1)*p): ``TokenGrid`` with stride p, the one rule of every family.
"""

from __future__ import annotations

import contextvars
import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from workbench.models.explain import AttentionSite, Layout, SelfLayout, active_probe


@dataclass(frozen=True)
class Family:
    """A timm ViT family and whether the workbench explains it: ``example`` is a timm architecture."""

    name: str
    example: str
    supported: bool
    note: str


# What the README's table shows; tests build a tiny random instance of every supported example.
FAMILIES = (
    Family("ViT / AugReg", "vit_base_patch16_224", True, "class token"),
    Family("DeiT (distilled)", "deit_base_distilled_patch16_224", True, "class + distillation token"),
    Family("DeiT-3", "deit3_base_patch16_224", True, "layer scale, no position entry for the class token"),
    Family("DINO", "vit_small_patch16_224.dino", True, "the ViT architecture"),
    Family("DINOv2", "vit_small_patch14_dinov2", True, "patch 14, layer scale"),
    Family("DINOv2 with registers", "vit_small_patch14_reg4_dinov2", True, "4 registers, off the maps"),
    Family("CLIP image tower", "vit_base_patch16_clip_224", True, "pre-norm"),
    Family(
        "SigLIP image tower",
        "vit_base_patch16_siglip_224",
        True,
        "no class token: no class-token maps; its attention-pool head is not a site",
    ),
    Family("MAE", "vit_base_patch16_224.mae", True, "the ViT architecture"),
    Family("EVA-02", "eva02_small_patch14_224", True, "rotary embedding in q and k (caught after it)"),
    Family("BEiT / BEiT-2", "beit_base_patch16_224", True, "relative position bias (the mask); fixed size"),
    Family(
        "Swin, MViT, PiT, hierarchical ViTs",
        "swin_tiny_patch4_window7_224",
        False,
        "no single token grid through the blocks: not a plain ViT",
    ),
)


EXAMPLES = (
    "vit_small_patch16_224.dino, vit_base_patch14_reg4_dinov2, deit3_base_patch16_224, eva02_base_patch14_224"
)


def create_vit(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    require_dynamic: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """timm's model ``name`` with the weights of ``checkpoint`` (a file read as timm reads pretrained
    files: a plain state dict, timm's ``save_checkpoint`` layout, or a release layout that timm's
    loader for the model converts), of timm's own release (``pretrained=True``: timm downloads it) or
    random (neither). Built with ``dynamic_img_size=True`` (any input size) where the class takes it;
    ``require_dynamic`` refuses one that does not. ``kwargs`` go to timm. One-line ValueErrors."""
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm model {name!r}: expected a timm plain ViT, e.g. {EXAMPLES}")
    if checkpoint is not None and pretrained:
        raise ValueError("give checkpoint=FILE or pretrained=True, not both")
    options = dict(kwargs)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ValueError(f"checkpoint {str(checkpoint)!r} is not a file")
        options["pretrained_cfg_overlay"] = {"file": str(path)}
    load = checkpoint is not None or pretrained
    try:
        try:
            return timm.create_model(name, pretrained=load, dynamic_img_size=True, **options)
        except TypeError as error:
            if "dynamic_img_size" not in str(error):
                raise
            if require_dynamic:
                raise ValueError(
                    f"{name} is not a timm plain ViT that takes any input size (dynamic_img_size): "
                    f"expected e.g. {EXAMPLES}"
                ) from None
            return timm.create_model(name, pretrained=load, **options)
    except (RuntimeError, OSError, KeyError, TypeError) as error:
        where = (
            f"from {checkpoint}" if checkpoint is not None else "from timm's release" if pretrained else ""
        )
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        raise ValueError(f"could not build {name} {where}: {reason}".replace("  ", " ")) from None


# The token grid of the latest patch embedding in this context: attention calls that follow read it.
_GRID: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("any_vit_grid", default=(0, 0))
# (attention module, mode) of the probed attention forwards under way in this context, innermost last.
_OPEN: contextvars.ContextVar[tuple[tuple[nn.Module, TorchFunctionMode], ...]] = contextvars.ContextVar(
    "any_vit_open", default=()
)


# The prefix-token count of each hooked attention module (hooks go on once, however many wrappers).
_HOOKED: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


class _ProbedSDPA(TorchFunctionMode):
    """Inside one attention module's forward: its SDPA call goes through ``probe``."""

    def __init__(self, probe, num_prefix_tokens: int) -> None:
        super().__init__()
        self.probe = probe
        self.num_prefix_tokens = num_prefix_tokens

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v, mask, scale = _sdpa_arguments(*args, **kwargs)
        if scale is not None:  # attention_probs scales by 1/sqrt(d), as SDPA does by default
            q = q * (scale * math.sqrt(q.shape[-1]))
        probs = self.probe(q, k, mask, self._layout(q.shape[-2]))
        if probs is None:  # a caching probe: keep the fast path
            return func(*args, **kwargs)
        return probs.to(v.dtype) @ v

    def _layout(self, tokens: int) -> Layout:
        grid = _GRID.get()
        if self.num_prefix_tokens + grid[0] * grid[1] != tokens:
            raise ValueError(
                f"probed attention over {tokens} tokens, but the latest patch embedding made a "
                f"{grid[0]}x{grid[1]} grid and the model has {self.num_prefix_tokens} prefix tokens"
            )
        return SelfLayout(grid, self.num_prefix_tokens)


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    if is_causal or dropout_p:
        raise ValueError("a probed ViT attention must be bidirectional and without dropout (eval mode)")
    return query, key, value, attn_mask, scale


def _open_probe(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of an attention module: enter its probed SDPA if this context probes it."""
    probe = active_probe(module)
    if probe is None:
        return
    mode = _ProbedSDPA(probe, _HOOKED[module])
    mode.__enter__()
    _OPEN.set((*_OPEN.get(), (module, mode)))


def _close_probe(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    """Forward hook (also called on errors): leave the probed SDPA this module's pre-hook entered."""
    opened = _OPEN.get()
    if opened and opened[-1][0] is module:
        _OPEN.set(opened[:-1])
        opened[-1][1].__exit__(None, None, None)


def _keep_grid(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    """Forward hook of the patch embedding: the token grid of this forward, for the probes."""
    if output.ndim == 4:  # dynamic_img_size: (B, H, W, C)
        _GRID.set(tuple(output.shape[1:3]))
    elif hasattr(module, "dynamic_feat_size") and getattr(module, "dynamic_img_size", False):
        _GRID.set(tuple(module.dynamic_feat_size(args[0].shape[-2:])))
    else:
        _GRID.set(tuple(module.grid_size))


def check_plain_vit(vit: nn.Module) -> None:
    """Refuse, in one line naming what is expected, a model the probes cannot read."""
    name = type(vit).__name__
    needed = ("patch_embed", "blocks", "num_prefix_tokens", "forward_features")
    missing = [attribute for attribute in needed if not hasattr(vit, attribute)]
    if missing or not all(hasattr(block, "attn") for block in vit.blocks):
        supported = ", ".join(family.name for family in FAMILIES if family.supported)
        raise ValueError(
            f"{name} is not a plain timm ViT (expected patch_embed, blocks with .attn and "
            f"num_prefix_tokens; missing {missing or ['blocks[i].attn']}); supported: {supported}"
        )
    slow = [i for i, block in enumerate(vit.blocks) if not getattr(block.attn, "fused_attn", True)]
    if slow:
        raise ValueError(
            f"{name}'s attention in blocks {slow} runs without scaled_dot_product_attention "
            "(fused_attn=False, e.g. TIMM_FUSED_ATTN=0): the probes read that call; unset it"
        )
    patch = vit.patch_embed.patch_size
    if patch[0] != patch[1]:
        raise ValueError(f"{name} has {patch[0]}x{patch[1]} patches; the token grid needs square ones")


class ExplainedViT(nn.Module):
    """A timm ViT (``vit``, used as given) with the workbench's explain contract.

    ``forward(images)`` is ``vit.forward_features``: tokens (B, prefix + rows*cols, C), final norm
    applied. ``attention_sites()`` names every block's attention; ``patch_features`` gives the grid's
    tokens as maps; ``logits`` the classifier's scores where the model has one.
    """

    def __init__(self, vit: nn.Module) -> None:
        check_plain_vit(vit)
        super().__init__()
        self.vit = vit
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.num_classes = getattr(vit, "num_classes", 0)
        self.pretrained_cfg = dict(getattr(vit, "pretrained_cfg", None) or {})
        self.dynamic_img_size = bool(getattr(vit, "dynamic_img_size", False))
        self.size_divisor = self.patch_size  # ``pad_for`` pads inputs to whole patches
        self._handles = install_probes(vit)

    def remove(self) -> None:
        """Take this wrapper's hooks off the given model's modules."""
        remove_probes(self.vit, self._handles)
        self._handles = []

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """(H, W) the model takes, where it takes no other size (no ``dynamic_img_size``)."""
        if self.dynamic_img_size:
            return None
        return tuple(self.vit.patch_embed.img_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, prefix + rows*cols, C) after the final norm."""
        return self.vit.forward_features(images)

    def patch_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) of this forward -> the grid's tokens as maps (B, C, rows, cols)."""
        rows, cols = _GRID.get()
        grid = tokens[:, self.num_prefix_tokens :]
        if grid.shape[1] != rows * cols:
            raise ValueError(f"{grid.shape[1]} grid tokens do not fill the latest {rows}x{cols} grid")
        return grid.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) -> class scores (B, num_classes), timm's pooling and head."""
        if not self.num_classes:
            raise ValueError(
                f"{type(self.vit).__name__} has no classifier (num_classes=0): class scores need a head"
            )
        return self.vit.forward_head(tokens)

    def attention_sites(self) -> dict[str, AttentionSite]:
        return vit_sites(self.vit)


def install_probes(vit: nn.Module) -> list:
    """Hook ``vit``'s patch embedding and attention modules for the probes (once per module, however
    many callers); returns the handles this call added. Inert unless a recording probes a module."""
    check_plain_vit(vit)
    handles = []
    if vit.patch_embed not in _HOOKED:
        handles.append(vit.patch_embed.register_forward_hook(_keep_grid))
        _HOOKED[vit.patch_embed] = 0
    for block in vit.blocks:
        if block.attn not in _HOOKED:
            _HOOKED[block.attn] = vit.num_prefix_tokens
            handles.append(block.attn.register_forward_pre_hook(_open_probe))
            handles.append(block.attn.register_forward_hook(_close_probe, always_call=True))
    return handles


def remove_probes(vit: nn.Module, handles: list) -> None:
    """Undo ``install_probes`` (its ``handles``)."""
    for handle in handles:
        handle.remove()
    if handles:
        for module in [vit.patch_embed, *(block.attn for block in vit.blocks)]:
            _HOOKED.pop(module, None)


def vit_sites(vit: nn.Module) -> dict[str, AttentionSite]:
    """Every block's attention of a hooked plain ViT, named ``blocks.i``, on its patch-size grid."""
    stride = vit.patch_embed.patch_size[0]
    return {f"blocks.{i}": AttentionSite(block.attn, stride) for i, block in enumerate(vit.blocks)}
