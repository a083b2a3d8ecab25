"""What a model exposes to the explain mode (``workbench.viz.record``).

A model lists its recordable attention modules with ``attention_sites()``. The fast path never
materialises attention probabilities (it runs ``scaled_dot_product_attention``); while a site is
recorded, its probabilities are computed explicitly from the module's own inputs and weights, beside
the untouched fast path, so the model's outputs stay bitwise identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from timm.layers import Attention
from torch import nn


@dataclass
class AttentionMap:
    """Attention probabilities of one site for one forward pass.

    ``kind`` says how to read ``probs`` (image tokens in row-major order of ``grid``):

    - ``"self"``: (B, heads, N, N) over ``num_prefix_tokens`` prefix tokens followed by the grid.
    - ``"window"``: (B, heads, groups, L, L) inside windows of ``window`` = (rows, cols) tokens
      that tile the grid (padded up to whole windows) row-major: GPViT's stripes, HLG's plain
      windows. ``key_grid`` is the (rows, cols) grid of windows.
    - ``"dilated"``: as "window", but group (r, s) of the ``key_grid`` holds the tokens
      (r + i * key_grid[0], s + j * key_grid[1]): HLG's dilated groups.
    - ``"global"``: (B, heads, N, groups): each token's attention over the groups of ``key_grid``.
    - ``"grouping"``: (B, heads, G, N), each group token's distribution over the image tokens.
    - ``"ungrouping"``: (B, heads, N, G), each image token's distribution over the groups.

    Padded keys get zero weight where the model masks them.
    """

    probs: torch.Tensor
    kind: str
    grid: tuple[int, int]
    num_prefix_tokens: int = 0
    window: tuple[int, int] | None = None
    key_grid: tuple[int, int] | None = None

    def _check_token(self, row: int, col: int) -> None:
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"token ({row}, {col}) is outside the {rows}x{cols} token grid")

    def query_map(self, row: int, col: int) -> torch.Tensor:
        """Where the image token at (row, col) looks: (B, heads, rows, cols), prefix keys left out.

        For ungrouping attention it is the token's distribution over groups, (B, heads, G); for HLG's
        global attention its distribution over the window tokens, (B, heads, *key_grid).
        """
        self._check_token(row, col)
        rows, cols = self.grid
        if self.kind == "self":
            query = self.num_prefix_tokens + row * cols + col
            keys = self.probs[:, :, query, self.num_prefix_tokens :]
            return keys.reshape(*keys.shape[:2], rows, cols)
        if self.kind in ("window", "dilated"):
            (win_rows, win_cols), (groups_r, groups_c) = self.window, self.key_grid
            batch, heads = self.probs.shape[:2]
            if self.kind == "window":  # group: which window; position: where inside it
                group, g_r, g_c = (
                    (row // win_rows) * groups_c + col // win_cols,
                    row % win_rows,
                    col % win_cols,
                )
            else:  # group: the residue of the position; position: the quotient
                group, g_r, g_c = (
                    (row % groups_r) * groups_c + col % groups_c,
                    row // groups_r,
                    col // groups_c,
                )
            keys = self.probs[:, :, group, g_r * win_cols + g_c].reshape(batch, heads, win_rows, win_cols)
            full = keys.new_zeros(batch, heads, win_rows * groups_r, win_cols * groups_c)
            if self.kind == "window":
                top, left = row - g_r, col - g_c
                full[:, :, top : top + win_rows, left : left + win_cols] = keys
            else:
                full[:, :, row % groups_r :: groups_r, col % groups_c :: groups_c] = keys
            return full[:, :, :rows, :cols]
        if self.kind == "global":
            return self.probs[:, :, row * cols + col].reshape(*self.probs.shape[:2], *self.key_grid)
        if self.kind == "ungrouping":
            return self.probs[:, :, row * cols + col]
        raise ValueError(
            f"query_map is for image-token queries; this is {self.kind!r} attention (use group_maps)"
        )

    def group_maps(self) -> torch.Tensor:
        """Grouping/ungrouping attention on the grid: (B, heads, G, rows, cols)."""
        if self.kind == "grouping":
            per_group = self.probs
        elif self.kind == "ungrouping":
            per_group = self.probs.transpose(-1, -2)
        else:
            raise ValueError(f"group_maps is for grouping/ungrouping attention, not {self.kind!r}")
        return per_group.reshape(*per_group.shape[:3], *self.grid)


# compute(module, forward args, image size (H, W)) -> AttentionMap
ComputeMap = Callable[[nn.Module, tuple, tuple[int, int]], AttentionMap]


@dataclass(frozen=True)
class AttentionSite:
    """A recordable attention module and how to compute its map from the module's forward inputs."""

    module: nn.Module
    compute: ComputeMap


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) for q (B, heads, Nq, d), k (B, heads, Nk, d), bias (heads, Nq, Nk).

    ``key_mask`` (B, Nk) or (B, 1, 1, Nk): keys marked False get weight 0.
    """
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    if key_mask is not None:
        key_mask = key_mask if key_mask.ndim == 4 else key_mask[:, None, None, :]
        logits = logits.masked_fill(~key_mask, float("-inf"))
    return logits.softmax(dim=-1)


def vit_attention_site(attn: Attention, num_prefix_tokens: int, patch_size: int) -> AttentionSite:
    """Self-attention of a timm ``Attention`` on a ViT whose tokens are patches of ``patch_size``."""

    def compute(module: Attention, args: tuple, image_size: tuple[int, int]) -> AttentionMap:
        tokens = args[0]  # (B, N, C)
        batch, num_tokens, _ = tokens.shape
        qkv = module.qkv(tokens).reshape(batch, num_tokens, 3, module.num_heads, module.head_dim)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        probs = attention_probs(module.q_norm(q), module.k_norm(k))
        grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        return AttentionMap(probs, "self", grid, num_prefix_tokens)

    return AttentionSite(attn, compute)
