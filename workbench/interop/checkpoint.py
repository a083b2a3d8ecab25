"""The workbench checkpoint format: safetensors weights + the YAML config + a small training-state file.

A checkpoint is a directory ``<work_dir>/checkpoints/iter_<step>/`` written under a temporary name
and renamed into place, so an interrupted save never leaves a broken checkpoint; ``latest`` names
the newest complete one. Training state is read back with ``torch.load(weights_only=True)``.
Weights load through ``workbench.interop.load_pretrained`` (format ``"workbench"``), like every
other layout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from workbench.config import Config, load_config, save_config
from workbench.interop.files import torch_load

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
    """The newest complete checkpoint of a run folder, or None."""
    pointer = Path(work_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    target = pointer.parent / pointer.read_text().strip()
    return target if (target / STATE).is_file() else None


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a workbench checkpoint, its weights file, or a run folder with one."""
    path = Path(path)
    if path.is_file():
        return path.name in (WEIGHTS, EMA_WEIGHTS) and (path.parent / CONFIG).is_file()
    return path.is_dir() and ((path / WEIGHTS).is_file() or latest_checkpoint(path) is not None)


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


def weights_file(path: str | Path, ema: bool = False) -> Path:
    """The checkpoint's ``model.safetensors``, or its ``ema.safetensors`` (which must exist)."""
    folder = resolve(path)
    if ema and not (folder / EMA_WEIGHTS).is_file():
        raise ValueError(
            f"checkpoint {folder} has no EMA weights ({EMA_WEIGHTS}): it was trained without ema"
        )
    return folder / (EMA_WEIGHTS if ema else WEIGHTS)


def load_state(path: str | Path) -> dict[str, Any]:
    """The training state (step, optimizer, scaler, RNG states) of a checkpoint or run folder."""
    return torch_load(resolve(path) / STATE)


def checkpoint_config(path: str | Path) -> Config:
    """The config the checkpoint (or the run's newest checkpoint) was trained with."""
    path = resolve(path) / CONFIG
    if not path.is_file() or not path.read_text().strip():  # an empty file would load as the defaults
        raise ValueError(f"{path} is missing or empty: the checkpoint's config was not saved completely")
    return load_config(path)


def checkpoints(work_dir: str | Path) -> list[Path]:
    """The complete ``iter_<step>`` checkpoints of a run folder, oldest first."""
    folder = Path(work_dir) / "checkpoints"
    return sorted(p for p in folder.glob("iter_*") if (p / STATE).is_file()) if folder.is_dir() else []


def prune_checkpoints(work_dir: str | Path, keep_last: int, keep: Sequence[Path] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints and those in ``keep``; 0 keeps all.
    Returns the deleted folders."""
    found = checkpoints(work_dir)
    if keep_last <= 0:
        return []
    kept = {p.resolve() for p in (*found[-keep_last:], *keep)}
    deleted = [p for p in found if p.resolve() not in kept]
    for folder in deleted:
        shutil.rmtree(folder)
    return deleted


def remove_staging(work_dir: str | Path) -> list[Path]:
    """Delete the ``.saving-*`` folders a killed save left behind; returns them."""
    folder = Path(work_dir) / "checkpoints"
    stale = sorted(folder.glob(".saving-*")) if folder.is_dir() else []
    for staging in stale:
        shutil.rmtree(staging, ignore_errors=True)
    return stale
