"""Mean attention distance per layer and head, in input pixels (the ViT paper's Figure 7 right).

For each query token: sum over keys of prob * Euclidean distance between the query's and the key's
positions, averaged over the queries and the images of a batch. A token's position is the centre of
its cell on its ``TokenGrid``: ((row + 0.5) * stride, (col + 0.5) * stride) input pixels, so maps at
different strides (HLG's stages) are comparable. Keys without a place on the image (a class token;
padding that takes part in HLG's local attention) are left out and the remaining weights
renormalised, so the distance is that of the attention *on the image*.

Per layout:
- self (SETR, HLG's last stage), window and dilated (GPViT stripes, HLG local): token to token.
- global (HLG): a key is a window token; its position is the centroid of the image tokens of its
  window (its group, plain or dilated, from the layout's ``WindowLayout``).
- grouping (GPViT): the query is a group token, which has no position; its distance is the group's
  radius, sum_m P[g, m] * |pos_m - centroid_g| with centroid_g = sum_m P[g, m] pos_m, averaged over
  groups: how far apart the tokens a group gathers lie.
- ungrouping (GPViT): keys are groups. Alone it has no distance; ``gp_attention_distance`` gives the
  distance of the token-to-token attention through the groups (``effective_attention``, per
  ungrouping head), which ``attention_distances`` reports under the ungrouping site's name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.models.explain import AttentionMap, CachedAttention, CrossLayout, TokenGrid, WindowLayout
from workbench.precision import model_device_dtype
from workbench.viz.groups import gp_sites, site_probs
from workbench.viz.record import record


def token_centres(tokens: TokenGrid, device: torch.device | None = None) -> torch.Tensor:
    """(rows * cols, 2) centres (y, x) of the grid's tokens in input pixels, row-major."""
    rows = torch.arange(tokens.rows, device=device, dtype=torch.float32)
    cols = torch.arange(tokens.cols, device=device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
    return (grid + 0.5) * tokens.stride


def _weighted_distance(
    probs: torch.Tensor, distance: torch.Tensor, real_keys: torch.Tensor | None = None
) -> torch.Tensor:
    """(..., q, k) weights and (q, k) distances -> (..., q) expected distance over the real keys."""
    if real_keys is not None:
        probs = probs * real_keys
    return (probs * distance).sum(-1) / probs.sum(-1).clamp_min(1e-12)


def _window_slots(layout: WindowLayout, device: torch.device) -> torch.Tensor:
    """(windows, L) grid index of the token in each slot of each window, -1 for padding slots; read
    off the layout's own ``place`` (no re-derived window maths)."""
    slots = layout.size[0] * layout.size[1]
    ids = torch.arange(1, slots + 1, dtype=torch.float32, device=device)
    token_of_slot = torch.full((layout.per_sample, slots), -1, dtype=torch.long, device=device)
    for window in range(layout.per_sample):
        placed = layout.place(ids, window).flatten()  # slot id + 1 at its token, 0 elsewhere
        tokens = placed.nonzero()[:, 0]
        token_of_slot[window, placed[tokens].long() - 1] = tokens
    return token_of_slot


def _window_centroids(layout: CrossLayout, centres: torch.Tensor) -> torch.Tensor:
    """(windows, 2) centroid of each window's image tokens (HLG's window tokens)."""
    owner = layout.windows.window_of_tokens(centres.device).flatten()
    count = layout.windows.per_sample
    total = torch.zeros(count, 2, device=centres.device).index_add_(0, owner, centres)
    return total / torch.bincount(owner, minlength=count).clamp_min(1)[:, None]


def mean_attention_distance(attention: AttentionMap) -> torch.Tensor:
    """Mean attention distance (heads,) in input pixels of a recorded map, averaged over the queries
    and the images of the batch (see the module docstring for each layout)."""
    probs, layout = attention.probs.detach().float(), attention.layout
    centres = token_centres(attention.tokens, probs.device)
    kind = layout.kind
    if kind == "self":
        prefix = layout.num_prefix_tokens
        grid_probs = probs[..., prefix:, prefix:]
        return _weighted_distance(grid_probs, torch.cdist(centres, centres)).mean((0, 2))
    if kind in ("window", "dilated"):
        slots = _window_slots(layout, probs.device)  # (windows, L)
        real = slots >= 0
        positions = centres[slots.clamp_min(0)]  # (windows, L, 2)
        per_query = _weighted_distance(probs, torch.cdist(positions, positions), real[:, None, :])
        return (per_query * real).sum((-2, -1)).mean(0) / real.sum()  # (B, heads, windows, L) -> (heads,)
    if kind == "global":
        keys = _window_centroids(layout, centres)
        return _weighted_distance(probs, torch.cdist(centres, keys)).mean((0, 2))
    if kind == "grouping":
        centroids = probs @ centres  # (B, heads, G, 2)
        radius = (probs * (centres - centroids[..., None, :]).norm(dim=-1)).sum(-1)
        return radius.mean((0, 2))
    raise ValueError(f"{kind} attention has no distance of its own: use gp_attention_distance(grouping, it)")


def gp_attention_distance(
    grouping: AttentionMap | CachedAttention, ungrouping: AttentionMap | CachedAttention, chunk: int = 512
) -> torch.Tensor:
    """Mean distance (ungrouping heads,) of a GP block's token-to-token attention through its groups,
    ``effective_attention`` per ungrouping head (grouping heads averaged, the mixer left out),
    averaged over the queries and the batch; ``chunk`` queries at a time (memory O(heads chunk N))."""
    groups = site_probs(grouping, "grouping").detach().float().mean(1)  # (B, G, N)
    ungroups = site_probs(ungrouping, "ungrouping").detach().float()  # (B, heads, N, G)
    centres = token_centres(ungrouping.tokens, groups.device)
    total = ungroups.new_zeros(ungroups.shape[:2])
    for start in range(0, centres.shape[0], chunk):
        effective = ungroups[:, :, start : start + chunk] @ groups[:, None]  # (B, heads, chunk, N)
        distance = torch.cdist(centres[start : start + chunk], centres)
        total += _weighted_distance(effective, distance).sum(-1)
    return (total / centres.shape[0]).mean(0)


def attention_distances(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[int | str] | None = None,
    batch_size: int = 4,
) -> dict[str, torch.Tensor]:
    """Mean attention distance (heads,) of every recorded site of ``model`` over ``images``
    (B, C, H, W), ``batch_size`` images per forward on the model's device and in its dtype; a GPViT
    ungrouping site reports the distance through its groups (``gp_attention_distance``; record its
    grouping site too). Eval mode, no grad. Distances come back on ``images``' device, in its dtype."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch (B, C, H, W), got {tuple(images.shape)}")
    device, dtype = model_device_dtype(model)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device, dtype)  # a batch at a time on the device
        with torch.no_grad(), record(model, layers) as recording:
            model(batch)
        maps = recording.attention
        through_groups = {f"{block}.ungrouping": pair for block, pair in gp_sites(maps).items()}
        for name, attention in maps.items():
            if name in through_groups:
                distance = gp_attention_distance(*through_groups[name])
            else:
                distance = mean_attention_distance(attention)
            sums[name] = sums.get(name, 0) + distance * batch.shape[0]
    return {name: (total / images.shape[0]).to(images) for name, total in sums.items()}
