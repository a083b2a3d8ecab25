"""Reading checkpoint files safely: safetensors, numpy .npz, and torch pickles with ``weights_only``."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
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
    if not path.is_file():
        raise ValueError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        with _read_errors(path):
            return load_file(str(path))
    if path.suffix == ".npz":
        with _read_errors(path), np.load(path, allow_pickle=False) as arrays:
            return {key: torch.from_numpy(np.array(arrays[key])) for key in arrays.files}
    return unwrap(torch_load(path), path)


def torch_load(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; unreadable or unsafe files give a ValueError."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    with path.open("rb") as file:
        magic = file.read(2)
    if magic not in (b"PK", b"\x80\x02"):  # torch's zip format, or its legacy pickle (protocol 2)
        raise ValueError(f"cannot read {path} (truncated or not a checkpoint?): it is not a torch.save file")
    with _read_errors(path):
        return torch.load(path, map_location="cpu", weights_only=True)


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Turn what a truncated, empty, foreign or unsafe file raises into a one-line ValueError."""
    try:
        yield
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):  # not a pickle at all (e.g. a text file)
            raise ValueError(
                f"cannot read {path} (truncated or not a checkpoint?): {first_line(error)}"
            ) from error
        raise ValueError(
            f"refused to load {path}: it holds pickled objects other than tensors (possibly code). Only "
            f"weights are read (torch.load(weights_only=True)); convert it to safetensors in a trusted "
            f"environment. Detail: {first_line(error)}"
        ) from error
    except Exception as error:  # damaged or foreign bytes make the parsers raise almost anything
        raise ValueError(
            f"cannot read {path} (truncated or not a checkpoint?): {first_line(error)}"
        ) from error


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


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
