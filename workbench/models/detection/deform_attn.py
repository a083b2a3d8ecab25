"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) in pure PyTorch.

Each query attends to ``points`` locations per head and per level, placed around its reference point
by learned offsets, and mixes the bilinearly sampled values with softmax weights. The released
GPViT-Adapter calls mmcv's compiled CUDA op; here the sampling is ``grid_sample`` (bilinear, zeros
outside, ``align_corners=False``), the same arithmetic as mmcv's kernel and Deformable DETR's own
PyTorch reference: a location x in [0, 1] samples pixel coordinate x * W - 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Shapes = Sequence[tuple[int, int]]


def multi_scale_deformable_attention(
    value: torch.Tensor, shapes: Shapes, locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Sample and mix.

    value (B, S, heads, D) with S = sum of H_l * W_l over ``shapes`` (level by level, row-major);
    locations (B, Q, heads, levels, points, 2) as (x, y) in [0, 1]; weights (B, Q, heads, levels,
    points) -> (B, Q, heads * D).
    """
    batch, _, heads, depth = value.shape
    _, queries, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1  # grid_sample's [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(shapes):
        level_value = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, depth, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(
            F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B * heads, D, Q, levels * points)
    mix = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (stacked * mix).sum(-1).view(batch, heads * depth, queries)
    return out.transpose(1, 2)


def reference_points(shapes: Shapes, device: torch.device | None = None) -> torch.Tensor:
    """Pixel centres of every level's grid, normalised to [0, 1], as (1, sum H_l * W_l, 1, 2) in (x, y)."""
    points = []
    for height, width in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height,
            (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width,
            indexing="ij",
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1))
    return torch.cat(points)[None, :, None]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with Deformable DETR's parameters and initialisation.

    ``sampling_offsets`` start on a ring of ``points`` steps per head (head h points at angle
    2 pi h / heads), ``attention_weights`` at uniform mixing.
    """

    def __init__(self, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must split evenly into {heads} heads")
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values  # on the square of side 2
        ring = ring.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        ring = ring * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, source: torch.Tensor, shapes: Shapes
    ) -> torch.Tensor:
        """query (B, Q, C), reference points (1 or B, Q, 1 or levels, 2) in [0, 1], source tokens
        (B, S, C) on ``shapes`` -> (B, Q, C). Offsets are in pixels of each level."""
        batch, queries, _ = query.shape
        value = self.value_proj(source).view(batch, source.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        normaliser = torch.tensor([(w, h) for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(multi_scale_deformable_attention(value, shapes, locations, weights))
