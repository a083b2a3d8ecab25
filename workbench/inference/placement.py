"""Where a predictor's model runs: as the caller gave it, or an eval-mode copy where asked otherwise.

The predictors never move, re-lay-out or switch the caller's model (segment-anything's predictor reads
its model's device the same way): a notebook that trains a model and predicts with it between
epochs keeps training the same, untouched model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from workbench.precision import model_device_dtype, resolve_device, use_channels_last


def as_given(
    model: nn.Module, device: torch.device | str | None, channels_last: bool | None = None
) -> tuple[nn.Module, str]:
    """``model`` itself when it is in eval mode, on ``device`` (None: wherever it is) and in the asked
    layout (None: as it is); otherwise an eval-mode copy made so, and the reason for the copy."""
    given = model_device_dtype(model)[0]
    target = given if device is None else _indexed(resolve_device(device))
    reasons = []
    if model.training:
        reasons.append("the model is in training mode")
    if target != given:
        reasons.append(f"the model is on {given}, {target} was asked for")
    if channels_last is not None and _convolutions(model) and channels_last != is_channels_last(model):
        reasons.append(f"channels_last={channels_last} differs from the model's layout")
    if not reasons:
        return model, ""
    own = copy.deepcopy(model).to(target).eval()
    if channels_last is not None:
        use_channels_last(own, channels_last)
    return own, f"works on its own copy: {'; '.join(reasons)}"


def _convolutions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def is_channels_last(model: nn.Module) -> bool:
    """Whether every convolution weight of ``model`` is laid out channels-last (False without any)."""
    convs = _convolutions(model)
    return bool(convs) and all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)


def _indexed(device: torch.device) -> torch.device:
    """ "cuda" -> "cuda:N" of the current GPU, as a model's parameters report their device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
