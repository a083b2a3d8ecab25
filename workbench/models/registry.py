"""One registry for every model of the workbench, on top of timm's.

Each variant is a function named after the model, decorated with ``@register(...)``. The decorator
registers it with timm (so ``timm.create_model(name)`` works once ``workbench`` is imported) and
records what the workbench needs besides: the family, the task, and the paper's setting and figures
that ``workbench models`` compares against. Every model it builds carries a complete timm
``pretrained_cfg`` for that setting (normalisation, input size, crop, classes, resize interpolation,
first conv and classifier, licence, paper), which is what the Predictor reads, also registered with
timm (``timm.models.get_pretrained_cfg(name)``). Every model also builds as a timm feature extractor
(``timm.create_model(name, features_only=True, out_indices=...)``) through timm's own builder.

``pretrained=True`` loads released weights through a loader that ``workbench.interop`` installs on
import (``set_pretrained_loader``): the models layer sits below interop and cannot import it. timm's
``pretrained_cfg_overlay=dict(file=PATH)`` loads a local file instead, and a tag
(``timm.create_model("setr_pup_vit_base.jx_vit_base_p16_384", pretrained=True)``) picks a release.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from timm.models import PretrainedCfg, build_model_with_cfg, register_model
from torch import nn

from workbench.config import IMAGENET_MEAN, IMAGENET_STD

# Resolves what pretrained=True asks for (the model's pretrained_cfg, with any file= overlay; timm's
# tag or None; a download folder or None) to a function loading those weights into a built model.
# Raises before anything is built if the weights cannot be had. workbench.interop installs it.
PretrainedLoader = Callable[[dict[str, Any], str | None, str | None], Callable[[nn.Module], Any]]
_PRETRAINED_LOADER: list[PretrainedLoader] = []


def set_pretrained_loader(loader: PretrainedLoader) -> None:
    """Install what ``pretrained=True`` calls (``workbench.interop`` does on import)."""
    _PRETRAINED_LOADER[:] = [loader]


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
    feature_indices: int | tuple[int, ...]  # features_only's default out_indices
    tiny: dict[str, Any] = field(default_factory=dict)  # a few-layer, narrow build for tests


_MODELS: dict[str, ModelInfo] = {}


def register(
    *,
    family: str,
    task: str,
    paper: PaperFigures,
    feature_indices: int | tuple[int, ...],
    tiny: dict[str, Any] | None = None,
) -> Callable:
    """Register a variant's entry point with timm and with the workbench.

    ``tiny``: keyword arguments that shrink the variant (few layers, narrow) with its structure
    otherwise unchanged; the contract tests build every registered model with them.
    ``feature_indices``: the ``out_indices`` a ``features_only=True`` build returns by default (timm's
    convention: an int n is the last n features).
    """

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        default_cfg = pretrained_cfg(name, family, task, paper)

        @functools.wraps(fn)
        def entrypoint(
            pretrained: bool = False,
            pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None = None,
            pretrained_cfg_overlay: dict[str, Any] | None = None,
            cache_dir: str | None = None,
            **kwargs: Any,
        ) -> nn.Module:
            model_cfg, tag = _model_cfg(default_cfg, pretrained_cfg, pretrained_cfg_overlay)
            build = _pretrained_build(fn, model_cfg, tag, cache_dir) if pretrained else fn
            if kwargs.get("features_only"):
                return feature_extractor(build, model_cfg, feature_indices, **kwargs)
            model = build(**kwargs)
            model.pretrained_cfg = model_cfg
            return model

        _MODELS[name] = ModelInfo(
            name, family, task, paper, entrypoint, default_cfg, feature_indices, dict(tiny or {})
        )
        # timm reads a model's cfgs from its module's ``default_cfgs`` when it registers the model.
        vars(sys.modules[fn.__module__]).setdefault("default_cfgs", {})[name] = dict(default_cfg)
        return register_model(entrypoint)

    return decorate


# Per family, timm's cfg entries: the official repository (licence from its LICENSE file: SETR's
# MIT covers HLG, released in it; GPViT's Apache 2.0), the paper, the backbone's first conv (where
# timm adapts in_chans) and the classifier's pooled map at 224 (GPViT: stride 8, HLG: 32).
FAMILY_CFGS: dict[str, dict[str, Any]] = {
    "SETR": dict(
        license="mit",
        origin_url="https://github.com/fudan-zvg/SETR",
        paper_ids="arXiv:2012.15840",
        paper_name="Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers",
        first_conv="patch_embed.proj",
    ),
    "GPViT": dict(
        license="apache-2.0",
        origin_url="https://github.com/ChenhongyiYang/GPViT",
        paper_ids="arXiv:2212.06795",
        paper_name="GPViT: A High Resolution Non-Hierarchical Vision Transformer with Group Propagation",
        first_conv="patch_embed.stem.0",
        pool_size=(28, 28),
    ),
    "HLG": dict(
        license="mit",
        origin_url="https://github.com/fudan-zvg/SETR",
        paper_ids="arXiv:2207.09339",
        paper_name="Vision Transformers: From Semantic Segmentation to Dense Prediction",
        first_conv="stem.0.0",
        pool_size=(7, 7),
    ),
}


def pretrained_cfg(name: str, family: str, task: str, paper: PaperFigures) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for a variant in its paper's setting: ImageNet mean and std (0-1
    scale, as timm writes them), the paper's input size and class count, any input size (no fixed
    position grid: every model resamples or computes its positions), the test pipeline's resize
    (classifiers as the GPViT and HLG ImageNet evaluations: bicubic, short side 256 then a 224 centre
    crop, 0.875; segmentors as mmseg: bilinear, the whole image) and the family's entries. A
    segmentor's first conv is its backbone's and its classifier the decode head's; it has no pool."""
    classifier = task == "classification"
    family_cfg = dict(FAMILY_CFGS[family])
    if classifier:
        family_cfg["classifier"] = "head"
    else:
        family_cfg.pop("pool_size", None)
        family_cfg.update(
            first_conv=f"backbone.{family_cfg['first_conv']}", classifier="decode_head.classifier"
        )
    return {
        "architecture": name,
        "input_size": (3, paper.input_size, paper.input_size),
        "fixed_input_size": False,
        "interpolation": "bicubic" if classifier else "bilinear",
        "crop_pct": 0.875 if classifier else 1.0,
        "crop_mode": "center",
        "mean": tuple(round(value / 255, 6) for value in IMAGENET_MEAN),
        "std": tuple(round(value / 255, 6) for value in IMAGENET_STD),
        "num_classes": paper.num_classes,
        **family_cfg,
    }


def _model_cfg(
    default: dict[str, Any],
    requested: str | dict[str, Any] | PretrainedCfg | None,
    overlay: dict[str, Any] | None,
) -> tuple[dict[str, Any], str | None]:
    """The cfg a model carries and the release tag asked for, from timm's ``pretrained_cfg`` (a tag,
    as in ``name.tag``, or entries) and ``pretrained_cfg_overlay`` (e.g. ``file=PATH``)."""
    tag = requested if isinstance(requested, str) else None
    if isinstance(requested, PretrainedCfg):
        requested = {k: v for k, v in requested.to_dict().items() if v is not None}
    entries = requested if isinstance(requested, dict) else {}
    return {**default, **entries, **(overlay or {})}, tag


def _pretrained_build(
    build: Callable[..., nn.Module], cfg: dict[str, Any], tag: str | None, cache_dir: str | None
) -> Callable[..., nn.Module]:
    """``build`` followed by loading the weights ``pretrained=True`` asks for; fails before building
    if they cannot be had."""
    if not _PRETRAINED_LOADER:
        raise RuntimeError(
            f"{cfg['architecture']}: pretrained=True needs workbench.interop, which loads released "
            "weights: import workbench (or workbench.interop) first"
        )
    load = _PRETRAINED_LOADER[0](cfg, tag, cache_dir)

    def build_pretrained(**kwargs: Any) -> nn.Module:
        model = build(**kwargs)
        load(model)
        return model

    return build_pretrained


def feature_extractor(
    build: Callable[..., nn.Module],
    cfg: dict[str, Any],
    feature_indices: int | tuple[int, ...],
    **kwargs: Any,
) -> nn.Module:
    """timm's ``features_only=True`` for a variant: timm's builder wraps the model in its
    ``FeatureGetterNet``, which prunes what follows the last of ``out_indices`` (and the head) and
    returns ``forward_intermediates``' NCHW maps, as for timm's own ViT."""
    return build_model_with_cfg(
        build,
        cfg["architecture"],
        pretrained=False,  # ``build`` loads what pretrained=True asked for, before the pruning
        pretrained_cfg=cfg,
        feature_cfg=dict(feature_cls="getter", out_indices=feature_indices),
        **kwargs,
    )


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
