"""Reading checkpoint files safely: safetensors, numpy .npz, and torch pickles with ``weights_only``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# Containers the released checkpoints wrap their weights in: mmcv ("state_dict"), DeiT / timm
# training scripts ("model"), EMA wrappers ("state_dict_ema" is left alone: it is a second copy).
_CONTAINERS = ("state_dict", "model", "module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from ``path``; a ValueError that names the file and says what is wrong.

    ``.pth`` / ``.pt`` / ``.bin`` files go through ``torch.load(weights_only=True)``: a pickle that
    would run code or build arbitrary objects is refused, never executed.
    """
    path = Path(path)
    if path.is_dir():  # a workbench checkpoint, or a run folder (its newest checkpoint)
        from workbench.engine.checkpoint import WEIGHTS, resolve

        return read_state_dict(resolve(path) / WEIGHTS)
    if not path.is_file():
        raise ValueError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return {key: torch.from_numpy(np.array(arrays[key])) for key in arrays.files}
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refused to load {path}: it holds pickled objects other than tensors (possibly code). Only "
            f"weights are read (torch.load(weights_only=True)); convert it to safetensors in a trusted "
            f"environment. Detail: {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, SafetensorError, ValueError) as error:
        raise ValueError(f"cannot read {path} (truncated or not a checkpoint?): {error}") from error
    return unwrap(loaded, path)


def unwrap(loaded: object, source: object = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a (possibly nested) checkpoint container."""
    while isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        inner = next((loaded[k] for k in _CONTAINERS if k in loaded), None)
        if inner is None:
            raise ValueError(f"{source} holds no tensors (top-level keys: {sorted(loaded)[:10]})")
        loaded = inner
    if not isinstance(loaded, dict):
        raise ValueError(f"{source} is a {type(loaded).__name__}, not a state dict")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
