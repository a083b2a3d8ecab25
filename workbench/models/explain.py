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


@dataclass(frozen=True)
class AttentionSite:
    """A recordable attention module.

    Attributes:
        module: the attention module; its forward inputs are what ``probs`` reads.
        probs: ``probs(module, args)`` -> attention probabilities (B, heads, N_query, N_key).
        kind: "self" (queries and keys are the same tokens), later also grouping/ungrouping.
        num_prefix_tokens: tokens (e.g. the class token) that precede the image-token grid.
        stride: image pixels per token side, to recover the token grid from the image size.
    """

    module: nn.Module
    probs: Callable[[nn.Module, tuple], torch.Tensor]
    kind: str
    num_prefix_tokens: int
    stride: int


def vit_attention_probs(attn: Attention, args: tuple) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of a timm ``Attention`` for its input tokens (B, N, C) -> (B, heads, N, N)."""
    (tokens,) = args[:1]
    batch, num_tokens, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
