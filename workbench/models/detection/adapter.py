"""GPViT-Adapter: the plain, stride-8 GPViT made into a feature pyramid for detection.

Yang et al., GPViT (ICLR 2023), detection code ``downstream/mmdetection`` of ChenhongyiYang/GPViT,
which follows ViT-Adapter (Chen et al., ICLR 2023) with ``down_stride=8``:

- a Spatial Prior Module (conv stem) gives c1 .. c4 at strides 4, 8, 16, 32, projected to C channels;
  a learnable level embedding is added to c2 .. c4, which are then held as one token sequence;
- four interactions, each over a consecutive group of GPViT layers: an *injector* (ViT tokens attend
  to c2 .. c4 by multi-scale deformable attention, scaled by a zero-initialised gamma), the group's
  layers, an *extractor* (c2 .. c4 tokens attend to the ViT tokens, then a ConvFFN); the last
  interaction has two extra extractors;
- outputs f1 .. f4 (strides 4, 8, 16, 32): c1 + 2x transposed conv of c2, c2, c3, c4, each plus the ViT
  map resized to it, each through its own BatchNorm (SyncBN under DDP).

The single-stage variant (RetinaNet) has no c1, no transposed conv and no f1.

Decisions where the release leaves a choice:

- The detection configs set ``final_norm=False``: the GPViT's final LayerNorm is not built.
- The release derives every level's size as ``side // 8, // 16, // 32`` of the input, which assumes
  inputs that are multiples of 32 (mmdet pads to 32, as torchvision's detection transform does).
  Here sizes are read from the feature maps themselves, which equals the release on such inputs and
  keeps other sizes working: the ViT map is resized to each level's size, and the transposed conv's
  output is cropped to c1's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from workbench.models.detection.deform_attn import MSDeformAttn, Shapes, reference_points
from workbench.models.explain import AttentionSite
from workbench.models.gpvit import GPViT, LayerNorm6


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SpatialPriorModule(nn.Module):
    """Conv stem: c1 (stride 4, ``width``), c2 (8, 2 width), c3 and c4 (16, 32, 4 width), each
    projected to ``dim`` by a 1x1 conv (``fc1`` .. ``fc4``; no ``fc1`` without c1)."""

    def __init__(self, dim: int, width: int = 64, with_c1: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, width, 2),
            *_conv_bn_relu(width, width, 1),
            *_conv_bn_relu(width, width, 1),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(width, 2 * width, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * width, 4 * width, 2))
        self.fc1 = nn.Conv2d(width, dim, 1) if with_c1 else None
        self.fc2 = nn.Conv2d(2 * width, dim, 1)
        self.fc3 = nn.Conv2d(4 * width, dim, 1)
        self.fc4 = nn.Conv2d(4 * width, dim, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(B, 3, H, W) -> c1 (B, C, H/4, W/4) or None, [c2, c3, c4] (B, C, H/8 .. H/32, ...)."""
        c1 = self.stem(images)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return (
            self.fc1(c1) if self.fc1 is not None else None,
            [self.fc2(c2), self.fc3(c3), self.fc4(c4)],
        )


class ConvFFN(nn.Module):
    """Linear, depthwise 3x3 conv on each level's own grid, GELU, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        """(B, sum H_l W_l, C) on ``shapes`` -> the same."""
        x = self.fc1(tokens)
        levels = x.split([h * w for h, w in shapes], dim=1)
        x = torch.cat(
            [
                self.dwconv(level.transpose(1, 2).reshape(x.shape[0], -1, h, w)).flatten(2).transpose(1, 2)
                for level, (h, w) in zip(levels, shapes, strict=True)
            ],
            dim=1,
        )
        return self.fc2(self.act(x))


class Injector(nn.Module):
    """ViT tokens (queries) read the spatial priors c2 .. c4 (3 levels); the result is scaled by
    ``gamma`` (zeros at first, so training starts from the plain GPViT)."""

    def __init__(self, dim: int, heads: int, points: int) -> None:
        super().__init__()
        self.query_norm = LayerNorm6(dim)
        self.feat_norm = LayerNorm6(dim)
        self.attn = MSDeformAttn(dim, levels=3, heads=heads, points=points)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int], priors: torch.Tensor, shapes: Shapes
    ) -> torch.Tensor:
        reference = reference_points([grid], tokens.device)
        attended = self.attn(self.query_norm(tokens), reference, self.feat_norm(priors), shapes)
        return tokens + self.gamma * attended


class Extractor(nn.Module):
    """The spatial priors (queries, 3 levels) read the ViT tokens (1 level), then a residual ConvFFN."""

    def __init__(self, dim: int, heads: int, points: int, ffn_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.query_norm = LayerNorm6(dim)
        self.feat_norm = LayerNorm6(dim)
        self.attn = MSDeformAttn(dim, levels=1, heads=heads, points=points)
        self.ffn = ConvFFN(dim, int(dim * ffn_ratio))
        self.ffn_norm = LayerNorm6(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, priors: torch.Tensor, shapes: Shapes, tokens: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        reference = reference_points(shapes, priors.device)
        priors = priors + self.attn(self.query_norm(priors), reference, self.feat_norm(tokens), [grid])
        return priors + self.drop_path(self.ffn(self.ffn_norm(priors), shapes))


class Interaction(nn.Module):
    """Injector, a group of GPViT layers (held by the GPViT, passed in), extractor(s)."""

    def __init__(
        self, dim: int, heads: int, points: int, ffn_ratio: float, drop_path: float, extra_extractors: int
    ) -> None:
        super().__init__()
        self.injector = Injector(dim, heads, points)
        self.extractor = Extractor(dim, heads, points, ffn_ratio, drop_path)
        self.extra_extractors = (
            nn.Sequential(
                *(Extractor(dim, heads, points, ffn_ratio, drop_path) for _ in range(extra_extractors))
            )
            if extra_extractors
            else None
        )

    def forward(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        priors: torch.Tensor,
        shapes: Shapes,
        layers: Sequence[nn.Module],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.injector(tokens, grid, priors, shapes)
        for layer in layers:
            tokens = layer(tokens, grid)
        extractors = [self.extractor, *(self.extra_extractors or [])]
        for extractor in extractors:
            priors = extractor(priors, shapes, tokens, grid)
        return tokens, priors


def even_groups(depth: int, count: int = 4) -> tuple[tuple[int, int], ...]:
    """``count`` consecutive (first, last) layer groups: depth 12 -> (0, 2), (3, 5), (6, 8), (9, 11)."""
    if depth < count:
        raise ValueError(f"a {depth}-layer GPViT cannot be split into {count} interaction groups")
    bounds = [round(i * depth / count) for i in range(count + 1)]
    return tuple((bounds[i], bounds[i + 1] - 1) for i in range(count))


class GPViTAdapter(nn.Module):
    """GPViT + adapter: (B, 3, H, W) -> [f1, f2, f3, f4] (or [f2, f3, f4] with ``single_stage``),
    each (B, C, H / stride, W / stride)."""

    def __init__(
        self,
        vit: GPViT,
        *,
        single_stage: bool = False,
        spm_width: int = 64,
        heads: int = 6,
        points: int = 4,
        ffn_ratio: float = 0.25,
        interactions: Sequence[tuple[int, int]] | None = None,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        dim = vit.embed_dim
        vit.norm = nn.Identity()  # final_norm=False in the detection configs: no ``ln1``
        self.vit = vit
        self.single_stage = single_stage
        self.groups = tuple(tuple(group) for group in (interactions or even_groups(len(vit.blocks))))
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(dim, spm_width, with_c1=not single_stage)
        self.interactions = nn.Sequential(
            *(
                Interaction(
                    dim, heads, points, ffn_ratio, drop_path_rate, 2 if i == len(self.groups) - 1 else 0
                )
                for i in range(len(self.groups))
            )
        )
        self.up = None if single_stage else nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.ad_norm1 = None if single_stage else nn.BatchNorm2d(dim)
        self.ad_norm2 = nn.BatchNorm2d(dim)
        self.ad_norm3 = nn.BatchNorm2d(dim)
        self.ad_norm4 = nn.BatchNorm2d(dim)
        self.out_channels = [dim] * (3 if single_stage else 4)
        self.strides = (8, 16, 32) if single_stage else (4, 8, 16, 32)
        for part in (self.spm, self.interactions, self.up):
            if part is not None:
                part.apply(self._init_weights)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """As released: truncated normal linears, He-normal (fan-out) convs, unit norms."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """The GPViT's (position embedding, group tokens) and the level embedding."""
        return {f"vit.{name}" for name in self.vit.no_weight_decay()} | {"level_embed"}

    def attention_sites(self) -> dict[str, AttentionSite]:
        """The GPViT's stripe, grouping and ungrouping attention (stride 8 on this module's input)."""
        return self.vit.attention_sites()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        c1, levels = self.spm(images)
        shapes = [tuple(level.shape[-2:]) for level in levels]
        priors = torch.cat(
            [level.flatten(2).transpose(1, 2) + self.level_embed[i] for i, level in enumerate(levels)], dim=1
        )
        tokens, grid = self.vit._embed(images)
        for interaction, (first, last) in zip(self.interactions, self.groups, strict=True):
            tokens, priors = interaction(tokens, grid, priors, shapes, self.vit.blocks[first : last + 1])
        batch = images.shape[0]
        c2, c3, c4 = (
            level.transpose(1, 2).reshape(batch, -1, h, w)
            for level, (h, w) in zip(priors.split([h * w for h, w in shapes], dim=1), shapes, strict=True)
        )
        vit_map = tokens.transpose(1, 2).reshape(batch, -1, *grid)

        def with_vit(level: torch.Tensor) -> torch.Tensor:
            if level.shape[-2:] == vit_map.shape[-2:]:
                return level + vit_map
            return level + F.interpolate(vit_map, size=level.shape[-2:], mode="bilinear", align_corners=False)

        outputs = [self.ad_norm2(with_vit(c2)), self.ad_norm3(with_vit(c3)), self.ad_norm4(with_vit(c4))]
        if self.single_stage:
            return outputs
        c1 = c1 + self.up(c2)[..., : c1.shape[-2], : c1.shape[-1]]
        return [self.ad_norm1(with_vit(c1)), *outputs]
