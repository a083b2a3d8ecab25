"""Layer-wise decoding, a "logit lens" for segmentation: the trained decode head read off earlier layers.

    logits = lens_logits(model, images)          # {"blocks.3": (B, K, H, W), ...} one segmentation per layer
    table = layer_decoding(model, val_set)       # Table of LensRow: mIoU per layer, agreement with the model
    lens_figure(table)

Decoding layer i means *skipping the layers after i*: every input of the head that the model taps
deeper than layer i reads layer i's output instead, the taps at or before i stay as they are, and each
input goes through the norm its tap applies. At (or after) the deepest tap this is the model itself.

- SETR-Naive / PUP: one tap, so the head (its own LayerNorm, convolutions, classifier) runs on block
  i's raw output, as it runs on the tapped block's. SETR-MLA: its four taps, those deeper than i
  replaced by block i, through the MLA neck and head.
- GPViT: every layer has the width and the stride (8) of the taps, so the head can read any layer;
  a tap's input goes through that tap's LayerNorm (``out_norms``, the final norm for the last layer).
- HLG: not applicable. Its head reads four stages of different widths and strides, and a stage-k
  input cannot be read off a layer of another stage; within a stage, replacing the stage's output by
  an earlier layer's is layer skipping, not decoding. ``lens_logits`` raises a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from workbench.engine.evaluate import ConfusionMatrix
from workbench.models.layers import resize
from workbench.studies.batches import chosen_indices, image_batches, inference, labels_at, score
from workbench.studies.layers import layer_features
from workbench.studies.tables import Table


def _tap_norm(backbone: nn.Module, tap: int) -> nn.Module:
    """The norm the backbone applies to its output at layer ``tap`` (identity for SETR's encoder,
    whose heads normalise their inputs themselves)."""
    out_norms = getattr(backbone, "out_norms", None)
    if out_norms is None:
        return nn.Identity()
    return dict(out_norms).get(str(tap), backbone.norm)


def _channels_last_norm(norm: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    """A token norm (over C) applied to a map (B, C, h, w)."""
    return norm(feature_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def check_decodable(model: nn.Module) -> None:
    """Refuse, in one line saying why, a model whose earlier layers its head cannot read."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "out_indices") or not hasattr(backbone, "blocks"):
        raise ValueError(
            f"{type(model).__name__}: layer-wise decoding needs a segmentor whose backbone layers share "
            "the head's width and stride (SETR, GPViT); HLG's stages differ in both, and a backbone "
            "without a segmentation head (a timm ViT) has no head to apply"
        )


def lens_logits(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits (B, K, H, W) at the input's resolution decoded from every backbone layer of a segmentor
    ``model`` for ``images`` (B, C, H, W) on its device, padded as it needs (module docstring)."""
    check_decodable(model)
    backbone = model.backbone
    features = list(layer_features(model, images).items())
    taps = list(backbone.out_indices)
    decoded = {}
    for layer, (name, _) in enumerate(features):
        inputs = [_channels_last_norm(_tap_norm(backbone, tap), features[min(tap, layer)][1]) for tap in taps]
        if model.neck is not None:
            inputs = model.neck(inputs)
        index = model.decode_in
        head_input = inputs[index] if isinstance(index, int) else [inputs[i] for i in index]
        logits = model.decode_head(head_input)
        decoded[name] = resize(logits, images.shape[-2:], model.align_corners)
    return decoded


@dataclass
class LensRow:
    """Decoding from ``layer``: mIoU and pixel accuracy (percent) against the labels, and
    ``agreement``, the percentage of labelled pixels given the class the whole model gives them."""

    layer: str
    mIoU: float
    aAcc: float
    agreement: float


def layer_decoding(
    model: nn.Module,
    dataset: Any,
    *,
    count: int | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
    progress: bool = True,
) -> Table:
    """``lens_logits`` over the first ``count`` images of ``dataset`` (all by default), scored as the
    evaluation scores (logits resized to the labels, ignore index left out): a Table of ``LensRow``,
    input to output. The model runs in eval mode (its own restored), under ``precision``."""
    check_decodable(model)
    matrices: dict[str, ConfusionMatrix] = {}
    same: dict[str, int] = {}
    labelled = 0
    indices = chosen_indices(dataset, count)
    with inference(model, precision):
        for batch in image_batches(model, dataset, indices, batch_size, progress, desc="lens"):
            final = labels_at(model(batch.images), batch).argmax(1)
            valid = batch.labels != 255
            labelled += int(valid.sum())
            for name, logits in lens_logits(model, batch.images).items():
                matrix = matrices.setdefault(name, ConfusionMatrix(model.num_classes, batch.labels.device))
                prediction = score(matrix, logits, batch)
                same[name] = same.get(name, 0) + int((prediction == final)[valid].sum())
    return Table(
        LensRow(name, m["mIoU"], m["aAcc"], 100.0 * same[name] / max(labelled, 1))
        for name, m in ((name, matrix.metrics()) for name, matrix in matrices.items())
    )


def lens_figure(table: Table, title: str = "layer-wise decoding") -> Figure:
    """mIoU and agreement with the model's own prediction per decoded layer."""
    layers = table.column("layer")
    figure = Figure(figsize=(1.5 + 0.5 * len(layers), 3.2), layout="constrained")
    axes = figure.add_subplot()
    for column in ("mIoU", "agreement"):
        axes.plot(range(len(layers)), table.column(column), marker="o", label=column)
    axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
    axes.set_ylim(0, 100)
    axes.set_ylabel("percent")
    axes.set_title(title)
    axes.legend()
    return figure
