"""Attention rollout, gradient-weighted attention relevance and effective receptive fields.

- Rollout (Abnar & Zuidema 2020, "Quantifying attention flow in transformers"): the residual
  connection is folded into each layer's head-averaged attention, A~ = rownorm(0.5 A + 0.5 I), and
  the layers are multiplied, R = A~_L ... A~_1: row i says how much output token i draws from each
  input token. For one query pixel only its row is needed, e_i^T A~_L ... A~_1, a row vector times
  each layer's matrix: O(L N^2) time, O(heads * chunk * N) memory with cached q and k, never the
  O(L N^3) product.
- Relevance (Chefer, Gur & Wolf 2021, "Generic attention-model explainability"): starting from
  R = I, each layer adds mean_heads(clamp(dF/dA * A, min=0)) @ R, F the target (here the class-c
  logits summed over a region of the segmentation).
- Effective receptive field (Luo et al. 2016): |dF/d image| of a centre pixel's logit.

Rollout and relevance are for self-attention over a token grid (``SelfLayout``: SETR, any ViT,
HLG's last stage); maps come from ``workbench.viz.record`` (``AttentionMap``) or, for one query,
``workbench.viz.capture`` (``CachedAttention``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from workbench.models.explain import AttentionMap, CachedAttention, attention_probs
from workbench.precision import model_device_dtype
from workbench.viz.record import record

Site = AttentionMap | CachedAttention
Sites = Sequence[Site] | Mapping[str, Site]


def _self_sites(sites: Sites) -> list[Site]:
    """The sites in forward order, checked to be self-attention on one grid with one prefix."""
    sites = list(sites.values()) if isinstance(sites, Mapping) else list(sites)
    if not sites:
        raise ValueError("expected the self-attention maps of one or more layers, in forward order")
    first = sites[0].layout
    for site in sites:
        if site.layout.kind != "self":
            raise ValueError(
                f"expected self-attention maps (SelfLayout: SETR, a ViT), got {site.layout.kind} attention"
            )
        if site.layout != first:
            raise ValueError(
                f"all layers must share one token grid and prefix, got {site.layout} and {first}"
            )
    return sites


def _rows(site: Site, sample: int, start: int, stop: int) -> torch.Tensor:
    """Attention probabilities of queries [start, stop) of image ``sample``: (heads, stop - start, N)."""
    if isinstance(site, AttentionMap):
        return site.probs[sample, :, start:stop]
    mask = site.mask
    if mask is not None:
        mask = mask[sample if mask.shape[0] > 1 else 0]
        mask = mask[:, start:stop] if mask.shape[-2] > 1 else mask
    return attention_probs(site.q[sample, :, start:stop], site.k[sample], mask)


def _residual(probs: torch.Tensor, start: int, prefix: int, class_token: bool) -> torch.Tensor:
    """Heads averaged, residual folded in: (..., heads, n, N) rows of queries start.. -> (..., n, N').

    Without the class token (``class_token=False``) the prefix columns are dropped and the rows
    renormalised first, so the rollout lives on the grid tokens alone (N' = N - prefix; ``start`` then
    counts grid tokens).
    """
    mean = probs.mean(-3)
    if not class_token:
        mean = mean[..., prefix:]
        mean = mean / mean.sum(-1, keepdim=True)
    identity = torch.zeros_like(mean)
    index = torch.arange(mean.shape[-2], device=mean.device)
    identity[..., index, start + index] = 1
    mixed = 0.5 * mean + 0.5 * identity
    return mixed / mixed.sum(-1, keepdim=True)


def attention_rollout(
    maps: Sequence[AttentionMap] | Mapping[str, AttentionMap], class_token: bool = True
) -> torch.Tensor:
    """Full rollout A~_L ... A~_1 of recorded self-attention maps (forward order): (B, N', N').

    ``class_token=True``: over all tokens, prefix first (N' = N; a grid token's row keeps a share on
    the class token). ``class_token=False``: each layer restricted to the grid tokens, rows
    renormalised (N' = rows * cols). O(L N^3): for one query use ``rollout_at``.
    """
    maps = _self_sites(maps)
    prefix = maps[0].layout.num_prefix_tokens
    start = 0 if class_token else prefix
    rollout = None
    for attention in maps:
        probs = attention.probs.detach()[:, :, start:]
        layer = _residual(probs, 0, prefix, class_token)
        rollout = layer if rollout is None else layer @ rollout
    return rollout


def _rollout_row(sites: list[Site], query: int, sample: int, class_token: bool, chunk: int) -> torch.Tensor:
    """e_query^T A~_L ... A~_1, each layer's rows computed ``chunk`` queries at a time: (N',)."""
    prefix = sites[0].layout.num_prefix_tokens
    offset = 0 if class_token else prefix  # query rows of the full attention vs rollout indices
    first = sites[0].q if isinstance(sites[0], CachedAttention) else sites[0].probs
    if not 0 <= sample < first.shape[0]:
        raise ValueError(f"sample must be in [0, {first.shape[0]}), got {sample}")
    size = first.shape[-2] - offset
    row = torch.zeros(size, dtype=torch.float32, device=first.device)
    row[query] = 1
    for site in reversed(sites):
        step = torch.zeros_like(row)
        for start in range(0, size, chunk):
            weights = row[start : start + chunk]
            if not weights.any():  # the last layer's row vector is one-hot: one chunk is enough
                continue
            probs = _rows(site, sample, offset + start, offset + start + len(weights)).detach().float()
            step += weights @ _residual(probs, start, prefix, class_token)
        row = step
    return row


def rollout_at(
    sites: Sites, row: int, col: int, class_token: bool = True, sample: int = 0, chunk: int = 256
) -> torch.Tensor:
    """Rollout row of the image token at (row, col) of image ``sample``, on the grid: (rows, cols).

    ``sites``: the layers' ``AttentionMap`` or ``CachedAttention`` (forward order). With the class
    token its share is off the grid (the map sums to one minus it). O(L N^2) time.
    """
    sites = _self_sites(sites)
    layout = sites[0].layout
    rows, cols = layout.grid
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"token ({row}, {col}) is outside the {rows}x{cols} token grid")
    _, position = layout.locate(row, col)
    prefix = layout.num_prefix_tokens
    query = position if class_token else position - prefix
    rolled = _rollout_row(sites, query, sample, class_token, chunk)
    return rolled[prefix if class_token else 0 :].reshape(rows, cols)


def class_token_rollout(sites: Sites, sample: int = 0, chunk: int = 256) -> torch.Tensor:
    """Rollout row of the class token (the classic ViT picture), on the grid: (rows, cols)."""
    sites = _self_sites(sites)
    layout = sites[0].layout
    if layout.num_prefix_tokens == 0:
        raise ValueError("this model has no class token (num_prefix_tokens is 0); use rollout_at")
    rolled = _rollout_row(sites, 0, sample, True, chunk)
    return rolled[layout.num_prefix_tokens :].reshape(layout.grid)


# --------------------------------------------------------------------------- relevance


def region_target(
    logits: torch.Tensor, target_class: int, region: torch.Tensor | None = None
) -> torch.Tensor:
    """The scalar F = sum of class ``target_class``'s logits (B, K, H, W) over ``region`` (a bool mask
    (H, W) or (B, H, W), on any device; None: every pixel)."""
    classes = logits.shape[1]
    if not 0 <= target_class < classes:
        raise ValueError(f"target_class must be in [0, {classes}), got {target_class}")
    scores = logits[:, target_class]
    if region is None:
        return scores.sum()
    if region.shape[-2:] != scores.shape[-2:] or region.ndim not in (2, 3):
        raise ValueError(
            f"region must be a mask (H, W) or (B, H, W) of the logits' {tuple(scores.shape[-2:])}"
        )
    if not region.any():
        raise ValueError("region is empty: mark at least one pixel")
    return (scores * region.to(scores)).sum()


def attention_relevance(
    maps: Sequence[AttentionMap] | Mapping[str, AttentionMap], grads: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Chefer et al.'s relevance (B, N, N): R = I, then per layer in forward order
    R <- R + mean_heads(clamp(grad * A, min=0)) @ R. ``grads``: dF/dA of each map (default ``map.grad``,
    set by ``backward`` inside ``record(model, keep_grad=True)``). Row i: relevance of each input token
    to output token i."""
    maps = _self_sites(maps)
    grads = [attention.grad for attention in maps] if grads is None else list(grads)
    if len(grads) != len(maps) or any(grad is None for grad in grads):
        raise ValueError("every map needs its gradient: back-propagate inside record(model, keep_grad=True)")
    first = maps[0].probs
    relevance = torch.eye(first.shape[-1], dtype=torch.float32, device=first.device).expand(
        first.shape[0], -1, -1
    )
    for attention, grad in zip(maps, grads, strict=True):
        weighted = (grad.detach() * attention.probs.detach()).clamp(min=0).mean(1)
        relevance = relevance + weighted.float() @ relevance
    return relevance


def segment_relevance(
    model: nn.Module,
    images: torch.Tensor,
    target_class: int,
    region: torch.Tensor | None = None,
    layers: Sequence[int | str] | None = None,
) -> torch.Tensor:
    """Relevance of the input to class ``target_class`` over ``region`` for a ViT segmentor (SETR):
    (B, H, W) on the model input.

    F = ``region_target``; dF/dA from maps on the forward's autograd path (``record(keep_grad=True)``;
    the gradient is taken with ``torch.autograd.grad``, so no parameter's ``.grad`` changes). The map
    is the relevance rows of the region's tokens, each weighted by its number of region pixels (a
    pixel's relevance is its token's), prefix columns dropped. Run the model in eval mode. The model
    runs on its device and dtype; the map comes back on ``images``' device, in its dtype.
    """
    with record(model, layers, keep_grad=True) as recording:
        logits = model(images.to(*model_device_dtype(model)))
    maps = _self_sites(recording.attention)
    target = region_target(logits, target_class, region)
    grads = torch.autograd.grad(target, [attention.probs for attention in maps])
    relevance = attention_relevance(maps, grads)  # (B, N, N)
    layout, tokens = maps[0].layout, maps[0].tokens
    rows, cols = layout.grid
    token_of_pixel = tokens.to_image(torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols))
    token_of_pixel = token_of_pixel.round().long().to(relevance.device)  # (H, W): TokenGrid's mapping
    mask = (
        torch.ones_like(token_of_pixel, dtype=torch.bool) if region is None else region.to(relevance.device)
    )
    mask = mask.expand(images.shape[0], *token_of_pixel.shape)
    weights = torch.stack([torch.bincount(token_of_pixel[m], minlength=rows * cols) for m in mask]).float()
    prefix = layout.num_prefix_tokens
    queries = relevance[:, prefix:, prefix:]  # grid queries, grid keys
    on_grid = (weights[:, None] @ queries)[:, 0] / weights.sum(-1, keepdim=True)
    return tokens.to_image(on_grid.reshape(-1, rows, cols)).to(images)


# --------------------------------------------------------------------------- receptive field


def effective_receptive_field(
    model: nn.Module,
    images: torch.Tensor,
    target_class: int | None = None,
    point: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Effective receptive field (Luo et al. 2016) of any segmentor: (H, W), maximum 1.

    |dF/d images| summed over colour channels and averaged over the batch, F the logit of class
    ``target_class`` (None: all classes' logits summed) at ``point`` (y, x) of the model input
    (default: the centre pixel), normalised by its maximum. Works on any model mapping (B, C, H, W)
    to logits (B, K, H, W); run it in eval mode on a batch of images to compare families. The model
    runs on its device and dtype; the field comes back on ``images``' device, in its dtype.
    """
    height, width = images.shape[-2:]
    y, x = point if point is not None else (height // 2, width // 2)
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"point ({y}, {x}) is outside the {height}x{width} input")
    inputs = images.detach().to(*model_device_dtype(model)).requires_grad_()
    logits = model(inputs)
    if target_class is not None and not 0 <= target_class < logits.shape[1]:
        raise ValueError(f"target_class must be in [0, {logits.shape[1]}) or None, got {target_class}")
    pixel = logits[:, :, y, x] if target_class is None else logits[:, target_class, y, x]
    (grad,) = torch.autograd.grad(pixel.sum(), inputs)
    field = grad.float().abs().sum(1).mean(0)  # summed in fp32 whatever the model's dtype
    peak = field.max()
    return (field / peak if peak > 0 else field).to(images)
