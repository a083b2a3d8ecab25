"""GPViT: a high-resolution non-hierarchical vision transformer with Group Propagation.

Yang, Xu, De Mello, Crowley, Wang, "GPViT: A High Resolution Non-Hierarchical Vision Transformer
with Group Propagation", ICLR 2023 (arXiv 2212.06795); released code ChenhongyiYang/GPViT.

A conv stem takes the image to stride 8, where all 12 layers run. Layers 1, 4, 7, 10 are GP blocks:
learnable group tokens *group* the image tokens (cross-attention), an MLP-Mixer layer *propagates*
information among the groups, and the image tokens *ungroup* it back (cross-attention). The other
8 layers attend inside CSWin-style cross-shaped stripes of width 2 with LePE. No N x N attention is
ever formed: stripes cost N * (H + W), grouping and ungrouping N * G.

Variants (ImageNet-1k, 224x224; params of the full classifier, FLOPs as multiply-adds):

    variant  C    stem 3x3 convs  neck        params       GFLOPs  top-1
    L1       216  0               GroupNeck    9,589,848    6.13   80.5
    L2       348  1               GroupNeck   24,162,680   15.70   83.4
    L3       432  1               avg pool    36,654,056   23.50   84.1
    L4       624  2               avg pool    75,484,456   48.24   84.3

Group tokens per GP block: 64, 32, 32, 16. ADE20K mIoU (UperNet / SegFormer head): 49.1 / 46.9,
50.2 / 49.2, 51.7 / 50.8, 52.5 / 51.3.

As released, and where that differs from the paper's text:

- Grouping projects only the keys; queries are the LayerNorm'ed group tokens and values the
  LayerNorm'ed image tokens, with no output projection and no residual (the groups replace the
  group tokens).
- Ungrouping replaces the additive residual by Linear(2C -> C) over [input, attention output].
- The MLP-Mixer's token-mixing width is C/2, set by the channel width, not by G.
- Every block ends with a depthwise 3x3 conv that has no residual (LePE blocks: bias-free conv;
  GP blocks: conv + BN + ReLU): the block's output *is* the conv's output.
- LayerNorm eps is 1e-6 in the stripe blocks, the final norm and the dense-output norms, 1e-5
  inside GP blocks and the GroupNeck.

Odd token grids (e.g. 500x375 images, a 63x47 grid): the released code needs an even grid. Here the
stripe attention pads the grid to whole stripes and masks the padded keys, and the padded values
are zero (as LePE's own zero padding at stripe borders), so a token in a truncated stripe attends
exactly to the real tokens of its stripe. Even grids take no padding path at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn

from workbench.models.explain import (
    AttentionSite,
    CrossLayout,
    GroupingLayout,
    Probed,
    WindowLayout,
    attend,
)
from workbench.models.heads import FCNHead, SegFormerHead, UPerHead
from workbench.models.layers import (
    check_dtype,
    check_images,
    check_img_size,
    merge_heads,
    resample_pos_embed,
    split_heads,
)
from workbench.models.registry import (
    PaperFigures,
    pop_keys,
    register,
    variant_kwargs,
)
from workbench.models.segmentor import Segmentor
from workbench.models.timm_contract import TimmClassifier

STRIDE = 8
GP_LAYERS = {1: 64, 4: 32, 7: 32, 10: 16}  # layer index -> number of group tokens
LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


def token_grid(image_size: Sequence[int]) -> tuple[int, int]:
    """Token grid of an image (H, W): the stem takes every side to ceil(side / 8)."""
    return -(-image_size[0] // STRIDE), -(-image_size[1] // STRIDE)


def _to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) laid out channels-last: a view of the tokens, no copy, and the
    convolutions run oneDNN's channels-last kernels on it."""
    return tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1]).permute(0, 3, 1, 2)


def _to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C): a view (contiguous tokens) when the map is channels-last."""
    return feature_map.flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """7x7/2 conv-BN-ReLU, ``num_convs`` 3x3 conv-BN-ReLU, zero padding to a multiple of 4, 4x4/4 projection."""

    def __init__(self, in_chans: int, embed_dim: int, num_convs: int, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        convs: list[nn.Module] = []
        for _ in range(num_convs):
            convs += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        self.convs = nn.Sequential(*convs) if convs else None
        self.projection = nn.Conv2d(width, embed_dim, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C, ceil(H/8), ceil(W/8))."""
        x = self.stem(images)
        if self.convs is not None:
            x = self.convs(x)
        x = F.pad(x, (0, (-x.shape[-1]) % 4, 0, (-x.shape[-2]) % 4))  # right and bottom ("corner")
        return self.projection(x)


def _to_stripes(x: torch.Tensor, grid: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B * windows, rows * cols, C), zero-padding the grid to whole windows."""
    (height, width), (rows, cols) = grid, window
    x = x.reshape(x.shape[0], height, width, -1)
    x = F.pad(x, (0, 0, 0, (-width) % cols, 0, (-height) % rows))
    batch, padded_h, padded_w, channels = x.shape
    x = x.reshape(batch, padded_h // rows, rows, padded_w // cols, cols, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, rows * cols, channels)


def _from_stripes(
    x: torch.Tensor, grid: tuple[int, int], window: tuple[int, int], batch: int
) -> torch.Tensor:
    """Inverse of ``_to_stripes``: (B * windows, rows * cols, C) -> (B, H*W, C), padding cropped."""
    (height, width), (rows, cols) = grid, window
    padded_h, padded_w = height + (-height) % rows, width + (-width) % cols
    x = x.reshape(batch, padded_h // rows, padded_w // cols, rows, cols, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, :height, :width].reshape(batch, height * width, -1)


class StripeAttention(nn.Module, Probed):
    """One branch of the cross-shaped window attention (CSWin) with LePE, on its half of the channels.

    Vertical branch: stripes of full height and ``width`` columns; horizontal: ``width`` rows and
    full width. Inside a stripe: softmax(q k^T / sqrt(d)) v + LePE(v), LePE a depthwise 3x3 conv on
    the stripe's values (zero padding at the stripe's borders).
    """

    def __init__(self, dim: int, num_heads: int, width: int, vertical: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.width = width
        self.vertical = vertical
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def window(self, grid: tuple[int, int]) -> tuple[int, int]:
        return (grid[0], self.width) if self.vertical else (self.width, grid[1])

    def key_mask(self, grid: tuple[int, int], batch: int, device: torch.device) -> torch.Tensor | None:
        """(B * windows, 1, 1, L) True for real tokens; None when the stripes tile the grid exactly."""
        window = self.window(grid)
        if grid[0] % window[0] == 0 and grid[1] % window[1] == 0:
            return None
        real = torch.ones(1, grid[0] * grid[1], 1, dtype=torch.bool, device=device)
        return _to_stripes(real, grid, window).reshape(-1, 1, 1, window[0] * window[1]).repeat(batch, 1, 1, 1)

    def layout(self, grid: tuple[int, int]) -> WindowLayout:
        window = self.window(grid)
        count = (-(-grid[0] // window[0]), -(-grid[1] // window[1]))
        return WindowLayout(tuple(grid), size=window, count=count)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """q, k, v (B, H*W, dim) -> (B, H*W, dim)."""
        window = self.window(grid)
        q_s, k_s, values = (_to_stripes(t, grid, window) for t in (q, k, v))  # (B * windows, L, dim)
        lepe = _to_tokens(self.lepe(_to_map(values, window)))
        mask = self.key_mask(grid, q.shape[0], q.device)
        heads = [split_heads(t, self.num_heads) for t in (q_s, k_s, values)]
        attended = attend(*heads, mask, probe=self.probe(), layout=lambda: self.layout(grid))
        attended = merge_heads(attended) + lepe
        return _from_stripes(attended, grid, window, q.shape[0])


class StripeBlock(nn.Module):
    """LePE block (``LePEAttnSimpleDWBlock``): stripe attention, FFN, then a depthwise conv, no residual."""

    def __init__(
        self, dim: int, num_heads: int, stripe_width: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm6(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.stripes = nn.ModuleList(
            StripeAttention(dim // 2, num_heads // 2, stripe_width, vertical) for vertical in (True, False)
        )
        self.proj = nn.Linear(dim, dim)
        self.norm2 = LayerNorm6(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        half = x.shape[-1] // 2
        vertical = self.stripes[0](q[..., :half], k[..., :half], v[..., :half], grid)
        horizontal = self.stripes[1](q[..., half:], k[..., half:], v[..., half:], grid)
        x = x + self.drop_path(self.proj(torch.cat([vertical, horizontal], dim=-1)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return _to_tokens(self.dwconv(_to_map(x, grid)))


class GroupingAttention(nn.Module, Probed):
    """Queries gather image tokens; only the keys are projected (``LightAttModule``).

    q = LN(queries), v = LN(tokens), k = W_k v; softmax over the image tokens; no output projection.
    Also the GroupNeck's pooling, there on tokens that are already normalised (``norm_key=False``).
    """

    def __init__(self, dim: int, num_heads: int = 6, qkv_bias: bool = True, norm_key: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim) if norm_key else nn.Identity()
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)

    def qkv(self, queries: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        values = self.norm_key(tokens)
        return [
            split_heads(t, self.num_heads) for t in (self.norm_query(queries), self.k_proj(values), values)
        ]

    def forward(
        self, queries: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """queries (B, G, C), image tokens (B, N, C) on ``grid`` -> grouped features (B, G, C)."""
        return merge_heads(
            attend(*self.qkv(queries, tokens), probe=self.probe(), layout=lambda: GroupingLayout(grid))
        )


class GroupPropagation(nn.Module):
    """One MLP-Mixer layer over the groups: token mixing (G -> C/2 -> G), then channel mixing."""

    def __init__(self, num_groups: int, dim: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = Mlp(num_groups, int(0.5 * dim), num_groups)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """(B, G, C) -> (B, G, C)."""
        groups = groups + self.drop_path(self.token_mlp(self.norm1(groups).transpose(1, 2)).transpose(1, 2))
        return groups + self.drop_path(self.channel_mlp(self.norm2(groups)))


class UngroupingAttention(nn.Module, Probed):
    """Image tokens read the groups back (``FullAttnCatBlock``).

    Full cross-attention (q from LN(tokens), k and v from LN(groups)), then Linear(2C -> C) over
    [tokens, attention output] instead of a residual sum, then a residual FFN.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.fuse = nn.Linear(2 * dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def qkv(self, tokens: torch.Tensor, groups: torch.Tensor) -> list[torch.Tensor]:
        keys = self.norm_key(groups)
        projected = (self.q_proj(self.norm_query(tokens)), self.k_proj(keys), self.v_proj(keys))
        return [split_heads(t, self.num_heads) for t in projected]

    def forward(self, tokens: torch.Tensor, groups: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """tokens (B, N, C) on ``grid``, groups (B, G, C) -> (B, N, C)."""
        attended = attend(
            *self.qkv(tokens, groups),
            probe=self.probe(),
            layout=lambda: CrossLayout(grid, key_shape=(groups.shape[1],)),
        )
        attended = self.out_proj(merge_heads(attended))
        x = self.fuse(torch.cat([tokens, self.drop_path(attended)], dim=-1))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GPBlock(nn.Module):
    """Group Propagation block: group, propagate, ungroup, then depthwise conv-BN-ReLU (no residual)."""

    def __init__(
        self,
        dim: int,
        num_groups: int,
        group_heads: int,
        ungroup_heads: int,
        mlp_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.group_tokens = nn.Parameter(torch.zeros(1, num_groups, dim))
        self.grouping = GroupingAttention(dim, group_heads)
        self.propagation = GroupPropagation(num_groups, dim, mlp_ratio, drop_path)
        self.ungrouping = UngroupingAttention(dim, ungroup_heads, mlp_ratio, drop_path)
        self.dwconv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        groups = self.grouping(self.group_tokens.expand(x.shape[0], -1, -1), x, grid)
        x = self.ungrouping(x, self.propagation(groups), grid)
        return _to_tokens(self.dwconv(_to_map(x, grid)))


class GroupNeck(nn.Module):
    """Attention pooling of the L1/L2 classifiers: one learnable query attends over the final tokens."""

    def __init__(self, dim: int, num_heads: int = 6) -> None:
        super().__init__()
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))  # zeros, as released (never re-initialised)
        self.pool = GroupingAttention(dim, num_heads, qkv_bias=False, norm_key=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) normalised tokens -> (B, C)."""
        return self.pool(self.query_token.expand(tokens.shape[0], -1, -1), tokens).squeeze(1)


class GPViT(TimmClassifier, nn.Module):
    """GPViT backbone and classifier (timm-style ``forward_features`` / ``forward_head``).

    ``out_indices`` (default: the last layer) are the layers ``forward_dense`` returns as
    (B, C, H/8, W/8) maps: the last layer through the final norm, the others through their own
    LayerNorm (as in the segmentation checkpoints). ``forward_intermediates`` and ``feature_info``
    are timm's: every layer is a feature at stride 8.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 216,
        num_stem_convs: int = 0,
        depth: int = 12,
        num_heads: int = 12,
        group_layers: Mapping[int, int] = GP_LAYERS,
        group_heads: int = 6,
        ungroup_heads: int = 6,
        stripe_width: int = 2,
        mlp_ratio: float = 4.0,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "group",
        drop_path_rate: float = 0.2,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if num_heads % 2 or any(embed_dim % heads for heads in (num_heads, group_heads, ungroup_heads)):
            raise ValueError(
                f"embed_dim must split evenly into {num_heads} stripe heads (an even number), {group_heads} "
                f"grouping and {ungroup_heads} ungrouping heads; got embed_dim={embed_dim}"
            )
        if global_pool not in ("group", "avg", ""):
            raise ValueError(f"global_pool must be 'group', 'avg' or '', got {global_pool!r}")
        out_indices = (depth - 1,) if out_indices is None else out_indices
        bad = [i for i in out_indices if not 0 <= i < depth]
        if bad or any(i >= depth for i in group_layers):
            raise ValueError(
                f"layers {bad or sorted(group_layers)} do not exist in a {depth}-layer GPViT (0-based)"
            )
        self.embed_dim = self.num_features = embed_dim
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.out_indices = tuple(sorted(set(out_indices)))
        self.pretrain_grid = token_grid(check_img_size(img_size))
        self.patch_embed = ConvStem(in_chans, embed_dim, num_stem_convs)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.pretrain_grid[0] * self.pretrain_grid[1], embed_dim)
        )
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear 0 -> rate
        self.blocks = nn.ModuleList(
            GPBlock(embed_dim, group_layers[i], group_heads, ungroup_heads, mlp_ratio, rates[i])
            if i in group_layers
            else StripeBlock(embed_dim, num_heads, stripe_width, mlp_ratio, rates[i])
            for i in range(depth)
        )
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=STRIDE, module=f"blocks.{i}") for i in range(depth)
        ]
        self.norm = LayerNorm6(embed_dim)
        self.out_norms = nn.ModuleDict(
            {str(i): LayerNorm6(embed_dim) for i in self.out_indices if i != depth - 1}
        )
        self.neck = GroupNeck(embed_dim, group_heads) if global_pool == "group" else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.apply(self._init_weights)
        trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            if isinstance(block, GPBlock):
                trunc_normal_(block.group_tokens, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Position embedding, group tokens and the neck's query token train without weight decay
        (timm's convention; the official recipe's ``custom_keys``)."""
        tokens = ("pos_embed", "group_tokens", "query_token")
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in tokens}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups: stem, blocks, then norms and the pooling neck; the classifier
        ``head``, left unmatched, is the head group."""
        blocks = r"^blocks\.(\d+)"
        return dict(
            stem=r"^pos_embed|patch_embed",
            blocks=blocks if coarse else [(blocks, None), (r"^norm|out_norms|neck", (99999,))],
        )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a ValueError naming what was expected if ``images`` cannot go through the stem."""
        check_images(images, self.in_chans, min_size=STRIDE)
        check_dtype(images, self.pos_embed)

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        self.check_images(images)
        x = self.patch_embed(images)
        grid = tuple(x.shape[-2:])
        pos_embed = resample_pos_embed(self.pos_embed, grid, self.pretrain_grid, rule="bicubic")  # as mmcls
        return _to_tokens(x) + pos_embed, grid

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: the outputs of layers ``indices`` (None: all; n: the last n;
        a list: those, negative from the end), as (B, C, H/8, W/8) maps (``output_fmt="NLC"``: tokens
        (B, N, C)), each through the final norm if ``norm``; with ``stop_early`` no layer after the
        last one taken runs. Returns the maps, or (final normalised tokens (B, N, C), maps).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(images)
        intermediates = []
        for i, block in enumerate(self.blocks[: max_index + 1] if stop_early else self.blocks):
            x = block(x, grid)
            if i in take_indices:
                tokens = self.norm(x) if norm else x
                intermediates.append(_to_map(tokens, grid) if output_fmt == "NCHW" else tokens)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's pruning: drop the layers after the last of ``indices`` (and their ``out_norms``), the
        final norm if ``prune_norm``, the pooling neck and classifier if ``prune_head``. Returns the
        absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        self.out_indices = tuple(i for i in self.out_indices if i <= max_index)
        self.out_norms = nn.ModuleDict({k: v for k, v in self.out_norms.items() if int(k) <= max_index})
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.num_classes, self.global_pool, self.neck, self.head = 0, "", None, nn.Identity()
        return take_indices

    def set_global_pool(self, global_pool: str) -> None:
        """``"avg"``, ``""`` (dropping the pooling neck) or ``"group"`` (the neck the model was built with)."""
        if global_pool == "group" and self.neck is None:
            raise ValueError("global_pool='group' needs the model's group pooling neck: build it with it")
        if global_pool != "group":
            super().set_global_pool(global_pool)
            self.neck = None
        self.global_pool = global_pool

    def forward_dense(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Layers ``out_indices`` as (B, C, H/8, W/8) maps through their ``out_norms`` (the last layer:
        the final norm)."""
        tokens = self.forward_intermediates(
            images, list(self.out_indices), stop_early=True, output_fmt="NLC", intermediates_only=True
        )
        grid = token_grid(images.shape[-2:])
        out_norms = dict(self.out_norms)  # none for the last layer: it takes the final norm
        norms = [out_norms.get(str(i), self.norm) for i in self.out_indices]
        return [_to_map(norm(t), grid) for norm, t in zip(norms, tokens, strict=True)]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> final normalised tokens (B, N, C)."""
        x, grid = self._embed(images)
        for block in self.blocks:
            x = block(x, grid)
        return self.norm(x)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final tokens (B, N, C) -> logits (B, num_classes), or pooled features with ``pre_logits``."""
        if self.global_pool == "group":
            pooled = self.neck(tokens)
        elif self.global_pool == "avg":
            pooled = tokens.mean(dim=1)
        else:
            pooled = tokens
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def attention_sites(self) -> dict[str, AttentionSite]:
        """Stripe attention (vertical and horizontal branches), grouping and ungrouping, at stride 8."""
        sites = {}
        for i, block in enumerate(self.blocks):
            if isinstance(block, GPBlock):
                sites[f"blocks.{i}.grouping"] = AttentionSite(block.grouping, STRIDE)
                sites[f"blocks.{i}.ungrouping"] = AttentionSite(block.ungrouping, STRIDE)
            else:
                sites[f"blocks.{i}.vertical"] = AttentionSite(block.stripes[0], STRIDE)
                sites[f"blocks.{i}.horizontal"] = AttentionSite(block.stripes[1], STRIDE)
        return sites


class GPViTSegmentor(Segmentor):
    """GPViT with the UperNet or SegFormer decode head of the official ADE20K configs."""

    def __init__(
        self,
        *,
        backbone: GPViT,
        decoder: str,
        num_classes: int,
        aux_weight: float = 0.4,
        aux_heads: bool = True,
        dropout: float = 0.1,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        widths = [backbone.embed_dim] * len(backbone.out_indices)
        if decoder == "upernet":
            decode_head: nn.Module = UPerHead(widths, num_classes, channels=512, dropout=dropout)
            aux = [FCNHead(widths[-1], num_classes, channels=256, dropout=dropout)] if aux_heads else []
        elif decoder == "segformer":
            decode_head, aux = SegFormerHead(widths, num_classes, channels=256, dropout=dropout), []
        else:
            raise ValueError(f"decoder must be 'upernet' or 'segformer', got {decoder!r}")
        super().__init__(
            backbone=backbone,
            decode_head=decode_head,
            decode_in=tuple(range(len(widths))),
            aux_heads=aux,
            aux_in=[len(widths) - 1] * len(aux),
            aux_weight=aux_weight,
            num_classes=num_classes,
            in_chans=backbone.in_chans,
            size_divisor=1,
            min_size=STRIDE,
        )
        self.decoder = decoder


# Per variant: width, extra stem convs, classifier pooling, drop path for ImageNet / ADE20K.
_VARIANTS = {
    "l1": dict(embed_dim=216, num_stem_convs=0, global_pool="group", drop_path=(0.2, 0.1)),
    "l2": dict(embed_dim=348, num_stem_convs=1, global_pool="group", drop_path=(0.2, 0.1)),
    "l3": dict(embed_dim=432, num_stem_convs=1, global_pool="avg", drop_path=(0.3, 0.2)),
    "l4": dict(embed_dim=624, num_stem_convs=2, global_pool="avg", drop_path=(0.3, 0.2)),
}
_PAPER = {  # params of the full classifier, GFLOPs @224, UperNet / SegFormer-head segmentor params (M)
    "l1": (9_589_848, 6.13, 37, 9),
    "l2": (24_162_680, 15.70, 53, 24),
    "l3": (36_654_056, 23.50, 66, 36),
    "l4": (75_484_456, 48.24, 107, 76),
}


_SEGMENTOR_KEYS = ("num_classes", "aux_weight", "aux_heads", "dropout")


def _classifier(variant: str, kwargs: dict[str, Any]) -> GPViT:
    return GPViT(**variant_kwargs(_VARIANTS[variant], 0, kwargs))


def _segmentor(variant: str, decoder: str, kwargs: dict[str, Any]) -> GPViTSegmentor:
    head_args = pop_keys(kwargs, _SEGMENTOR_KEYS)
    depth = kwargs.get("depth", 12)
    taps = tuple(depth * (i + 1) // 4 - 1 for i in range(4))  # the official (2, 5, 8, 11) at depth 12
    backbone_args = variant_kwargs(_VARIANTS[variant], 1, {"out_indices": taps, **kwargs})
    backbone = GPViT(**{**backbone_args, "num_classes": 0, "global_pool": ""})
    return GPViTSegmentor(backbone=backbone, decoder=decoder, **{"num_classes": 150, **head_args})


_CLS_NOTE = (
    "GPViT classifiers: the README's 9.3/23.8/36.2/75.4M are inconsistent (some backbone-only, some "
    "not); shown are the full classifiers of the released code (= mmpretrain's metafile), GFLOPs as "
    "measured by mmpretrain. Our counts are exact."
)
_SEG_NOTE = (
    "GPViT segmentors: the README gives whole millions, mostly cut off rather than rounded (36.97M is "
    "listed as 36M, 9.85M as 9M, but 75.81M as 76M); the official configs built with 150 classes have "
    "exactly the counts shown here (tests/test_gpvit.py)."
)


def _classifier_figures(variant: str) -> PaperFigures:
    params, gflops, _, _ = _PAPER[variant]
    return PaperFigures("GPViT README", 224, 1000, params_m=params / 1e6, gflops=gflops, note=_CLS_NOTE)


def _segmentor_figures(variant: str, decoder: str) -> PaperFigures:
    params = _PAPER[variant][2 if decoder == "upernet" else 3]
    return PaperFigures("GPViT README, ADE20K", 512, 150, params_m=params, note=_SEG_NOTE)


_gpvit = partial(register, family="GPViT", feature_indices=3)
_TINY = dict(embed_dim=24, depth=4, group_layers={1: 8, 3: 4})  # stripe, GP, stripe, GP


@_gpvit(task="classification", paper=_classifier_figures("l1"), tiny=_TINY)
def gpvit_l1(**kwargs: Any) -> GPViT:
    return _classifier("l1", kwargs)


@_gpvit(task="classification", paper=_classifier_figures("l2"), tiny=_TINY)
def gpvit_l2(**kwargs: Any) -> GPViT:
    return _classifier("l2", kwargs)


@_gpvit(task="classification", paper=_classifier_figures("l3"), tiny=_TINY)
def gpvit_l3(**kwargs: Any) -> GPViT:
    return _classifier("l3", kwargs)


@_gpvit(task="classification", paper=_classifier_figures("l4"), tiny=_TINY)
def gpvit_l4(**kwargs: Any) -> GPViT:
    return _classifier("l4", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l1", "upernet"), tiny=_TINY)
def gpvit_l1_upernet(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l1", "upernet", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l2", "upernet"), tiny=_TINY)
def gpvit_l2_upernet(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l2", "upernet", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l3", "upernet"), tiny=_TINY)
def gpvit_l3_upernet(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l3", "upernet", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l4", "upernet"), tiny=_TINY)
def gpvit_l4_upernet(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l4", "upernet", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l1", "segformer"), tiny=_TINY)
def gpvit_l1_segformer(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l1", "segformer", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l2", "segformer"), tiny=_TINY)
def gpvit_l2_segformer(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l2", "segformer", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l3", "segformer"), tiny=_TINY)
def gpvit_l3_segformer(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l3", "segformer", kwargs)


@_gpvit(task="segmentation", paper=_segmentor_figures("l4", "segformer"), tiny=_TINY)
def gpvit_l4_segformer(**kwargs: Any) -> GPViTSegmentor:
    return _segmentor("l4", "segformer", kwargs)
