"""A second device on a machine without one: tensors that say they live on ``meta`` but carry real
values, so a whole analysis runs and every place where a CPU tensor meets a model's tensor shows.

Why not the ready-made ways (checked on this CPU-only torch build):

- a model moved to ``meta``: torch does refuse some meta + CPU mixes (``addmm``: "Tensor on device
  meta is not on the expected device cpu"), but meta tensors have no values, so anything that reads
  one (``.item()``, ``nonzero``, a ``max() > 0`` test, the analyses' index arithmetic) fails first
  and most of an analysis never runs;
- ``FakeTensorMode``: it does make fake ``cuda`` tensors without a GPU and refuses device mixes, but
  fake tensors have no values either (data-dependent operations raise), and a fake ``cuda`` device
  sends ``scaled_dot_product_attention`` to CUDA kernel selection, which needs a real GPU.

Here a ``TorchDispatchMode`` sees every aten op: it runs the op on the CPU values, hands back results
on ``meta`` when an input was there (or the op was asked for ``device="meta"``: ``.to``, factories),
and refuses, as CUDA does, an op that mixes them with CPU tensors, 0-dim CPU tensors excepted (CUDA
takes those as scalars). It is stricter than CUDA in one case: indexing with CPU indices, which CUDA
accepts through a hidden copy and sync. ``.numpy()`` of a meta tensor fails, as of a CUDA tensor.
Two gaps of torch's are filled inside the block: ``torch.tensor`` and ``torch.as_tensor`` build
their tensors without dispatch (a ``device="meta"`` one would have no values), so they build on the
CPU and move; torch has no autocast for ``meta``, so ``torch.autocast`` and
``torch.is_autocast_enabled`` treat it as the CPU (model code calls them with its tensors' device).

    with Elsewhere() as elsewhere:
        model.to(ELSEWHERE)             # the parameters now live "elsewhere", with their values
        result = analysis(model, cpu_images)
    assert not elsewhere.mixes
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

ELSEWHERE = torch.device("meta")


class ElsewhereTensor(torch.Tensor):
    """A tensor that reports ``ELSEWHERE`` as its device and keeps its values in ``values`` (CPU)."""

    values: torch.Tensor

    @staticmethod
    def __new__(cls, values: torch.Tensor) -> ElsewhereTensor:
        return torch.Tensor._make_wrapper_subclass(
            cls,
            values.shape,
            strides=values.stride(),
            storage_offset=values.storage_offset(),
            dtype=values.dtype,
            device=ELSEWHERE,
            requires_grad=values.requires_grad,
        )

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values

    def __repr__(self) -> str:
        return f"ElsewhereTensor({self.values!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a tensor from elsewhere outside an Elsewhere() block")


class _Autocast(torch.autocast):
    """``torch.autocast`` that autocasts the stand-in device as the CPU."""

    def __init__(self, device_type: str, *args, **kwargs) -> None:
        super().__init__(_autocast_type(device_type), *args, **kwargs)


def _autocast_type(device_type: str) -> str:
    return "cpu" if device_type == ELSEWHERE.type else device_type


def _built_on_the_cpu(build):
    """``torch.tensor`` or ``torch.as_tensor`` that builds a tensor for the stand-in on the CPU first."""

    def built(data, *args, device=None, **kwargs):
        if device is None or torch.device(device) != ELSEWHERE:
            return build(data, *args, device=device, **kwargs)
        return build(data, *args, **kwargs).to(ELSEWHERE)

    return built


def _asks_for(kwargs: dict, device_type: str) -> bool:
    return kwargs.get("device") is not None and torch.device(kwargs["device"]).type == device_type


class Elsewhere(TorchDispatchMode):
    """Runs ops on ``ElsewhereTensor`` values; ``mixes`` lists the ops that mixed them with CPU tensors
    (each also raises, as CUDA would, in case the caller swallows the error)."""

    def __init__(self) -> None:
        super().__init__()
        self.mixes: list[str] = []
        self._patches = contextlib.ExitStack()

    def __enter__(self) -> Elsewhere:
        is_enabled = torch.is_autocast_enabled
        for name in ("tensor", "as_tensor"):
            self._patches.enter_context(mock.patch(f"torch.{name}", _built_on_the_cpu(getattr(torch, name))))
        self._patches.enter_context(mock.patch("torch.autocast", _Autocast))
        self._patches.enter_context(
            mock.patch("torch.is_autocast_enabled", lambda *device: is_enabled(*map(_autocast_type, device)))
        )
        return super().__enter__()

    def __exit__(self, *exc_info) -> None:
        super().__exit__(*exc_info)
        self._patches.close()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
        elsewhere = any(isinstance(tensor, ElsewhereTensor) for tensor in tensors)
        here = [t for t in tensors if not isinstance(t, ElsewhereTensor) and t.dim() > 0]
        if any(t.device == ELSEWHERE for t in here):
            raise RuntimeError(
                f"{func} got a meta tensor without values: the stand-in missed how it was made"
            )
        # copy_ between devices is legal in torch (it is how .to() writes into existing storage).
        if elsewhere and here and func.overloadpacket is not torch.ops.aten.copy_:
            self.mixes.append(f"{func} with CPU tensors of shapes {[tuple(t.shape) for t in here]}")
            raise RuntimeError(f"Expected all tensors to be on the same device: {self.mixes[-1]}")
        to_elsewhere = _asks_for(kwargs, ELSEWHERE.type)
        to_cpu = _asks_for(kwargs, "cpu")
        if to_elsewhere:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        unwrapped_args, unwrapped_kwargs = tree_map(
            lambda value: value.values if isinstance(value, ElsewhereTensor) else value, (args, kwargs)
        )
        out = func(*unwrapped_args, **unwrapped_kwargs)
        written = func._schema.arguments[0].alias_info if func._schema.arguments else None
        if written is not None and written.is_write:  # in place: the caller's tensor, where it was
            return args[0]
        if to_elsewhere or (elsewhere and not to_cpu):
            return tree_map(
                lambda value: ElsewhereTensor(value) if isinstance(value, torch.Tensor) else value, out
            )
        return out


def is_elsewhere(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, ElsewhereTensor)
