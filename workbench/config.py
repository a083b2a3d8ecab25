"""Typed run configuration: dataclasses with defaults in one place, YAML in and out, ``key=value`` overrides.

cfg = load_config("configs/demo_gpvit.yaml", ["optim.lr=1e-3", "iters=200"])
cfg.data.batch_size = 4          # notebooks edit attributes directly
save_config(cfg, "run/config.yaml")
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class ModelConfig:
    name: str = "gpvit_l1_segformer"
    # Keyword arguments for ``create_segmentor`` (e.g. a smaller depth); YAML maps are accepted.
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "demo"  # demo | ade20k | cityscapes | pascal_context | folder | imagefolder
    root: str = ""  # data-set root; empty for the demo set (generated into the cache)
    num_classes: int = 0  # 0: the data set's own count
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)  # (long, short) base size of the random resize
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = 2  # per process
    num_workers: int = 2
    demo_size: int = 128  # side of the generated demo images
    demo_train: int = 480
    demo_val: int = 96
    # Classification only (task: classification, dataset: imagefolder), through timm:
    auto_augment: str = ""  # e.g. rand-m9-mstd0.5-inc1
    random_erase: float = 0.0
    mixup: float = 0.0  # alpha; one of mixup / cutmix per batch when both are set
    cutmix: float = 0.0
    label_smoothing: float = 0.1


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 6e-5
    weight_decay: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    head_lr_mult: float = (
        10.0  # for every parameter whose name contains "head" (SETR, SegFormer, HLG recipes)
    )
    no_decay: tuple[str, ...] = ("norm", "bias", "pos_embed", "group_tokens", "query_token", "cls_token")


@dataclass
class ScheduleConfig:
    policy: str = "poly"  # poly | cosine | constant
    power: float = 1.0
    min_lr: float = 0.0
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | slide
    window: int = 512
    stride: int = 341
    scales: tuple[float, ...] = (1.0,)  # image-size ratios for multi-scale testing
    flip: bool = False
    min_short_side: int = 0  # SETR's rule: no scaled short side below this (the crop size)
    interval: int = 0  # evaluate every N iterations during training (0: at the end only)


@dataclass
class Config:
    task: str = "segmentation"  # segmentation | classification
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    iters: int = 1000
    grad_accum: int = 1
    clip_grad: float = 0.0  # max gradient norm; 0 disables clipping
    amp: str = "bf16"  # bf16 | fp16 | none; autocast is used on CUDA only
    ema: float = 0.0  # EMA decay; 0 disables it
    seed: int = 0
    log_interval: int = 10  # a CSV / TensorBoard row every N steps, averaged over them
    checkpoint_interval: int = 500
    work_dir: str = "runs/default"


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Coerce a YAML / command-line value to the annotated type, with an error naming the key."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ValueError(f"{where}: expected {len(item_types)} values, got {value!r}")
        return tuple(_convert(v, t, where) for v, t in zip(value, item_types, strict=True))
    if origin is dict or hint is Any or isinstance(hint, types.UnionType):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are errors that list the known ones."""
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(hints)}")
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``a.b=value`` strings (values parsed as YAML: ``lr=1e-3``, ``scales=[0.5,1.0]``)."""
    values = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.strip().split(".")
        node = values
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section of the config")
            node = node[part]
        if leaf not in node and not (parents and parents[-1] == "kwargs"):
            raise ValueError(f"override {item!r}: unknown key {leaf!r}; known: {sorted(node)}")
        node[leaf] = yaml.safe_load(raw)
    return from_dict(Config, values)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    return apply_overrides(from_dict(Config, values, str(path)), overrides or [])


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
