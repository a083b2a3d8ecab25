"""HLG Transformers: hierarchical local-global attention.

Zhang, Lu, Zheng, Zhao, Zhu, Fu, Xiang, Feng, Torr, "Vision Transformers: From Semantic Segmentation
to Dense Prediction", IJCV 2024 (arXiv 2207.09339); released code in fudan-zvg/SETR (2023-04-12).

A four-stage pyramid (strides 4, 8, 16, 32) after a two-conv stem. Every layer of stages 1-3 runs,
in order: a depthwise-conv MLP (which downsamples x2 in the first layer of a stage), spatial
smoothing, *local* attention inside 7x7-token groups (plain windows on even layers, dilated groups on
odd ones), a *window token* per group (the mean of its tokens, LayerNorm'ed), and *global* attention
of every token onto the window tokens. Local and global attention share Wq/Wk/Wv; a Dynamic Position
Bias MLP gives both their relative-position biases. Stage 4 runs plain global self-attention.

    variant  dims                  heads         depths       params (README)  GFLOPs  top-1
    Tiny     64, 128, 256, 512     2, 4, 8, 16   2, 2, 6, 2   11M              2.1     81.1
    Small    96, 192, 384, 768     3, 6, 12, 24  2, 2, 6, 2   24M              4.7     82.3
    Medium   96, 192, 384, 768     3, 6, 12, 24  2, 2, 14, 2  43M              9.0     83.6
    Large    128, 256, 512, 1024   4, 8, 16, 32  2, 2, 18, 2  84M              15.9    84.1

SETR-HLG (HLG-UP decoder): Cityscapes 81.8 / 82.5 / 82.9, ADE20K 47.3 / 49.3 / 49.8 mIoU (S/M/L).

The released code does not run (attributes never set, missing modules, a mislabelled config). Where
it is broken or the sources disagree, the decisions (numbered as in the project's specification):

D1. Layer alternation: even layers of a stage use plain 7x7 windows, odd layers dilated groups (the
    code's SDA/LDA comments; its never-set ``dilated_flag`` cannot decide).
D2. Stage 4: global self-attention with the dynamic position bias, output projection, post-norm.
D3. Padded tokens: ``mask_padding=False`` (default) reproduces the released behaviour, where the zero
    padding takes part in local attention and in the window means; ``True`` masks it out of both.
D4. Dilated groups: always 7x7 tokens, sampled with stride ceil(H/7) on a grid padded to a multiple
    of 7, as the released reshape does; at 224 the stride equals the configured interval 8/4/2.
D5. Decoder: HLG-UP as released (fuse at stride 4, two HLG head layers, 512 channels), plus the FCN
    auxiliary head on stage 3.
D6. HLG-Large uses depths 2-2-18-2 (the Cityscapes config; 84.4M, the README's 84M), not 2-2-14-2.
D7. HLG-Medium builds to 39.98M with a 1000-class head, not the README's 43M: no reading of the
    released definition (MLP ratio, widths, heads) reaches 43M with Small's widths and 14 stage-3
    layers; Tiny, Small and Large match. ``workbench models`` shows the gap.
D8. DWMLP hidden width: input width x 4, as the segmentation code (the classification code's output
    width x 4 differs only in each stage's first layer).
D9. MLP ratio 4 everywhere (the ignored ``mlp_ratios=[8, 8, 4, 4]`` config key is not honoured).
D10. No squeeze-and-excitation in the DWMLP (the code has none).
D11. Classifier: this backbone + average pooling of the normalised stage-4 map + a linear head.
D12. Dense models start from the ImageNet HLG weights (loading arrives with checkpoint interop).
D13. ADE20K recipe: the Cityscapes SETR-HLG recipe with 512 crops, 160k iterations (training engine).
D14-D15. EMA and single- vs multi-scale evaluation: reported both ways by the evaluation engine.
D16. Parity: no reference forward pass exists; parity is the released module shapes (parameter
    counts, tested) and, later, the released ImageNet accuracies.
D17. Global position bias: the released call is broken (it builds a square token-to-token table for
    a token-to-window attention). Here the bias of token t for window w is DPB((t - c_w) / 7), c_w
    the window's mean token position (rounded down): one window step is one unit, as one token step
    is in the local bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    Layout,
    Probe,
    Probed,
    SelfLayout,
    WindowLayout,
    attend,
)
from workbench.models.heads import FCNHead
from workbench.models.layers import check_dtype, check_images, merge_heads, resize, split_heads
from workbench.models.position_bias import DynamicPositionBias
from workbench.models.registry import (
    PaperFigures,
    pop_keys,
    register,
    variant_kwargs,
)
from workbench.models.segmentor import Segmentor
from workbench.models.timm_contract import TimmClassifier

WINDOW = 7
LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


def position_bias_names(module: nn.Module) -> set[str]:
    """The dynamic position bias MLPs' parameters: no weight decay, as Swin and CrossFormer exempt
    their relative position bias tables (timm's ``no_weight_decay`` convention)."""
    return {name for name, _ in module.named_parameters() if ".position_bias." in name}


@dataclass(frozen=True)
class Groups:
    """How a padded grid of ``size * count`` tokens per side is cut into ``count`` groups of ``size``.

    Plain: group (a, b) is the window of tokens (a * size + i, b * size + j). Dilated: group (r, s) is
    the tokens (r + i * count, s + j * count), spread over the whole grid.
    """

    grid: tuple[int, int]  # the unpadded token grid
    size: tuple[int, int]
    count: tuple[int, int]
    dilated: bool

    @staticmethod
    def for_grid(grid: Sequence[int], dilated: bool, interval: int | None = None) -> Groups:
        """7x7 groups (D4), or with ``interval`` (the HLG-UP head) interval x interval dilated groups."""
        grid = (int(grid[0]), int(grid[1]))
        if dilated and interval is not None:
            return Groups(
                grid, (-(-grid[0] // interval), -(-grid[1] // interval)), (interval, interval), True
            )
        return Groups(grid, (WINDOW, WINDOW), (-(-grid[0] // WINDOW), -(-grid[1] // WINDOW)), dilated)

    @property
    def padded(self) -> tuple[int, int]:
        return self.size[0] * self.count[0], self.size[1] * self.count[1]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, Hp, Wp, C), zeros at the bottom and right."""
        return F.pad(x, (0, 0, 0, self.padded[1] - x.shape[2], 0, self.padded[0] - x.shape[1]))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hp, Wp, C) -> (B * groups, tokens per group, C)."""
        (sr, sc), (cr, cc) = self.size, self.count
        if self.dilated:
            x = x.reshape(x.shape[0], sr, cr, sc, cc, -1).permute(0, 2, 4, 1, 3, 5)
        else:
            x = x.reshape(x.shape[0], cr, sr, cc, sc, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, sr * sc, x.shape[-1])

    def merge(self, groups: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverse of ``split``: (B * groups, tokens per group, C) -> (B, Hp, Wp, C)."""
        (sr, sc), (cr, cc) = self.size, self.count
        x = groups.reshape(batch, cr, cc, sr, sc, -1)
        x = x.permute(0, 3, 1, 4, 2, 5) if self.dilated else x.permute(0, 1, 3, 2, 4, 5)
        return x.reshape(batch, *self.padded, -1)

    def real_tokens(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """(B * groups, tokens per group) True where a token is not padding; None if nothing is padded."""
        if self.grid == self.padded:
            return None
        real = self.pad(torch.ones(1, *self.grid, 1, dtype=torch.bool, device=device))
        return self.split(real).squeeze(-1).repeat(batch, 1)

    def centroids(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token row of each row of groups and mean column of each column, rounded down."""
        (sr, sc), (cr, cc) = self.size, self.count
        rows, cols = torch.arange(cr, device=device), torch.arange(cc, device=device)
        if self.dilated:
            return rows + cr * (sr - 1) // 2, cols + cc * (sc - 1) // 2
        return rows * sr + (sr - 1) // 2, cols * sc + (sc - 1) // 2


def _local_bias(
    position_bias: DynamicPositionBias, groups: Groups, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(heads, L, L) bias between the positions inside a group (group-grid units)."""
    rows, cols = groups.size
    positions = torch.arange(rows, device=device), torch.arange(cols, device=device)
    return position_bias.bias(groups.size, *positions, groups.size, dtype=dtype, positions=("local",))


def _global_bias(
    position_bias: DynamicPositionBias, groups: Groups, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(heads, H*W, groups) bias from every token to every group's centroid, in windows (D17)."""
    return position_bias.bias(
        groups.grid, *groups.centroids(device), groups.padded, WINDOW, dtype=dtype, positions=groups
    )


def _biased_attention(
    q,
    k,
    v,
    num_heads: int,
    bias: torch.Tensor,
    real_keys: torch.Tensor | None,
    probe: Probe | None,
    layout: Callable[[], Layout],
) -> torch.Tensor:
    """Multi-head attention of q (B, Nq, C) over k, v (B, Nk, C) plus ``bias`` (heads, Nq, Nk)."""
    mask = bias.unsqueeze(0).to(q.dtype)
    if real_keys is not None:
        mask = mask.masked_fill(~real_keys[:, None, None, :], float("-inf"))
    heads = [split_heads(t, num_heads) for t in (q, k, v)]
    return merge_heads(attend(*heads, mask, probe=probe, layout=layout))


def _window_layout(groups: Groups) -> WindowLayout:
    return WindowLayout(groups.grid, size=groups.size, count=groups.count, dilated=groups.dilated)


def _global_layout(grid: tuple[int, int], groups: Groups | None) -> Layout:
    """Token-to-window attention, or (stage 4, ``groups`` None) self-attention over the grid."""
    if groups is None:
        return SelfLayout(tuple(grid))
    return CrossLayout(tuple(grid), key_shape=groups.count, windows=_window_layout(groups))


class LocalAttention(nn.Module, Probed):
    """Attention inside each group with a dynamic position bias; no projections of its own."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.position_bias = DynamicPositionBias(dim // 16, num_heads)

    def bias(self, groups: Groups, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
        return _local_bias(self.position_bias, groups, device, dtype)

    def forward(self, q, k, v, groups: Groups, real_keys: torch.Tensor | None) -> torch.Tensor:
        """q, k, v (B * groups, L, C) -> (B * groups, L, C)."""
        bias = self.bias(groups, q.device, q.dtype)
        return _biased_attention(
            q, k, v, self.num_heads, bias, real_keys, self.probe(), lambda: _window_layout(groups)
        )


class GlobalAttention(nn.Module, Probed):
    """Every token attends to keys at given positions (window tokens, or all tokens in stage 4)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.position_bias = DynamicPositionBias(dim // 16, num_heads)
        self.proj = nn.Linear(dim, dim)

    def bias(
        self,
        grid: tuple[int, int],
        groups: Groups | None,
        device: torch.device,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Token-to-group bias (D17), or token-to-token on ``grid`` when ``groups`` is None."""
        if groups is None:
            rows, cols = torch.arange(grid[0], device=device), torch.arange(grid[1], device=device)
            return self.position_bias.bias(grid, rows, cols, grid, dtype=dtype, positions=("grid",))
        return _global_bias(self.position_bias, groups, device, dtype)

    def forward(self, q, k, v, grid: tuple[int, int], groups: Groups | None) -> torch.Tensor:
        """q (B, H*W, C) on ``grid``; k, v (B, groups, C) for ``groups``, or (B, H*W, C) when None."""
        bias = self.bias(grid, groups, q.device, q.dtype)
        layout = partial(_global_layout, grid, groups)
        return self.proj(_biased_attention(q, k, v, self.num_heads, bias, None, self.probe(), layout))


class ConvMlpStep(nn.Module):
    """The MLP that opens every HLG layer: x <- Down(x) + DropPath(LN(DWMLP(x))) (post-norm branch).

    DWMLP: 1x1 conv-BN-GELU, depthwise 3x3 conv-BN-GELU (stride 2 when downsampling), 1x1 conv;
    hidden width in_dim x ``mlp_ratio`` (D8). Down: depthwise-grouped 3x3/2 conv-BN-GELU or identity.
    """

    def __init__(self, in_dim: int, dim: int, mlp_ratio: float, downsample: bool, drop_path: float) -> None:
        super().__init__()
        hidden, stride = int(in_dim * mlp_ratio), 2 if downsample else 1
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_dim, dim, 3, 2, 1, groups=in_dim), nn.BatchNorm2d(dim), nn.GELU())
            if downsample
            else None
        )
        self.mlp = nn.Sequential(
            nn.Conv2d(in_dim, hidden, 1), nn.BatchNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.BatchNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )  # fmt: skip
        self.norm = LayerNorm6(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, in_dim) -> (B, H', W', dim)."""
        maps = x.permute(0, 3, 1, 2)
        shortcut = self.downsample(maps) if self.downsample is not None else maps
        return (
            shortcut + self.drop_path(self.norm(self.mlp(maps).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        ).permute(0, 2, 3, 1)


class SpatialSmoothing(nn.Module):
    """x <- GELU(x + B(x)), B a 1x1 (d -> d/4), 3x3, 1x1 (d/4 -> d) conv bottleneck with BN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim // 4, 1), nn.BatchNorm2d(dim // 4), nn.GELU(),
            nn.Conv2d(dim // 4, dim // 4, 3, padding=1), nn.BatchNorm2d(dim // 4), nn.GELU(),
            nn.Conv2d(dim // 4, dim, 1), nn.BatchNorm2d(dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        maps = x.permute(0, 3, 1, 2)
        return F.gelu(maps + self.block(maps)).permute(0, 2, 3, 1)


class HLGLayer(nn.Module):
    """A stage 1-3 layer: MLP step, smoothing, local attention, window tokens, global attention."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_heads: int,
        *,
        dilated: bool,
        downsample: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        mask_padding: bool,
    ) -> None:
        super().__init__()
        self.dilated = dilated
        self.mask_padding = mask_padding
        self.mlp_step = ConvMlpStep(in_dim, dim, mlp_ratio, downsample, drop_path)
        self.smooth = SpatialSmoothing(dim)
        self.local_norm = LayerNorm6(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)  # shared by the local and the global attention
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.local_attn = LocalAttention(dim, num_heads)
        self.window_norm = LayerNorm6(dim)
        self.query_norm = LayerNorm6(dim)
        self.query_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.global_attn = GlobalAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, in_dim) -> (B, H', W', dim)."""
        x = self.mlp_step(x)
        batch, height, width, dim = x.shape
        groups = Groups.for_grid((height, width), self.dilated)
        tokens = groups.split(self.smooth(groups.pad(x)))
        real = groups.real_tokens(batch, x.device) if self.mask_padding else None
        normed = self.local_norm(tokens)
        shared_q, local_v = self.q(normed), self.v(normed)
        local = self.local_attn(shared_q, shared_q, local_v, groups, real)  # the query is also the key
        tokens = tokens + local
        if real is None:
            windows = tokens.mean(dim=1)
        else:
            windows = (tokens * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        windows = self.window_norm(windows.reshape(batch, -1, dim))

        def to_grid(t: torch.Tensor) -> torch.Tensor:
            return groups.merge(t, batch)[:, :height, :width]

        x, local = to_grid(tokens), to_grid(local)
        query_bias = self.query_conv(self.query_norm(local).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        query = (to_grid(shared_q) + query_bias).reshape(batch, -1, dim)
        attended = self.global_attn(query, self.k(windows), self.v(windows), (height, width), groups)
        return x + self.drop_path(attended.reshape(batch, height, width, dim))


class GlobalLayer(nn.Module):
    """A stage-4 layer: MLP step, then global self-attention with position bias, post-norm, residual."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_heads: int,
        *,
        downsample: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.mlp_step = ConvMlpStep(in_dim, dim, mlp_ratio, downsample, drop_path)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.global_attn = GlobalAttention(dim, num_heads)
        self.attn_norm = LayerNorm6(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp_step(x)
        batch, height, width, dim = x.shape
        tokens = x.reshape(batch, -1, dim)
        attended = self.global_attn(self.q(tokens), self.k(tokens), self.v(tokens), (height, width), None)
        return x + self.drop_path(self.attn_norm(attended).reshape(batch, height, width, dim))


class HLG(TimmClassifier, nn.Module):
    """HLG Transformer backbone and classifier.

    ``forward_dense`` returns the four LayerNorm'ed stage outputs (B, C_i, H/4 ... H/32); the
    normalised map of each stage is also what the next stage reads, as released. For timm's
    ``forward_intermediates`` the last stage's norm is the final norm (as Swin's): the one ``norm``
    applies and ``prune_intermediate_layers`` may drop.
    """

    def __init__(
        self,
        *,
        dims: Sequence[int] = (64, 128, 256, 512),
        heads: Sequence[int] = (2, 4, 8, 16),
        depths: Sequence[int] = (2, 2, 6, 2),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        mask_padding: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        if img_size is not None:  # accepted only to say so: timm-style callers pass it to every model
            raise ValueError(
                f"HLG has no position embedding tied to an input size (its position biases are computed "
                f"from offsets), so any input size works: drop img_size={img_size!r}"
            )
        if not len(dims) == len(heads) == len(depths) == 4:
            raise ValueError(
                f"dims, heads and depths need 4 entries (one per stage), got {dims}, {heads}, {depths}"
            )
        bad = [(d, h) for d, h in zip(dims, heads, strict=True) if d % h or d % 16]
        if bad:
            raise ValueError(f"each stage width must divide by its heads and by 16, got (width, heads) {bad}")
        if any(dims[i] % dims[i - 1] for i in range(1, 4)):
            raise ValueError(
                f"each stage width must be a multiple of the previous one (grouped downsampling), got {dims}"
            )
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.dims = tuple(dims)
        self.num_features = dims[-1]
        self.stem = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(in_chans, dims[0], 3, 2, 1, bias=False), nn.BatchNorm2d(dims[0]), nn.GELU()
            ),
            nn.Sequential(
                nn.Conv2d(dims[0], dims[0], 3, 1, 1, bias=False), nn.BatchNorm2d(dims[0]), nn.GELU()
            ),
        )
        rates = iter([drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))])
        self.stages = nn.ModuleList()
        for stage, (dim, num_heads, depth) in enumerate(zip(dims, heads, depths, strict=True)):
            layers = nn.ModuleList()
            for i in range(depth):
                in_dim = dims[max(stage - 1, 0)] if i == 0 else dim
                common = dict(
                    downsample=i == 0, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=next(rates)
                )
                if stage == 3:
                    layers.append(GlobalLayer(in_dim, dim, num_heads, **common))
                else:  # D1: plain windows on even layers, dilated groups on odd ones
                    layers.append(
                        HLGLayer(
                            in_dim, dim, num_heads, dilated=i % 2 == 1, mask_padding=mask_padding, **common
                        )
                    )
            self.stages.append(layers)
        self.norms = nn.ModuleList(LayerNorm6(dim) for dim in dims)
        # norms.i's output is stage i's map (the last one's with norm=True); a stage is a ModuleList
        self.feature_info = [
            dict(num_chs=dim, reduction=4 * 2**stage, module=f"norms.{stage}")
            for stage, dim in enumerate(dims)
        ]
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()
        self.apply(self._init_weights)

    def no_weight_decay(self) -> set[str]:
        return position_bias_names(self)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups: stem, stages (or their layers), stage norms; ``head`` unmatched."""
        layers = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return dict(stem=r"^stem", blocks=[(layers, None), (r"^norms\.(\d+)", (99999,))])

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: the maps (B, C_i, ceil(H / 2^(i+2)), ...) of stages
        ``indices`` (None: all; n: the last n; a list: those, negative from the end). Stages 1-3 end in
        their norm (the next stage reads it); the last stage's map goes through the final norm only if
        ``norm``. With ``stop_early`` no stage after the last one taken runs. Returns the maps, or
        (the final map, normalised if the last stage ran, maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        check_images(images, self.in_chans)
        check_dtype(images, self.norms[0].weight)
        final = len(self.dims) - 1  # the final norm's stage, whatever was pruned
        x = self.stem(images).permute(0, 2, 3, 1)
        intermediates = []
        for stage, layers in enumerate(self.stages[: max_index + 1] if stop_early else self.stages):
            for layer in layers:
                x = layer(x)
            if stage < final:
                x = self.norms[stage](x)
            if stage in take_indices:
                intermediates.append(
                    (self.norms[stage](x) if norm and stage == final else x).permute(0, 3, 1, 2)
                )
        if intermediates_only:
            return intermediates
        if stage == final:
            x = self.norms[final](x)
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's pruning (as Swin's): drop the stages after the last of ``indices``, the final norm if
        ``prune_norm`` or the last stage went, the classifier if ``prune_head`` or the last stage went
        (it is sized for it). Returns the absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.dims) - 1
        self.stages = self.stages[: max_index + 1]
        self.norms = self.norms[: max_index + 1]
        if prune_norm and not prune_end:
            self.norms[max_index] = nn.Identity()
        if prune_end:
            self.num_features = self.dims[max_index]
        if prune_head or prune_end:
            self.num_classes, self.global_pool, self.head = 0, "", nn.Identity()
        return take_indices

    def forward_dense(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> four normalised maps (B, C_i, ceil(H / 2^(i+2)), ...)."""
        return self.forward_intermediates(images, norm=True, intermediates_only=True)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The normalised stage-4 map (B, C_4, H/32, W/32)."""
        return self.forward_dense(images)[-1]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3)) if self.global_pool == "avg" else features
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def attention_sites(self) -> dict[str, AttentionSite]:
        """Local (window / dilated) and global attention of every layer; stage s runs at stride 4 * 2^s."""
        sites = {}
        for stage, layers in enumerate(self.stages):
            stride = 4 * 2**stage
            for i, layer in enumerate(layers):
                if isinstance(layer, HLGLayer):
                    sites[f"stages.{stage}.{i}.local"] = AttentionSite(layer.local_attn, stride)
                sites[f"stages.{stage}.{i}.global"] = AttentionSite(layer.global_attn, stride)
        return sites


class HeadAttention(nn.Module, Probed):
    """The HLG-UP head's attention: one module (q, kv, position bias, projection) serves both the
    local attention inside groups and the global attention onto the LayerNorm'ed window tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.window_norm = nn.LayerNorm(dim)
        self.position_bias = DynamicPositionBias(dim // 16, num_heads)
        self.proj = nn.Linear(dim, dim)

    def local(self, tokens: torch.Tensor, groups: Groups) -> torch.Tensor:
        """(B * groups, L, C) -> (B * groups, L, C)."""
        k, v = self.kv(tokens).chunk(2, dim=-1)
        bias = _local_bias(self.position_bias, groups, tokens.device, k.dtype)
        layout = partial(_window_layout, groups)
        return self.proj(
            _biased_attention(self.q(tokens), k, v, self.num_heads, bias, None, self.probe("local"), layout)
        )

    def cross(self, tokens: torch.Tensor, windows: torch.Tensor, groups: Groups) -> torch.Tensor:
        """tokens (B, H*W, C) onto window tokens (B, groups, C) -> (B, H*W, C)."""
        k, v = self.kv(self.window_norm(windows)).chunk(2, dim=-1)
        bias = _global_bias(self.position_bias, groups, tokens.device, k.dtype)
        layout = partial(_global_layout, groups.grid, groups)
        return self.proj(
            _biased_attention(self.q(tokens), k, v, self.num_heads, bias, None, self.probe("global"), layout)
        )


class HeadLayer(nn.Module):
    """An HLG-UP head layer (pre-norm): smoothing, local attention, window means, global attention, MLP.

    Plain layers use 7x7 windows; dilated layers ``interval`` x ``interval`` groups whose size grows
    with the input (the head's own released grouping, unlike the backbone's, D4).
    """

    def __init__(
        self, dim: int, num_heads: int, *, dilated: bool, interval: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.dilated, self.interval = dilated, interval
        self.smooth = SpatialSmoothing(dim)
        self.local_norm = nn.LayerNorm(dim)
        self.global_norm = nn.LayerNorm(dim)
        self.attn = HeadAttention(dim, num_heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, dim = x.shape
        groups = Groups.for_grid((height, width), self.dilated, self.interval)
        tokens = groups.split(self.smooth(groups.pad(x)))
        tokens = tokens + self.attn.local(self.local_norm(tokens), groups)
        windows = tokens.mean(dim=1).reshape(batch, -1, dim)
        x = groups.merge(tokens, batch)[:, :height, :width].reshape(batch, -1, dim)
        x = x + self.attn.cross(self.global_norm(x), windows, groups)
        x = x + self.mlp(self.mlp_norm(x))
        return x.reshape(batch, height, width, dim)


class HLGUPHead(nn.Module):
    """SETR-HLG decoder (D5): all stages resized to stride 4 and concatenated, 3x3 conv-BN-ReLU to
    ``channels``, ``depth`` HLG head layers (channels / 32 heads, plain then dilated), classifier."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        depth: int = 2,
        interval: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv2d(sum(in_channels), channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.layers = nn.ModuleList(
            HeadLayer(channels, channels // 32, dilated=i % 2 == 1, interval=interval) for i in range(depth)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def no_weight_decay(self) -> set[str]:
        return position_bias_names(self)

    def attention_sites(self) -> dict[str, AttentionSite]:
        """Local and global attention of each head layer, at stride 4."""
        return {
            f"layers.{i}.{slot}": AttentionSite(layer.attn, 4, slot)
            for i, layer in enumerate(self.layers)
            for slot in ("local", "global")
        }

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage maps (B, C_i, H_i, W_i) -> logits (B, K, H_0, W_0)."""
        size = features[0].shape[-2:]
        x = self.fuse(torch.cat([resize(f, size) for f in features], dim=1)).permute(0, 2, 3, 1)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.dropout(x.permute(0, 3, 1, 2)))


class SETRHLG(Segmentor):
    """SETR-HLG: an HLG backbone, the HLG-UP decoder and an FCN auxiliary head on stage 3.

    ``head_channels`` is the HLG-UP width (512 as released; a multiple of 32: one head per 32 channels).
    """

    def __init__(
        self,
        *,
        backbone: HLG,
        num_classes: int,
        aux_heads: bool = True,
        aux_weight: float = 0.4,
        head_channels: int = 512,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if head_channels < 32 or head_channels % 32:
            raise ValueError(f"head_channels must be a positive multiple of 32, got {head_channels}")
        aux = [FCNHead(backbone.dims[2], num_classes, channels=256)] if aux_heads else []
        super().__init__(
            backbone=backbone,
            decode_head=HLGUPHead(backbone.dims, num_classes, channels=head_channels),
            decode_in=(0, 1, 2, 3),
            aux_heads=aux,
            aux_in=[2] * len(aux),
            aux_weight=aux_weight,
            num_classes=num_classes,
            in_chans=backbone.in_chans,
            size_divisor=1,
        )


_VARIANTS = {  # dims, heads, depths; drop path for ImageNet / segmentation
    "tiny": dict(dims=(64, 128, 256, 512), heads=(2, 4, 8, 16), depths=(2, 2, 6, 2), drop_path=(0.2, 0.1)),
    "small": dict(dims=(96, 192, 384, 768), heads=(3, 6, 12, 24), depths=(2, 2, 6, 2), drop_path=(0.2, 0.1)),
    "medium": dict(
        dims=(96, 192, 384, 768), heads=(3, 6, 12, 24), depths=(2, 2, 14, 2), drop_path=(0.2, 0.3)
    ),
    "large": dict(
        dims=(128, 256, 512, 1024), heads=(4, 8, 16, 32), depths=(2, 2, 18, 2), drop_path=(0.2, 0.3)
    ),
}
_PAPER = {  # README: params (M), GFLOPs @224
    "tiny": (11, 2.1),
    "small": (24, 4.7),
    "medium": (43, 9.0),
    "large": (84, 15.9),
}


def _classifier(variant: str, kwargs: dict[str, Any]) -> HLG:
    return HLG(**variant_kwargs(_VARIANTS[variant], 0, kwargs))


def _segmentor(variant: str, kwargs: dict[str, Any]) -> SETRHLG:
    head_args = pop_keys(kwargs, ("num_classes", "aux_weight", "aux_heads", "head_channels"))
    backbone = HLG(**variant_kwargs(_VARIANTS[variant], 1, kwargs), num_classes=0, global_pool="")
    return SETRHLG(backbone=backbone, **{"num_classes": 19, **head_args})


_CLS_NOTE = (
    "HLG: params match the README for Tiny/Small/Large (as built from the released definition). "
    "Medium builds to 40.0M, not 43M (decision D7 in hlg.py). The README GFLOPs equal ours without the "
    "stem's second 3x3 conv (run at stride 2: 0.46/1.04/1.85 G): 2.17/4.71/15.90 for T/S/L; Medium's 9.0 "
    "matches neither (7.61 that way)."
)
_SEG_NOTE = "SETR-HLG: the README gives no parameter or FLOP counts for the segmentors."


def _classifier_figures(variant: str) -> PaperFigures:
    params, gflops = _PAPER[variant]
    return PaperFigures("HLG README", 224, 1000, params_m=params, gflops=gflops, note=_CLS_NOTE)


_SEGMENTOR_FIGURES = PaperFigures("HLG README, Cityscapes", 768, 19, note=_SEG_NOTE)
_hlg = partial(register, family="HLG", feature_indices=4)
_TINY = dict(dims=(32, 64, 128, 256), heads=(1, 2, 2, 4), depths=(2, 2, 2, 2))


@_hlg(task="classification", paper=_classifier_figures("tiny"), tiny=_TINY)
def hlg_tiny(**kwargs: Any) -> HLG:
    return _classifier("tiny", kwargs)


@_hlg(task="classification", paper=_classifier_figures("small"), tiny=_TINY)
def hlg_small(**kwargs: Any) -> HLG:
    return _classifier("small", kwargs)


@_hlg(task="classification", paper=_classifier_figures("medium"), tiny=_TINY)
def hlg_medium(**kwargs: Any) -> HLG:
    return _classifier("medium", kwargs)


@_hlg(task="classification", paper=_classifier_figures("large"), tiny=_TINY)
def hlg_large(**kwargs: Any) -> HLG:
    return _classifier("large", kwargs)


@_hlg(task="segmentation", paper=_SEGMENTOR_FIGURES, tiny=_TINY)
def setr_hlg_small(**kwargs: Any) -> SETRHLG:
    return _segmentor("small", kwargs)


@_hlg(task="segmentation", paper=_SEGMENTOR_FIGURES, tiny=_TINY)
def setr_hlg_medium(**kwargs: Any) -> SETRHLG:
    return _segmentor("medium", kwargs)


@_hlg(task="segmentation", paper=_SEGMENTOR_FIGURES, tiny=_TINY)
def setr_hlg_large(**kwargs: Any) -> SETRHLG:
    return _segmentor("large", kwargs)
