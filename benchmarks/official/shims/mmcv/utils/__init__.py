"""mmcv.utils shims: Registry / build_from_cfg, to_2tuple, digit_version, ConfigDict and friends."""

from __future__ import annotations

import collections.abc
import copy
import functools
from itertools import repeat

from packaging.version import parse


class ConfigDict(dict):
    """mmcv's ConfigDict is an attribute-access dict; only used here in isinstance checks."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


class Registry:
    """mmcv.utils.Registry: name -> class, filled by the ``@REG.register_module()`` decorator."""

    def __init__(self, name: str, build_func=None, parent=None, scope=None):
        self._name = name
        self._module_dict: dict[str, type] = {}
        self._build_func = build_func

    @property
    def name(self):
        return self._name

    @property
    def module_dict(self):
        return self._module_dict

    def get(self, key: str):
        return self._module_dict.get(key)

    def __contains__(self, key):
        return key in self._module_dict

    def build(self, cfg, default_args=None):
        if self._build_func is not None:
            return self._build_func(cfg, self, default_args)
        return build_from_cfg(cfg, self, default_args)

    def register_module(self, name=None, force=False, module=None):
        def _register(cls):
            names = [cls.__name__] if name is None else ([name] if isinstance(name, str) else list(name))
            for n in names:
                if not force and n in self._module_dict:
                    raise KeyError(f"{n} is already registered in {self._name}")
                self._module_dict[n] = cls
            return cls

        if module is not None:
            return _register(module)
        return _register


def build_from_cfg(cfg, registry: Registry, default_args=None):
    """mmcv.utils.build_from_cfg: ``registry[cfg.pop('type')](**cfg, **default_args)``."""
    if not isinstance(cfg, dict) or (
        "type" not in cfg and (default_args is None or "type" not in default_args)
    ):
        raise TypeError(f"cfg must be a dict containing the key 'type', got {cfg!r}")
    args = copy.deepcopy(dict(cfg))
    if default_args is not None:
        for key, value in default_args.items():
            args.setdefault(key, value)
    obj_type = args.pop("type")
    if isinstance(obj_type, str):
        obj_cls = registry.get(obj_type)
        if obj_cls is None:
            raise KeyError(f"{obj_type} is not in the {registry.name} registry")
    else:
        obj_cls = obj_type
    return obj_cls(**args)


def _ntuple(n):
    """mmcv/timm ``to_ntuple``: an iterable passes through unchanged, a scalar is repeated n times."""

    def parse(x):
        if isinstance(x, collections.abc.Iterable):
            return x
        return tuple(repeat(x, n))

    return parse


to_1tuple, to_2tuple, to_3tuple, to_4tuple = (_ntuple(i) for i in range(1, 5))
to_ntuple = _ntuple


def digit_version(version_str: str, length: int = 4):
    """mmcv.utils.digit_version: a comparable tuple of ints (pre-releases sort before releases)."""
    version = parse(version_str)
    release = list(version.release)[:length]
    release += [0] * (length - len(release))
    if version.is_prerelease:
        mapping = {"a": -3, "b": -2, "rc": -1}
        val = mapping.get(version.pre[0], -4) if version.pre else -4
        release.extend([val, version.pre[-1] if version.pre else 0])
    elif version.is_postrelease:
        release.extend([1, version.post])
    else:
        release.extend([0, 0])
    return tuple(release)


def deprecated_api_warning(name_dict, cls_name=None):
    """mmcv's decorator that renames deprecated keyword arguments; the official files only import it."""

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in name_dict.items():
                if old in kwargs:
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper

    return decorator
