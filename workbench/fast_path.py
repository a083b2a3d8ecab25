"""The compile setting of inference, in one place for the Predictor, the app and bench.

    choice = resolve_compile("auto", "cpu")   # Compile(False, "auto: on a CPU ... eager")
    forward = compiled(model, choice)         # torch.compile'd model, or the model itself

``compile`` is "auto" | "yes" | "no". "yes" runs the model's forward through ``torch.compile``
(inductor): element-wise work around the matmuls and convolutions is fused, shapes are specialised
first and made dynamic at the second input size (torch's ``dynamic=None``), so photos of other sizes
recompile at most once more. Weights stay inputs of the compiled graph (no freezing): a model trained
further, or loaded with other weights, predicts with its current weights. Compiled artefacts go to
inductor's cache (``TORCHINDUCTOR_CACHE_DIR``), which later processes reuse.

"auto" compiles on a CUDA GPU (inductor's fused kernels) and runs eager on a CPU: measured on 2 cores at
512² in bf16 (``docs/fast_path.md``), the compiled forward is 0.85-1.07x eager across GPViT, SETR,
SETR-HLG and timm's ViT-B, whose time is 80-94% in oneDNN's convolutions and matmuls and PyTorch's
flash attention, which inductor calls unchanged; its first call costs 25 s to 3 min (3-20 s in a later
process, from inductor's cache). Ask for "yes" to use it anyway (a long-lived process, one image size).
Explain sessions always run eager: their probes read q and k inside the attention modules.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import torch
from torch import nn

COMPILE_CHOICES = ("auto", "yes", "no")


@dataclass(frozen=True)
class Compile:
    """A resolved compile setting: ``enabled`` and why."""

    enabled: bool
    reason: str

    def __str__(self) -> str:
        return f"{'compiled' if self.enabled else 'eager'} ({self.reason})"


def resolve_compile(choice: str | bool, device: torch.device | str) -> Compile:
    """Whether to compile inference on ``device`` for ``choice`` ("auto" decided here), and why; "yes"
    on a CPU without a C++ compiler is refused in one line (inductor builds its CPU kernels with one)."""
    choice = {True: "yes", False: "no"}.get(choice, choice)
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    device = torch.device(device)
    if choice == "no":
        return Compile(False, "asked for eager")
    if choice == "yes":
        if device.type == "cpu" and not has_cpp_compiler():
            raise ValueError(
                "compile='yes' on a CPU needs a C++ compiler (g++ or c++ on PATH) for inductor's kernels"
            )
        return Compile(True, "asked for")
    if device.type == "cuda":
        return Compile(True, "auto: a CUDA GPU, inductor's fused kernels")
    return Compile(
        False,
        "auto: eager on a CPU, where the compiled forward measured 0.85-1.07x eager at 512² for 25 s to "
        "3 min of compile (docs/fast_path.md); compile='yes' to use it",
    )


def has_cpp_compiler() -> bool:
    """Whether a C++ compiler is on PATH (what inductor's CPU backend builds its kernels with)."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def compiled(model: nn.Module, choice: Compile) -> nn.Module:
    """``model`` through ``torch.compile`` when ``choice`` is enabled, else ``model`` itself. The
    compiled module shares the model's parameters and calls its forward (with its keywords)."""
    if not choice.enabled:
        return model
    return torch.compile(model, dynamic=None)
