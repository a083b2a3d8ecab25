"""Process-group helpers: the same code runs alone, or under ``torchrun`` with DDP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import nn


def launched_by_torchrun() -> bool:
    """Whether this process is one of a torchrun group (torchrun sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when launched by torchrun."""
    world = int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        if world > 1:
            torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


@contextmanager
def process_group() -> Iterator[tuple[int, int, torch.device]]:
    """``setup()`` for the span of a call: a process group it creates is destroyed on exit, so a
    library call (``train`` in a notebook) leaves the process as it found it."""
    created = launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized()
    rank, world, device = setup()
    try:
        yield rank, world, device
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true in any process (the flag itself when running alone)."""
    if not dist.is_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch, for CPU process groups
    (gloo), where ``nn.SyncBatchNorm`` refuses to run. Two passes (mean, then centred variance), each
    one autograd-aware all-reduce, so the result matches BatchNorm over the concatenated batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        totals = dist_nn.all_reduce(torch.cat([x.sum(dims), count]))
        total_count = totals[-1]
        mean = totals[:-1] / total_count
        centred = x - mean.view(1, -1, 1, 1)
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / total_count
        with torch.no_grad():
            momentum = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            unbiased = var.detach() * total_count / (total_count - 1)
            self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
            self.num_batches_tracked += 1
        normalised = centred / torch.sqrt(var + self.eps).view(1, -1, 1, 1)
        return normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d synchronised across processes: ``nn.SyncBatchNorm`` on accelerators,
    ``CPUSyncBatchNorm`` on the CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = CPUSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model
