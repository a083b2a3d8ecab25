"""Layer-wise linear probes for dense prediction: how linearly decodable the classes are in each layer.

    table = layer_probes(model, train_set, val_set, steps=200)    # Table of ProbeRow, mIoU per layer
    probe_figure(table)

A probe is a 1x1 convolution (C -> K) on a layer's frozen token features, optionally after a
BatchNorm (``batch_norm=True``, the BN + linear layer of DINOv2's linear evaluation). Its logits are
upsampled bilinearly to the input and trained with cross-entropy against the labels (ignore index
255), AdamW with a cosine schedule, the images drawn in a seeded order. All layers' probes train
together from the same forward passes; the model itself is never updated. Scored on the validation
set with the evaluation's confusion matrix (``workbench.engine.evaluate.ConfusionMatrix``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from workbench.engine.evaluate import ConfusionMatrix
from workbench.studies.batches import Batch, chosen_indices, image_batches, inference, score
from workbench.studies.layers import layer_features
from workbench.studies.tables import Table

IGNORE_INDEX = 255
# Labelled feature maps: ({layer: (B, C, h, w)}, the batch they came from).
FeatureBatches = Callable[[], Iterator[tuple[Mapping[str, torch.Tensor], Batch]]]


class LinearProbe(nn.Module):
    """(B, C, h, w) features -> (B, K, h, w) logits: [BatchNorm2d] then a 1x1 convolution."""

    def __init__(self, channels: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(features))


def _logits(probe: LinearProbe, features: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The probe's logits at the padded input's resolution (fp32)."""
    return F.interpolate(
        probe(features.float()), size=batch.images.shape[-2:], mode="bilinear", align_corners=False
    )


def fit_probes(
    probes: Mapping[str, LinearProbe],
    batches: FeatureBatches,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    progress: bool = True,
) -> None:
    """Train ``probes`` (layer -> probe) for ``steps`` steps on ``batches()`` (called again whenever it
    runs out): cross-entropy of each probe's upsampled logits against the labels (ignore 255)."""
    parameters = [p for probe in probes.values() for p in probe.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    for probe in probes.values():
        probe.train()
    stream = batches()
    for _ in tqdm(range(steps), desc="probes", disable=not progress, leave=False):
        try:
            features, batch = next(stream)
        except StopIteration:
            stream = batches()
            features, batch = next(stream)
        loss = sum(
            F.cross_entropy(
                _logits(probe, features[name], batch)[..., : batch.size[0], : batch.size[1]],
                _labels_at_input(batch),
                ignore_index=IGNORE_INDEX,
            )
            for name, probe in probes.items()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()


def _labels_at_input(batch: Batch) -> torch.Tensor:
    """The labels (B, H, W) at the unpadded input's size (nearest, for sets whose labels differ)."""
    labels = batch.labels.long()
    if tuple(labels.shape[-2:]) == tuple(batch.size):
        return labels
    return F.interpolate(labels[:, None].float(), size=batch.size, mode="nearest-exact")[:, 0].long()


@torch.no_grad()
def probe_metrics(
    probes: Mapping[str, LinearProbe], batches: FeatureBatches, num_classes: int
) -> dict[str, dict[str, Any]]:
    """``ConfusionMatrix.metrics`` of each probe (eval mode) over ``batches()``: layer -> metrics."""
    device = next(next(iter(probes.values())).parameters()).device
    matrices = {name: ConfusionMatrix(num_classes, device) for name in probes}
    for probe in probes.values():
        probe.eval()
    for features, batch in batches():
        for name, probe in probes.items():
            score(matrices[name], _logits(probe, features[name], batch), batch)
    return {name: matrix.metrics() for name, matrix in matrices.items()}


@dataclass
class ProbeRow:
    """A probe on ``layer``'s features (``channels`` wide): validation mIoU, aAcc, mAcc (percent)."""

    layer: str
    channels: int
    mIoU: float
    aAcc: float
    mAcc: float


def layer_probes(
    model: nn.Module,
    train_set: Any,
    val_set: Any,
    *,
    layers: list[str] | None = None,
    num_classes: int | None = None,
    batch_norm: bool = False,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 8,
    train_count: int | None = None,
    val_count: int | None = None,
    seed: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> Table:
    """A linear probe per backbone layer of ``model`` (``layer_features``; ``layers`` names a subset),
    trained ``steps`` steps of ``batch_size`` images drawn (seed ``seed``) from the first
    ``train_count`` items of ``train_set`` (as it gives them: a split with a random training
    transform makes the run depend on it too), scored on the first ``val_count`` of ``val_set``. The model runs frozen in eval mode under ``precision``; the probes train in fp32 on
    its device. ``num_classes``: the data set's (default: the model's; a backbone such as a timm ViT
    has none). Returns a Table of ``ProbeRow``, input to output."""
    num_classes = num_classes or getattr(model, "num_classes", 0)
    if not num_classes:
        raise ValueError(
            f"{type(model).__name__} has no classes of its own (a backbone): pass num_classes, the data set's"
        )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    train_indices = chosen_indices(train_set, train_count)

    def features_of(dataset: Any, indices: list[int] | range, desc: str) -> FeatureBatches:
        def stream() -> Iterator[tuple[dict[str, torch.Tensor], Batch]]:
            for batch in image_batches(model, dataset, indices, batch_size, progress=False, desc=desc):
                with inference(model, precision):
                    features = layer_features(model, batch.images)
                yield {name: features[name].float() for name in layers or features}, batch

        return stream

    def shuffled() -> Iterator[tuple[dict[str, torch.Tensor], Batch]]:
        order = torch.randperm(len(train_indices), generator=generator).tolist()
        return features_of(train_set, [train_indices[i] for i in order], "train")()

    with inference(model, precision):
        first = layer_features(
            model, next(image_batches(model, train_set, train_indices[:1], progress=False)).images
        )
    widths = {name: f.shape[1] for name, f in first.items() if layers is None or name in layers}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probes = {name: LinearProbe(c, num_classes, batch_norm).to(device) for name, c in widths.items()}
    fit_probes(probes, shuffled, steps, lr, progress=progress)
    metrics = probe_metrics(
        probes, features_of(val_set, chosen_indices(val_set, val_count), "val"), num_classes
    )
    return Table(ProbeRow(name, widths[name], m["mIoU"], m["aAcc"], m["mAcc"]) for name, m in metrics.items())


def probe_figure(table: Table, title: str = "linear probes") -> Figure:
    """Validation mIoU of each layer's probe."""
    layers = table.column("layer")
    figure = Figure(figsize=(1.5 + 0.5 * len(layers), 3.2), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(range(len(layers)), table.column("mIoU"), marker="o")
    axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
    axes.set_ylim(0, 100)
    axes.set_ylabel("mIoU (%)")
    axes.set_title(title)
    return figure
