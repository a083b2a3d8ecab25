"""The machine's own limits, measured where the benchmark runs, and what each model achieves of them.

    limits = measure_roofline("bf16")          # Roofline(precision, matmul_gflops, conv_gflops)
    achieved_gflops(gmacs=144.4, latency_ms=1200.0)   # 240.7: 2 FLOPs a multiply-add

A model's arithmetic runs as matmuls and convolutions; the fastest the machine does either (a 2048²
matmul, a 512-channel 3x3 convolution on a 64x64 map, channels-last) is the ceiling its achieved
GFLOP/s is read against. A model far below it spends its time elsewhere: norms, activations, copies.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from workbench.precision import DTYPES


@dataclass(frozen=True)
class Roofline:
    """GFLOP/s of a large matmul and a large convolution at ``precision`` on the device."""

    precision: str
    matmul_gflops: float
    conv_gflops: float

    @property
    def best(self) -> float:
        return max(self.matmul_gflops, self.conv_gflops)


def _median_seconds(run, repeats: int, device: str) -> float:
    run()  # warm-up: kernel selection, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure_roofline(
    precision: str = "fp32",
    device: str = "cpu",
    size: int = 2048,
    channels: int = 512,
    spatial: int = 64,
    repeats: int = 5,
) -> Roofline:
    """Median GFLOP/s of a ``size``² matmul and of a ``channels``-wide 3x3 convolution on a
    ``spatial``² map (channels-last), in ``precision``'s dtype on ``device``."""
    dtype = DTYPES[precision]
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    matmul = 2 * size**3 / _median_seconds(lambda: a @ b, repeats, device) / 1e9
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, dtype)
    conv = conv.to(memory_format=torch.channels_last)
    maps = torch.randn(1, channels, spatial, spatial, device=device, dtype=dtype)
    maps = maps.contiguous(memory_format=torch.channels_last)
    flops = 2 * channels * channels * 9 * spatial * spatial
    return Roofline(precision, matmul, flops / _median_seconds(lambda: conv(maps), repeats, device) / 1e9)


def achieved_gflops(gmacs: float, latency_ms: float, batch: int = 1) -> float:
    """GFLOP/s of ``batch`` forwards of ``gmacs`` giga multiply-adds each in ``latency_ms``."""
    return 2 * gmacs * batch / (latency_ms / 1000)
