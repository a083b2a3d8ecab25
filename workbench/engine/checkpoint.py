"""Checkpoints: safetensors weights + the YAML config + a small training-state file.

A checkpoint is a directory ``<work_dir>/checkpoints/iter_<step>/`` written under a temporary name
and renamed into place, so an interrupted save never leaves a broken checkpoint; ``latest`` names
the newest complete one. Training state is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workbench.config import Config, load_config, save_config

WEIGHTS, EMA_WEIGHTS, STATE, CONFIG = "model.safetensors", "ema.safetensors", "state.pt", "config.yaml"


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_weights(folder: str | Path, model: nn.Module, cfg: Config, ema: nn.Module | None = None) -> None:
    """``model.safetensors`` (+ ``ema.safetensors``) and ``config.yaml`` in ``folder``: all that
    ``load_weights`` and ``Predictor.from_checkpoint`` need."""
    folder = Path(folder)
    save_file(_weights(model), str(folder / WEIGHTS))
    if ema is not None:
        save_file(_weights(ema), str(folder / EMA_WEIGHTS))
    save_config(cfg, folder / CONFIG)


def save_checkpoint(
    work_dir: str | Path,
    step: int,
    model: nn.Module,
    cfg: Config,
    state: dict[str, Any],
    ema: nn.Module | None = None,
) -> Path:
    """Write ``iter_<step>`` atomically and point ``latest`` at it; returns its path."""
    folder = Path(work_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"iter_{step:07d}"
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".saving-"))
    save_weights(staging, model, cfg, ema)
    torch.save({**state, "step": step}, staging / STATE)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    pointer = folder / ".latest.tmp"
    pointer.write_text(target.name)
    os.replace(pointer, folder / "latest")
    return target


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    pointer = Path(work_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    target = pointer.parent / pointer.read_text().strip()
    return target if (target / STATE).is_file() else None


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, its weights file, or a work dir (-> its latest checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS, EMA_WEIGHTS):
        path = path.parent
    if (path / WEIGHTS).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise ValueError(f"{path} is not a checkpoint (a folder with {WEIGHTS}, {CONFIG}) nor a run with one")
    return found


def load_weights(model: nn.Module, path: str | Path, ema: bool = False) -> None:
    """Load weights strictly; on any mismatch, a ValueError lists the keys and shapes that differ."""
    folder = resolve(path)
    weights = load_file(str(folder / (EMA_WEIGHTS if ema else WEIGHTS)))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    )
    if missing or unexpected or shapes:

        def listing(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        raise ValueError(
            f"checkpoint {folder} does not fit {type(model).__name__}: "
            f"missing {len(missing)} [{listing(missing)}]; unexpected {len(unexpected)} [{listing(unexpected)}]; "
            f"mis-shaped {len(shapes)} [{listing(shapes)}]"
        )
    model.load_state_dict(weights)


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(resolve(path) / STATE, map_location="cpu", weights_only=True)


def checkpoint_config(path: str | Path) -> Config:
    return load_config(resolve(path) / CONFIG)
