"""How the studies run a model over a data set: batches on the model's device, eval mode, a precision.

    with inference(model, "bf16"):
        for batch in image_batches(model, val_set, chosen_indices(val_set, 64), batch_size=8):
            score(matrix, model(batch.images), batch)

A data set's items are (normalised image (C, H, W), labels (H, W)), its test view (the evaluation's
preprocessing). Images of one batch must share a size (the demo set, or any set resized for test);
each batch is zero-padded at the bottom and right to what the model takes (``pad_for``): outputs are
cropped back before they are scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from workbench.engine.evaluate import ConfusionMatrix
from workbench.models.layers import pad_for
from workbench.precision import autocast, model_device_dtype, resolve_precision


def chosen_indices(dataset: Any, count: int | None) -> range:
    """The first ``count`` indices of ``dataset`` (None: all)."""
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1 or None (all images), got {count}")
    return range(len(dataset) if count is None else min(count, len(dataset)))


class Batch(NamedTuple):
    """Images (B, C, H', W') padded for the model, on its device and in its dtype; their size (H, W)
    before padding; labels (B, h, w) on the model's device (h, w: the labels' own size)."""

    images: torch.Tensor
    size: tuple[int, int]
    labels: torch.Tensor


def image_batches(
    model: nn.Module,
    dataset: Any,
    indices: range | list[int],
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "images",
) -> Iterator[Batch]:
    """The data set's items ``indices`` as ``Batch``es of ``batch_size``, padded for ``model``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device, dtype = model_device_dtype(model)
    indices = list(indices)
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        sizes = {tuple(image.shape[-2:]) for image, _ in items}
        if len(sizes) > 1:
            raise ValueError(f"images of one batch differ in size {sorted(sizes)}: use batch_size=1")
        images = torch.stack([image for image, _ in items]).to(device, dtype)
        labels = torch.stack([labels for _, labels in items]).to(device)
        yield Batch(pad_for(model, images), tuple(images.shape[-2:]), labels)


@contextmanager
def inference(model: nn.Module, precision: str = "fp32") -> Iterator[None]:
    """``model`` in eval mode (its mode restored after), no autograd, under ``precision``'s autocast
    ("auto" | "fp32" | "bf16" | "fp16", ``workbench.precision``) on the model's device."""
    device = model_device_dtype(model)[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(resolve_precision(precision, device), device):
            yield
    finally:
        model.train(was_training)


def labels_at(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Logits (B, K, H', W') at the padded input's resolution -> fp32 logits (B, K, h, w) at the
    labels' size: the padding cropped, then resized bilinearly (as the evaluation does)."""
    logits = logits[..., : batch.size[0], : batch.size[1]].float()
    if logits.shape[-2:] != batch.labels.shape[-2:]:
        logits = F.interpolate(logits, size=batch.labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def score(matrix: ConfusionMatrix, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Add the argmax of ``logits`` (B, K, H', W') against the batch's labels to ``matrix``; returns
    the prediction (B, h, w)."""
    prediction = labels_at(logits, batch).argmax(1)
    matrix.update(prediction, batch.labels)
    return prediction
