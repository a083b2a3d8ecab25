"""One registry for every model of the workbench, on top of timm's.

Each variant is a function named after the model, decorated with ``@register(...)``. The decorator
registers it with timm (so ``timm.create_model(name)`` works once ``workbench`` is imported) and
records what the workbench needs besides: the family, the task, and the paper's setting and figures
that ``workbench models`` compares against. Every model it builds carries a timm-style
``pretrained_cfg`` (normalisation, input size, classes, resize interpolation) for that setting, which
is what the Predictor reads. Classifiers also build as timm feature extractors
(``timm.create_model(name, features_only=True, out_indices=...)``) through timm's own builder.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from timm.models import build_model_with_cfg, register_model
from torch import nn

from workbench.config import IMAGENET_MEAN, IMAGENET_STD

# Keyword arguments timm.create_model passes to every entry point; ours take no pretrained config.
_TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


@dataclass(frozen=True)
class PaperFigures:
    """The setting a paper measured a model in and what it reported (None where it reported nothing).

    The model is built with ``num_classes`` and ``build_kwargs`` and its GFLOPs measured on one
    ``input_size`` image; the parameter count uses ``params_kwargs`` instead where the paper counted
    another build (e.g. another data set's classes).
    """

    source: str
    input_size: int
    num_classes: int
    params_m: float | None = None
    gflops: float | None = None
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    params_kwargs: dict[str, Any] | None = None
    note: str = ""

    def build_setting(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, **self.build_kwargs}

    def params_setting(self) -> dict[str, Any]:
        return self.params_kwargs if self.params_kwargs is not None else self.build_setting()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    task: str  # "segmentation" or "classification"
    paper: PaperFigures
    entrypoint: Callable[..., nn.Module]
    pretrained_cfg: dict[str, Any]  # what every model built by ``entrypoint`` carries (a copy each)
    tiny: dict[str, Any] = field(default_factory=dict)  # a few-layer, narrow build for tests
    feature_indices: int | tuple[int, ...] | None = None  # features_only's default out_indices


_MODELS: dict[str, ModelInfo] = {}


def register(
    *,
    family: str,
    task: str,
    paper: PaperFigures,
    tiny: dict[str, Any] | None = None,
    feature_indices: int | tuple[int, ...] | None = None,
) -> Callable:
    """Register a variant's entry point with timm and with the workbench.

    ``tiny``: keyword arguments that shrink the variant (few layers, narrow) with its structure
    otherwise unchanged; the contract tests build every registered model with them.
    ``feature_indices``: the ``out_indices`` a ``features_only=True`` build returns by default (timm's
    convention: an int n is the last n features); None where the model has no feature extractor.
    """

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        cfg = pretrained_cfg(fn.__name__, task, paper)

        @functools.wraps(fn)
        def entrypoint(*args: Any, **kwargs: Any) -> nn.Module:
            if kwargs.get("features_only"):
                return feature_extractor(fn, cfg, feature_indices, *args, **kwargs)
            model = fn(*args, **kwargs)
            model.pretrained_cfg = dict(cfg)
            return model

        _MODELS[fn.__name__] = ModelInfo(
            fn.__name__, family, task, paper, entrypoint, cfg, dict(tiny or {}), feature_indices
        )
        return register_model(entrypoint)

    return decorate


def pretrained_cfg(name: str, task: str, paper: PaperFigures) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for a variant in its paper's setting: ImageNet mean and std (0-1
    scale, as timm writes them), the paper's input size and class count, and the resize interpolation
    of its test pipeline (mmcls: bicubic; mmseg: bilinear)."""
    return {
        "architecture": name,
        "mean": tuple(round(value / 255, 6) for value in IMAGENET_MEAN),
        "std": tuple(round(value / 255, 6) for value in IMAGENET_STD),
        "input_size": (3, paper.input_size, paper.input_size),
        "num_classes": paper.num_classes,
        "interpolation": "bicubic" if task == "classification" else "bilinear",
    }


def feature_extractor(
    build: Callable[..., nn.Module],
    cfg: dict[str, Any],
    feature_indices: int | tuple[int, ...] | None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """timm's ``features_only=True`` for a variant: timm's builder wraps the model in its
    ``FeatureGetterNet``, which prunes what follows the last of ``out_indices`` (and the head) and
    returns ``forward_intermediates``' NCHW maps, as for timm's own ViT."""
    if feature_indices is None:
        raise ValueError(f"{cfg['architecture']!r} has no features_only build; the classifiers have one")
    return build_model_with_cfg(
        build,
        cfg["architecture"],
        pretrained=False,
        pretrained_cfg=cfg,
        feature_cfg=dict(feature_cls="getter", out_indices=feature_indices),
        **drop_timm_factory_kwargs(pretrained, kwargs),
    )


def drop_timm_factory_kwargs(pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove what timm.create_model adds to every call; refuse pretrained=True with a pointer."""
    if pretrained:
        raise ValueError(
            "pretrained=True is not supported: build the model with pretrained=False and load "
            "released weights into it explicitly"
        )
    return {k: v for k, v in kwargs.items() if k not in _TIMM_FACTORY_KWARGS}


# Families in the order of the roadmap; variants keep their registration order within a family.
FAMILIES = ("SETR", "GPViT", "HLG")


def variant_kwargs(variant: dict[str, Any], task: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """A variant's constructor arguments with the drop-path rate of ``task`` (0: ImageNet, 1: dense
    prediction; ``variant["drop_path"]`` holds both), then ``overrides``."""
    args = {k: v for k, v in variant.items() if k != "drop_path"}
    return {**args, "drop_path_rate": variant["drop_path"][task], **overrides}


def pop_keys(kwargs: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Remove ``keys`` from ``kwargs`` and return those present (e.g. head arguments of a segmentor)."""
    return {key: kwargs.pop(key) for key in keys if key in kwargs}


def list_models(task: str | None = None, family: str | None = None) -> list[str]:
    """Names of the registered models, family by family, optionally filtered."""
    ordered = sorted(_MODELS.values(), key=lambda info: FAMILIES.index(info.family))
    return [
        info.name
        for info in ordered
        if (task is None or info.task == task) and (family is None or info.family == family)
    ]


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; a ValueError that suggests close names if it is unknown."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(_MODELS)}")
    return _MODELS[name]


def create_segmentor(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Build a registered segmentor, e.g. ``create_segmentor("setr_pup_vit_large", num_classes=19)``.

    Keyword arguments override the variant's defaults (``img_size``, ``flavour``, ``depth`` ...).
    """
    info = model_info(name)
    if info.task != "segmentation":
        raise ValueError(
            f"{name!r} is a {info.task} model; segmentors are: {', '.join(list_models('segmentation'))}"
        )
    return info.entrypoint(num_classes=num_classes, **overrides)
