"""Parameter and FLOP counts, measured on the meta device (no weights allocated, no arithmetic done)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from workbench.models.registry import model_info


def build_on_meta(name: str, **kwargs) -> nn.Module:
    """Build a registered model with its parameters on the meta device."""
    with torch.device("meta"):
        return model_info(name).entrypoint(**kwargs)


def count_params(model: nn.Module) -> int:
    """Learnable parameters (buffers such as BN running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gmacs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> float:
    """Giga multiply-adds of one forward pass in eval mode on one image.

    torch's FlopCounterMode counts 2 FLOPs per multiply-add; the papers' "FLOPs" are multiply-adds,
    so the count is halved. Convolutions, linear layers and attention matmuls are counted;
    normalisation, activations and interpolation are not (the convention of fvcore and mmcv).
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    parameter = next(model.parameters())
    images = torch.zeros(1, in_chans, height, width, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()
    # Not under no_grad: the counter's module tracker then fails on parameters used via expand().
    with FlopCounterMode(display=False) as counter:
        model(images)
    model.train(was_training)
    return counter.get_total_flops() / 2e9
