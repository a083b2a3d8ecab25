"""Precision and memory-layout settings, in one place for training, evaluation, the Predictor and bench.

    choice = resolve_precision("auto", "cpu")      # Precision("bf16", "auto: the CPU has native bf16 ...")
    with autocast(choice, device):                 # torch.autocast, or nothing for fp32
        logits = model(images)
    use_channels_last(model)                       # convolutions in channels-last (inference)

``precision`` is "auto" | "fp32" | "bf16" | "fp16" (mixed precision by ``torch.autocast``: weights
stay fp32; "none" is the old spelling of fp32 in run configs). "auto" picks bf16 on a CUDA GPU that
supports it and on a CPU with native bf16 instructions (AVX512-BF16 or AMX), where bf16 matmuls run
about twice as fast (GPViT-L1 at 512² on 2 cores: ~650 ms fp32, ~300 ms bf16); fp32 elsewhere, where
bf16 is emulated and slower. ``Precision.reason`` says why. Training runs and their evaluations take
their precision from the config's ``amp`` through ``run_precision``, which keeps CPU training fp32
under "auto" (as before these settings, when autocast was used on CUDA only). Attention
probabilities on the explicit (explain) path are computed in fp32 whatever the precision
(``workbench.models.explain.attention_probs``).

Channels-last (``use_channels_last``) stores the 4-D convolution weights as (O, kh, kw, I), so the
convolutions of the stems and heads run oneDNN's channels-last kernels, and every convolution output
stays channels-last (a flatten to tokens then needs no copy). It is an inference setting (the
Predictor's default): GPViT-L1 UperNet at 512² on 2 cores ran faster with it in fp32 and bf16 (the
figures in ``docs/benchmarks.md``). Training keeps the default layout: a resumed optimizer state is
stored contiguous, and fused optimizers expect each state tensor laid out as its parameter.

``torch.compile`` is the other half of the inference fast path, with its own setting
(``workbench.fast_path``: "auto" compiles on CUDA and runs eager on a CPU, where it measured no faster).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALIASES = {"none": "fp32"}  # run configs written before precision settings said amp: none


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` ("fp32", "bf16" or "fp16") and why it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]


def cpu_has_native_bf16() -> bool:
    """True where the CPU runs bf16 matmuls natively (oneDNN's check: AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """The precision to run on ``device`` for ``precision`` ("auto" decided here), and why."""
    precision = ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        return Precision(precision, "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto: the CUDA GPU supports bf16")
        return Precision("fp32", "auto: the CUDA GPU lacks bf16")
    if device.type == "cpu" and cpu_has_native_bf16():
        return Precision("bf16", "auto: the CPU has native bf16 (AVX512-BF16 or AMX), bf16 is faster")
    return Precision("fp32", f"auto: no native bf16 on {device.type}, bf16 would be slower")


def run_precision(precision: str, device: torch.device | str) -> Precision:
    """The precision of a training run (and its evaluations) from its config's ``amp``: as
    ``resolve_precision``, except that "auto" trains fp32 on a CPU (bf16 is faster there, but its
    effect on the accuracy of trained models is not measured yet; ask for "bf16" to use it)."""
    chosen = resolve_precision(precision, device)
    on_cpu = torch.device(device).type == "cpu"
    if ALIASES.get(precision, precision) == "auto" and on_cpu:
        return Precision("fp32", "auto: training on a CPU stays fp32 (ask for bf16 to use it)")
    if chosen.name == "fp16" and on_cpu:  # the GPU recipes' fp16 (with loss scaling) has no CPU fast path
        return Precision("fp32", "fp16 is a CUDA setting: a CPU trains fp32 (ask for bf16 to use it)")
    return chosen


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where ``model`` runs and what its floating inputs must be: the device of its first parameter and
    the dtype of its first floating parameter (no parameters: the CPU and the default dtype). Functions
    that run a model move their inputs with ``inputs.to(*model_device_dtype(model))``."""
    parameters = list(model.parameters())
    device = parameters[0].device if parameters else torch.device("cpu")
    dtype = next((p.dtype for p in parameters if p.is_floating_point()), torch.get_default_dtype())
    return device, dtype


@contextlib.contextmanager
def autocast(precision: Precision, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast`` to ``precision`` on ``device``'s type; nothing for fp32."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=precision.dtype, enabled=precision.name != "fp32"):
        yield


def use_channels_last(model: nn.Module, enabled: bool = True) -> bool:
    """Lay out ``model``'s 4-D weights channels-last (in place) when ``enabled`` and the model has
    convolutions; True when it did. ``enabled=False`` restores the default (contiguous) layout."""
    has_conv = any(isinstance(module, nn.Conv2d | nn.ConvTranspose2d) for module in model.modules())
    model.to(memory_format=torch.channels_last if enabled and has_conv else torch.contiguous_format)
    return enabled and has_conv


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` checked ("cpu", "cuda", "cuda:N"; CUDA refused without a GPU), None: the GPU if any."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but no CUDA GPU is available; use device='cpu'"
        )
    return device
