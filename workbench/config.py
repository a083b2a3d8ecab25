"""Typed run configuration: dataclasses with defaults in one place, YAML in and out, ``key=value`` overrides.

cfg = load_config("demo_gpvit", ["optim.lr=1e-3", "iters=200"])  # a preset name or a YAML path
cfg.data.batch_size = 4          # notebooks edit attributes directly
cfg.validate()                   # the checks load_config runs, for edited configs
save_config(cfg, "run/config.yaml")

Every field declares its valid values beside its default (``checked(2, at_least(1))``), so a bad
value is refused on load with one line naming the file (or the override) and the field, not deep in
the training loop. The presets (the papers' recipes, the demo and the tiny test configs) ship inside
the package, in ``workbench/configs/``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# Packages are installed as plain files (never zipped), so a preset is a real path.
PRESETS = Path(str(importlib.resources.files("workbench") / "configs"))


class ConfigError(ValueError):
    """A bad config value; ``key`` is its dotted path (``data.batch_size``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Rule:
    """The valid values of a field: ``check(value)`` is true for them, ``expected`` says which."""

    check: Callable[[Any], bool]
    expected: str


def checked(default: Any, rule: Rule) -> Any:
    """A dataclass field with its default and its rule (read by ``Config.validate``)."""
    return field(default=default, metadata={"rule": rule})


def at_least(low: float) -> Rule:
    return Rule(lambda value: value >= low, f"at least {low}")


def between(low: float, high: float, high_included: bool = True) -> Rule:
    bracket = "]" if high_included else ")"
    return Rule(
        lambda value: low <= value <= high and (high_included or value < high), f"in [{low}, {high}{bracket}"
    )


def one_of(*choices: str) -> Rule:
    return Rule(lambda value: value in choices, f"one of {', '.join(choices)}")


def each(rule: Rule) -> Rule:
    """A non-empty list whose every item satisfies ``rule``."""
    return Rule(
        lambda values: len(values) > 0 and all(map(rule.check, values)),
        f"a non-empty list, each {rule.expected}",
    )


def ordered_pair(rule: Rule) -> Rule:
    """(low, high) with low <= high, each satisfying ``rule``."""
    return Rule(
        lambda pair: all(map(rule.check, pair)) and pair[0] <= pair[1],
        f"[low, high], low <= high, each {rule.expected}",
    )


NOT_EMPTY = Rule(lambda value: bool(value), "not empty")
POSITIVE = Rule(lambda value: value > 0, "greater than 0")


@dataclass
class ModelConfig:
    name: str = checked("gpvit_l1_segformer", NOT_EMPTY)
    # Keyword arguments for ``create_segmentor`` (e.g. a smaller depth); YAML maps are accepted.
    # A key the model does not take is refused where the model is built (``build_model``).
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Released weights a fresh run starts from: a path, URL or ``workbench.interop.CATALOGUE`` name (e.g.
    # ``gpvit_l1_in1k``); ImageNet backbones fill a dense model's backbone. Empty: random initialisation.
    # A resumed run, ``build_model`` and the Predictor never read it: their weights come from checkpoints.
    pretrained: str = ""


@dataclass
class DataConfig:
    dataset: str = "demo"  # demo | ade20k | cityscapes | pascal_context | folder | imagefolder
    root: str = ""  # data-set root; empty for the demo set (generated into the cache)
    num_classes: int = checked(0, at_least(0))  # 0: the data set's own count
    crop_size: int = checked(512, at_least(1))
    scale: tuple[int, int] = checked(
        (2048, 512), each(at_least(1))
    )  # (long, short) base size of the random resize
    ratio_range: tuple[float, float] = checked((0.5, 2.0), ordered_pair(POSITIVE))
    cat_max_ratio: float = checked(0.75, between(0.0, 1.0))
    flip: float = checked(0.5, between(0.0, 1.0))  # probability
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = checked(IMAGENET_STD, each(POSITIVE))
    batch_size: int = checked(2, at_least(1))  # per process
    num_workers: int = checked(2, at_least(0))
    demo_size: int = checked(128, at_least(8))  # side of the generated demo images
    demo_train: int = checked(480, at_least(1))
    demo_val: int = checked(96, at_least(1))
    # Classification only (task: classification, dataset: imagefolder), through timm:
    auto_augment: str = ""  # e.g. rand-m9-mstd0.5-inc1
    random_erase: float = checked(0.0, between(0.0, 1.0))
    mixup: float = checked(0.0, at_least(0.0))  # alpha; one of mixup / cutmix per batch when both are set
    cutmix: float = checked(0.0, at_least(0.0))
    label_smoothing: float = checked(0.1, between(0.0, 1.0, high_included=False))


@dataclass
class OptimConfig:
    optimizer: str = checked("adamw", one_of("adamw", "sgd"))
    lr: float = checked(6e-5, POSITIVE)
    weight_decay: float = checked(0.01, at_least(0.0))
    momentum: float = checked(0.9, between(0.0, 1.0, high_included=False))
    betas: tuple[float, float] = checked((0.9, 0.999), each(between(0.0, 1.0, high_included=False)))
    # For the decode and auxiliary heads: what the model's group_matcher() leaves (engine/optim.py).
    head_lr_mult: float = checked(10.0, POSITIVE)


@dataclass
class ScheduleConfig:
    policy: str = checked("poly", one_of("poly", "cosine", "constant", "step"))
    # policy "step" (mmdet's 1x / 3x schedules): the LR is multiplied by ``gamma`` at each of ``steps``.
    steps: tuple[int, ...] = ()
    gamma: float = checked(0.1, POSITIVE)
    power: float = checked(1.0, POSITIVE)
    min_lr: float = checked(0.0, at_least(0.0))
    warmup_iters: int = checked(0, at_least(0))
    warmup_ratio: float = checked(1e-6, between(0.0, 1.0))


@dataclass
class EvalConfig:
    mode: str = checked("whole", one_of("whole", "slide"))
    window: int = checked(512, at_least(1))
    stride: int = checked(341, at_least(1))
    scales: tuple[float, ...] = checked((1.0,), each(POSITIVE))  # image-size ratios for multi-scale testing
    flip: bool = False
    min_short_side: int = checked(
        0, at_least(0)
    )  # SETR's rule: no scaled short side below this (the crop size)
    interval: int = checked(
        0, at_least(0)
    )  # evaluate every N iterations during training (0: at the end only)


@dataclass
class Config:
    task: str = checked("segmentation", one_of("segmentation", "classification", "detection"))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    iters: int = checked(1000, at_least(1))
    grad_accum: int = checked(1, at_least(1))
    clip_grad: float = checked(0.0, at_least(0.0))  # max gradient norm; 0 disables clipping
    amp: str = checked(
        "auto", one_of("auto", "fp32", "bf16", "fp16", "none")
    )  # training and evaluation precision (engine.precision; "none" = fp32); auto: bf16 where native
    ema: float = checked(0.0, between(0.0, 1.0, high_included=False))  # EMA decay; 0 disables it
    seed: int = 0
    log_interval: int = checked(10, at_least(1))  # a CSV / TensorBoard row every N steps, averaged over them
    checkpoint_interval: int = checked(500, at_least(1))
    keep_checkpoints: int = checked(
        3, at_least(0)
    )  # the newest N checkpoints are kept (and the best); 0 keeps all
    work_dir: str = checked("runs/default", NOT_EMPTY)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field against its rule; a ``ConfigError`` names the first bad one."""
        _validate(self, "")


def _validate(section: Any, prefix: str) -> None:
    for item in dataclasses.fields(section):
        key, value = prefix + item.name, getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            _validate(value, key + ".")
            continue
        rule = item.metadata.get("rule")
        if rule is None:
            continue
        try:
            valid = rule.check(value)
        except TypeError:  # a notebook assigned a value of another type
            valid = False
        if not valid:
            raise ConfigError(key, f"{key} must be {rule.expected}, got {value!r}")


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Coerce a YAML / command-line value to the annotated type, with an error naming the key."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, f"{key}: expected a mapping, got {value!r}")
        return _from_dict(hint, value, key + ".")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"{key}: expected a list, got {value!r}")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ConfigError(key, f"{key}: expected {len(item_types)} values, got {value!r}")
        return tuple(_convert(v, t, key) for v, t in zip(value, item_types, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is Any or isinstance(hint, types.UnionType):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(key, f"{key}: expected a number, got {value!r}") from None
    if hint is float:
        raise ConfigError(key, f"{key}: expected a number, got {value!r}")
    if hint is str and value is None:  # YAML's empty value: ``pretrained:`` or ``model.pretrained=``
        return ""
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(key, f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _unknown_key(key: str, leaf: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(leaf, known, n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"known: {', '.join(sorted(known))}"
    section = key.rpartition(".")[0]
    return ConfigError(key, f"unknown key {leaf!r}{f' in {section}' if section else ''}; {hint}")


def _from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    for name in values:
        if name not in hints:
            raise _unknown_key(prefix + str(name), str(name), list(hints))
    return cls(**{k: _convert(v, hints[k], prefix + k) for k, v in values.items()})


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are errors that suggest close names."""
    return _from_dict(cls, values, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def _set_override(values: dict[str, Any], item: str) -> str:
    """Apply one ``a.b=value`` string to the nested dict ``values`` (a whole config); returns ``a.b``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {item!r} is not of the form key=value")
    *parents, leaf = key.split(".")
    node = values
    for depth, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            raise ValueError(
                f"override {item!r}: {'.'.join(parents[: depth + 1])!r} is not a section of the config"
            )
        node = node[part]
    in_kwargs = bool(parents) and parents[-1] == "kwargs"  # the model's arguments: checked when it is built
    if leaf not in node and not in_kwargs:
        raise ValueError(f"override {item!r}: {_unknown_key(key, leaf, list(node))}")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"override {item!r}: the value is not YAML ({_yaml_problem(error)})") from None
    return key


def _build(values: dict[str, Any], source: str, overrides: dict[str, str]) -> Config:
    """``Config`` from a nested dict; errors name the override that set the bad key, or ``source``."""
    try:
        return from_dict(Config, values)
    except ConfigError as error:
        by = [item for key, item in overrides.items() if error.key == key or error.key.startswith(key + ".")]
        raise ValueError(f"{f'override {by[-1]!r}' if by else source}: {error}") from None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of ``cfg`` with ``a.b=value`` strings applied (values parsed as YAML: ``lr=1e-3``,
    ``scales=[0.5,1.0]``), checked as on load."""
    values = to_dict(cfg)
    set_by = {_set_override(values, item): item for item in overrides}
    return _build(values, "config", set_by)


def list_presets() -> list[str]:
    """Names of the YAML presets shipped in the package (``demo_gpvit``, ``tiny_setr``, the recipes)."""
    return sorted(path.stem for path in PRESETS.glob("*.yaml"))


def resolve_config(config: str | Path) -> Path:
    """The YAML file of ``config``: a path, or a preset name (``demo_gpvit``, ``demo_gpvit.yaml`` or the
    repository's ``configs/demo_gpvit.yaml``) found inside the package from any folder."""
    path = Path(config)
    if path.is_file():
        return path
    preset = PRESETS / f"{path.stem}.yaml"
    if path.parent in (Path(), Path("configs")) and path.suffix in ("", ".yaml") and preset.is_file():
        return preset
    raise ValueError(
        f"config {str(config)!r} does not exist as a file or a preset; presets: {', '.join(list_presets())}"
    )


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def load_config(config: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML file or preset (see ``resolve_config``), apply ``key=value`` overrides and check every
    field; a ``ValueError`` names the file and line (YAML syntax), or the field and its source."""
    path = resolve_config(config)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: YAML syntax error at {_yaml_problem(error)}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(values).__name__}")
    return apply_overrides(_build(values, str(path), {}), overrides or [])


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
