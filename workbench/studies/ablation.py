"""Ablation: remove one attention head, or one branch of a layer, and measure what the model loses.

    parts = components(model)                               # every head and branch of the backbone
    table = head_importance(model, val_set, mode="mean")    # Table of AblationRow: delta mIoU per part
    pixel_effect(model, image, (y, x), parts)               # Table of PixelRow: the clicked pixel
    importance_figure(table)                                # site x head heat map of delta mIoU

A component is a slice of channels of one tensor of the forward pass, replaced by zeros
(``mode="zero"``) or by its data-set mean (``"mean"``: per channel, over the images and the token
positions of the first ``count`` images, ``component_means``):

- a head: its slice of the input of the attention's output projection (timm / SETR ``attn.proj``;
  GPViT stripes ``proj``, vertical heads then horizontal, each head's LePE included; GPViT ungrouping
  ``out_proj``; HLG global ``proj``), or, where there is no projection (HLG local attention), its slice
  of the attention's output;
- a GPViT grouping (``blocks.<i>.grouping``): the whole output of the grouping attention, the group
  features (B, G, C). Zeroed, the groups the MLP-Mixer propagates and the ungrouping reads carry no
  image information (only the mixer's biases): the block's global route is cut, while its own
  tokens still pass through the ungrouping's fuse layer and FFN;
- a GPViT stripe branch (``vertical`` / ``horizontal``): its half of the projection's input;
- an HLG branch: a layer's local attention (``local`` on plain-window layers, ``dilated`` on
  dilated-group layers) or its global attention (``global``, after its projection): the branch's whole
  output (B, N, C).

Sites are named as ``model.attention_sites()`` names them (``blocks.3``, ``blocks.1.grouping``,
``stages.0.1.dilated`` ...), heads ``<site>.head<h>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from timm.layers import Attention
from torch import nn
from tqdm import tqdm

from workbench.engine.evaluate import ConfusionMatrix
from workbench.models.gpvit import GPBlock, StripeBlock
from workbench.models.hlg import GlobalLayer, HLGLayer
from workbench.models.layers import pad_for
from workbench.precision import model_device_dtype
from workbench.studies.batches import chosen_indices, image_batches, inference, score
from workbench.studies.layers import backbone_of
from workbench.studies.tables import Table

MODES = ("zero", "mean")


@dataclass(frozen=True, eq=False)
class Component:
    """Channels [start, stop) of the last dimension of ``module``'s input (``hook="input"``) or output
    (``"output"``): head ``head`` of ``site``, or with ``head`` None the whole branch ``site``."""

    site: str
    head: int | None
    module: nn.Module
    hook: str
    channels: tuple[int, int]

    @property
    def name(self) -> str:
        return self.site if self.head is None else f"{self.site}.head{self.head}"


def _heads(site: str, module: nn.Module, hook: str, num_heads: int, width: int, offset: int = 0) -> list:
    step = width // num_heads
    return [
        Component(site, h, module, hook, (offset + h * step, offset + (h + 1) * step))
        for h in range(num_heads)
    ]


def _of_module(path: str, module: nn.Module) -> list[Component]:
    """The components of one backbone module (none for modules that are not attention layers)."""
    if isinstance(module, Attention):  # timm ViT / SETR: heads of the projection's input
        site = path.removesuffix(".attn")
        return _heads(site, module.proj, "input", module.num_heads, module.proj.in_features)
    if isinstance(module, StripeBlock):
        half, parts = module.proj.in_features // 2, []
        for branch, offset in (("vertical", 0), ("horizontal", half)):
            parts.append(Component(f"{path}.{branch}", None, module.proj, "input", (offset, offset + half)))
            heads = module.stripes[offset // half].num_heads
            parts += _heads(f"{path}.{branch}", module.proj, "input", heads, half, offset)
        return parts
    if isinstance(module, GPBlock):
        width = module.ungrouping.out_proj.in_features
        grouping = Component(f"{path}.grouping", None, module.grouping, "output", (0, width))
        heads = module.ungrouping.num_heads
        return [grouping, *_heads(f"{path}.ungrouping", module.ungrouping.out_proj, "input", heads, width)]
    if isinstance(module, HLGLayer | GlobalLayer):
        parts, width = [], module.global_attn.proj.in_features
        if isinstance(module, HLGLayer):
            local = f"{path}.{'dilated' if module.dilated else 'local'}"
            parts.append(Component(local, None, module.local_attn, "output", (0, width)))
            parts += _heads(local, module.local_attn, "output", module.local_attn.num_heads, width)
        parts.append(Component(f"{path}.global", None, module.global_attn, "output", (0, width)))
        parts += _heads(
            f"{path}.global", module.global_attn.proj, "input", module.global_attn.num_heads, width
        )
        return parts
    return []


def components(model: nn.Module, heads: bool = True, branches: bool = True) -> list[Component]:
    """Every ablatable head (``heads``) and branch (``branches``) of ``model``'s backbone, input to
    output (see the module docstring)."""
    found = [part for path, module in backbone_of(model).named_modules() for part in _of_module(path, module)]
    return [part for part in found if (part.head is None and branches) or (part.head is not None and heads)]


def _replace(tensor: torch.Tensor, part: Component, value: torch.Tensor | None) -> torch.Tensor:
    """``tensor`` (..., C) with ``part``'s channels set to ``value`` (zeros when None); a copy."""
    start, stop = part.channels
    tensor = tensor.clone()
    tensor[..., start:stop] = 0 if value is None else value.to(tensor)
    return tensor


@contextmanager
def ablated(
    model: nn.Module,
    parts: Sequence[Component],
    mode: str = "zero",
    means: dict[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """``model`` with ``parts`` replaced by zeros, or with ``mode="mean"`` by ``means`` (name ->
    (channels,), ``component_means``), for the block; the hooks are removed after."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "mean" and (means is None or any(part.name not in means for part in parts)):
        raise ValueError("mode='mean' needs the data-set means of every part: means=component_means(...)")
    handles = []
    for part in parts:
        value = means[part.name] if mode == "mean" else None
        if part.hook == "input":
            hook = part.module.register_forward_pre_hook(
                lambda _m, args, part=part, value=value: (_replace(args[0], part, value), *args[1:])
            )
        else:
            hook = part.module.register_forward_hook(
                lambda _m, _args, output, part=part, value=value: _replace(output, part, value)
            )
        handles.append(hook)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def component_means(
    model: nn.Module,
    dataset: Any,
    parts: Sequence[Component],
    *,
    count: int | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Each part's channels averaged over the images and token positions of the first ``count``
    images of ``dataset``: name -> (channels,) fp32, on the model's device."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def accumulate(part: Component, tensor: torch.Tensor) -> None:
        start, stop = part.channels
        values = tensor[..., start:stop].float().reshape(-1, stop - start)
        sums[part.name] = sums.get(part.name, 0) + values.sum(0)
        counts[part.name] = counts.get(part.name, 0) + values.shape[0]

    handles = [
        part.module.register_forward_pre_hook(lambda _m, args, part=part: accumulate(part, args[0]))
        if part.hook == "input"
        else part.module.register_forward_hook(lambda _m, _a, output, part=part: accumulate(part, output))
        for part in parts
    ]
    try:
        with inference(model, precision):
            indices = chosen_indices(dataset, count)
            for batch in image_batches(model, dataset, indices, batch_size, progress, desc="means"):
                model(batch.images)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / counts[name] for name, total in sums.items()}


@dataclass
class AblationRow:
    """mIoU (percent) with ``component`` ablated, and its change from the intact model's."""

    component: str
    site: str
    head: int | None
    mIoU: float
    delta_mIoU: float


def _miou(model: nn.Module, dataset: Any, indices: range, batch_size: int, precision: str) -> float:
    matrix = ConfusionMatrix(model.num_classes, model_device_dtype(model)[0])
    with inference(model, precision):
        for batch in image_batches(model, dataset, indices, batch_size, progress=False):
            score(matrix, model(batch.images), batch)
    return matrix.metrics()["mIoU"]


def head_importance(
    model: nn.Module,
    dataset: Any,
    parts: Sequence[Component] | None = None,
    *,
    mode: str = "zero",
    count: int | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
    progress: bool = True,
) -> Table:
    """The mIoU of ``model`` on the first ``count`` images of ``dataset`` with each of ``parts`` (None:
    every head and branch, ``components``) ablated in turn (``mode`` "zero" or "mean", the means over
    the same images): a Table of ``AblationRow`` in the order of ``parts``."""
    parts = components(model) if parts is None else list(parts)
    indices = chosen_indices(dataset, count)
    means = None
    if mode == "mean":
        means = component_means(
            model, dataset, parts, count=count, batch_size=batch_size, precision=precision, progress=False
        )
    intact = _miou(model, dataset, indices, batch_size, precision)
    rows = Table()
    for part in tqdm(parts, desc="ablation", disable=not progress, leave=False):
        with ablated(model, [part], mode, means):
            miou = _miou(model, dataset, indices, batch_size, precision)
        rows.append(AblationRow(part.name, part.site, part.head, miou, miou - intact))
    return rows


@dataclass
class PixelRow:
    """The prediction at the clicked pixel with ``component`` ablated: the intact model's class
    ``label`` and its probability before and after, and the class predicted after."""

    component: str
    site: str
    head: int | None
    label: int
    prob_before: float
    prob_after: float
    label_after: int


def pixel_effect(
    model: nn.Module,
    image: torch.Tensor,
    pixel: tuple[int, int],
    parts: Sequence[Component] | None = None,
    *,
    mode: str = "zero",
    means: dict[str, torch.Tensor] | None = None,
    precision: str = "fp32",
) -> Table:
    """What ablating each of ``parts`` (None: every head and branch) does to the prediction at
    ``pixel`` (y, x) of ``image`` (C, H, W), a normalised test view: a Table of ``PixelRow``.
    ``mode="mean"`` needs ``means`` (``component_means`` over a data set)."""
    parts = components(model) if parts is None else list(parts)
    height, width = image.shape[-2:]
    y, x = pixel
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"pixel {pixel} is outside the {height}x{width} image")
    inputs = pad_for(model, image[None].to(*model_device_dtype(model)))

    def probs() -> torch.Tensor:
        with inference(model, precision):
            return model(inputs)[0, :, y, x].float().softmax(0)

    before = probs()
    label = int(before.argmax())
    rows = Table()
    for part in parts:
        with ablated(model, [part], mode, means):
            after = probs()
        row = PixelRow(
            part.name,
            part.site,
            part.head,
            label,
            float(before[label]),
            float(after[label]),
            int(after.argmax()),
        )
        rows.append(row)
    return rows


def importance_figure(table: Table, column: str = "delta_mIoU", title: str = "head ablation") -> Figure:
    """``column`` of the head rows of a ``head_importance`` (or ``pixel_effect``) table as a site x head
    heat map, blue for losses, red for gains; branch rows are left out."""
    heads = [row for row in table if row.head is not None]
    if not heads:
        raise ValueError("the table has no head rows")
    sites = list(dict.fromkeys(row.site for row in heads))
    values = np.full((len(sites), 1 + max(row.head for row in heads)), np.nan)
    for row in heads:
        values[sites.index(row.site), row.head] = getattr(row, column)
    limit = max(float(np.nanmax(np.abs(values))), 1e-9)
    figure = Figure(figsize=(2.0 + 0.5 * values.shape[1], 1.0 + 0.35 * len(sites)), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_yticks(range(len(sites)), sites, fontsize=7)
    axes.set_xticks(range(values.shape[1]))
    axes.set_xlabel("head")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label=column)
    return figure
