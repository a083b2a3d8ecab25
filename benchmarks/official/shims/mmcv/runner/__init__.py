"""mmcv.runner shims: BaseModule and the fp16 decorators (no-ops unless ``fp16_enabled``)."""

import functools

from .base_module import BaseModule, ModuleDict, ModuleList, Sequential


def auto_fp16(apply_to=None, out_fp32=False):
    """mmcv's ``@auto_fp16``: casts inputs to fp16 only when the module's ``fp16_enabled`` is True,
    which mmcv's Fp16OptimizerHook / wrap_fp16_model set; at plain inference it is False, so this is
    the identity (mixed precision for benchmarking is applied from outside, e.g. torch.autocast)."""

    def decorator(func):
        @functools.wraps(func)
        def wrapper(self, *args, **kwargs):
            if getattr(self, "fp16_enabled", False):
                raise NotImplementedError("mmcv fp16 casting is not emulated; use torch.autocast instead")
            return func(self, *args, **kwargs)

        return wrapper

    return decorator


force_fp32 = auto_fp16  # the same: identity while fp16_enabled is False

__all__ = ["BaseModule", "ModuleDict", "ModuleList", "Sequential", "auto_fp16", "force_fp32"]
