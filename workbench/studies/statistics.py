"""Attention entropy and attention distance per site and head across a data set, with bootstrap CIs.

    table = attention_statistics(model, val_set, count=64)   # Table of HeadStatistic
    statistics_figure(table, "distance")                     # per site, each head's mean and its CI

Per image, per recorded site (``workbench.viz.record``, the maps the forward used) and head:

- ``entropy``: of each query's attention distribution, in nats, averaged over the queries on the
  image (a SETR class token's and registers' rows left out); keys are whatever the site attends to
  (tokens, window tokens, groups). Padded keys the model masks carry no weight and add nothing.
- ``distance``: the mean attention distance in input pixels, ``mean_attention_distance`` (GPViT's
  ungrouping through its groups, ``gp_attention_distance``, as ``attention_distances`` reports it).

Each value is a mean over images; its confidence interval is the percentile bootstrap over images
(``resamples`` resamples of the images with replacement, seeded, one resampling shared by every site
and head so that they can be compared), the ``confidence`` central interval of the resampled means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from workbench.models.explain import AttentionMap
from workbench.studies.batches import chosen_indices, image_batches, inference
from workbench.studies.tables import Table
from workbench.viz.distance import gp_attention_distance, mean_attention_distance
from workbench.viz.groups import gp_sites
from workbench.viz.record import record

MEASURES = ("entropy", "distance")


def attention_entropy(attention: AttentionMap) -> torch.Tensor:
    """Mean entropy (B, heads) in nats of the attention rows of a recorded map, over its image queries."""
    probs = attention.probs.detach().float()
    if attention.kind == "self":  # the prefix tokens' rows are not on the image
        probs = probs[:, :, attention.num_prefix_tokens :]
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    return entropy.flatten(2).mean(-1)


def _per_image_distances(maps: dict[str, AttentionMap]) -> dict[str, torch.Tensor]:
    """Mean attention distance (B, heads) of every site of a recording that has one."""
    through_groups = {f"{block}.ungrouping": pair for block, pair in gp_sites(maps).items()}
    distances = {}
    for name, attention in maps.items():
        if attention.kind == "ungrouping" and name not in through_groups:
            continue  # no distance without its grouping
        rows = []
        for i in range(attention.probs.shape[0]):
            if name in through_groups:
                pair = [replace(site, probs=site.probs[i : i + 1]) for site in through_groups[name]]
                rows.append(gp_attention_distance(*pair))
            else:
                rows.append(mean_attention_distance(replace(attention, probs=attention.probs[i : i + 1])))
        distances[name] = torch.stack(rows)
    return distances


def bootstrap_interval(
    values: torch.Tensor, resamples: torch.Tensor, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``values`` (n,) and the percentile interval of its means over ``resamples`` (R, n) indices."""
    means = values[resamples].mean(-1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(values.mean()), float(low), float(high)


@dataclass
class HeadStatistic:
    """``measure`` of head ``head`` at ``site``: the mean over ``images`` images and its CI [low, high]."""

    site: str
    head: int
    measure: str
    mean: float
    low: float
    high: float
    images: int


def attention_statistics(
    model: nn.Module,
    dataset: Any,
    *,
    layers: Sequence[int | str] | None = None,
    count: int | None = None,
    batch_size: int = 4,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> Table:
    """Attention entropy and distance per site (``layers``: indices or names of
    ``model.attention_sites()``, None: all) and head over the first ``count`` images of ``dataset``,
    ``batch_size`` images per forward (the recorded maps of a batch are held at once), with bootstrap
    CIs (module docstring): a Table of ``HeadStatistic``, site-major, entropy before distance."""
    per_image: dict[tuple[str, str], list[torch.Tensor]] = {}
    indices = chosen_indices(dataset, count)
    with inference(model, precision):
        for batch in image_batches(model, dataset, indices, batch_size, progress, desc="attention"):
            with record(model, layers) as recording:
                model(batch.images)
            maps = recording.attention
            for name, attention in maps.items():
                per_image.setdefault((name, "entropy"), []).append(attention_entropy(attention).cpu())
            for name, distance in _per_image_distances(maps).items():
                per_image.setdefault((name, "distance"), []).append(distance.float().cpu())
    generator = torch.Generator().manual_seed(seed)
    resampled = torch.randint(len(indices), (resamples, len(indices)), generator=generator)
    order = {name: i for i, name in enumerate(dict.fromkeys(name for name, _ in per_image))}
    rows = Table()
    for (name, measure), chunks in sorted(
        per_image.items(), key=lambda item: (order[item[0][0]], item[0][1] == "distance")
    ):
        values = torch.cat(chunks)  # (images, heads)
        for head in range(values.shape[1]):
            mean, low, high = bootstrap_interval(values[:, head], resampled, confidence)
            rows.append(HeadStatistic(name, head, measure, mean, low, high, values.shape[0]))
    return rows


def statistics_figure(table: Table, measure: str = "distance", title: str | None = None) -> Figure:
    """Each head's mean ``measure`` per site with its confidence interval, sites along the x axis."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    rows = [row for row in table if row.measure == measure]
    sites = list(dict.fromkeys(row.site for row in rows))
    figure = Figure(figsize=(1.5 + 0.5 * len(sites), 3.4), layout="constrained")
    axes = figure.add_subplot()
    heads = 1 + max(row.head for row in rows)
    for row in rows:
        x = sites.index(row.site) + 0.6 * (row.head / max(heads - 1, 1) - 0.5)
        axes.errorbar(
            x, row.mean, yerr=[[row.mean - row.low], [row.high - row.mean]], fmt="o", ms=3, color="C0"
        )
    axes.set_xticks(range(len(sites)), sites, rotation=90, fontsize=7)
    axes.set_ylabel("nats" if measure == "entropy" else "pixels")
    axes.set_title(title or f"attention {measure} per head: mean and confidence interval")
    return figure
