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
    - ``"stripe"``: (B, heads, windows, L, L) inside the ``window`` = (rows, cols) stripes that
      tile the grid row-major (the grid padded up to whole stripes; padded keys get zero weight).
    - ``"grouping"``: (B, heads, G, N), each group token's distribution over the image tokens.
    - ``"ungrouping"``: (B, heads, N, G), each image token's distribution over the groups.
    """

    probs: torch.Tensor
    kind: str
    grid: tuple[int, int]
    num_prefix_tokens: int = 0
    window: tuple[int, int] | None = None

    def _check_token(self, row: int, col: int) -> None:
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"token ({row}, {col}) is outside the {rows}x{cols} token grid")

    def query_map(self, row: int, col: int) -> torch.Tensor:
        """Where the image token at (row, col) looks: (B, heads, rows, cols), prefix keys left out.

        For group attention this is the token's distribution over groups: (B, heads, G).
        """
        self._check_token(row, col)
        rows, cols = self.grid
        if self.kind == "self":
            query = self.num_prefix_tokens + row * cols + col
            keys = self.probs[:, :, query, self.num_prefix_tokens :]
            return keys.reshape(*keys.shape[:2], rows, cols)
        if self.kind == "stripe":
            win_rows, win_cols = self.window
            windows_per_row = -(-cols // win_cols)
            window = (row // win_rows) * windows_per_row + col // win_cols
            query = (row % win_rows) * win_cols + col % win_cols
            batch, heads = self.probs.shape[:2]
            full = self.probs.new_zeros(
                batch, heads, -(-rows // win_rows) * win_rows, windows_per_row * win_cols
            )
            top, left = row - row % win_rows, col - col % win_cols
            stripe = self.probs[:, :, window, query].reshape(batch, heads, win_rows, win_cols)
            full[:, :, top : top + win_rows, left : left + win_cols] = stripe
            return full[:, :, :rows, :cols]
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


def attention_probs(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) for (..., Nq, d) and (..., Nk, d); ``key_mask`` False keys get weight 0."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if key_mask is not None:
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
