"""Running a study over trained models into a run-style folder: what ``workbench study`` calls.

    run_study("probes", ["runs/demo_setr", "runs/demo_gpvit"], "studies/probes", count=32)

    studies/probes/
        study.yaml                 the study, its models and options (a re-run must match it)
        demo_setr/table.csv        the study's table for that model
        demo_setr/figure.png       and its figure
        cka_demo_setr_vs_demo_gpvit/...   (cka with two or more models: each pair too)

Each model is a run folder or checkpoint (``workbench.inference.load_run``); its data set is its own
config's (validation split; the probes train on its training split), or ``data``'s config where
given. Resumable: a model whose table is complete (written atomically, last) is not measured again;
a folder holding another study's options is refused rather than mixed. A model the study does not
apply to (the lens on HLG) is said in one line and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml

from workbench.build import build_datasets
from workbench.config import Config, load_config
from workbench.inference import load_run
from workbench.inference.folder_outputs import write_atomically
from workbench.studies.ablation import head_importance, importance_figure
from workbench.studies.lens import layer_decoding, lens_figure
from workbench.studies.probes import layer_probes, probe_figure
from workbench.studies.similarity import cka_figure, layer_cka
from workbench.studies.statistics import attention_statistics, statistics_figure
from workbench.studies.tables import Table

# Paths (each named after its run folder), (name, path) pairs, or a dict of them.
Models = list[str | Path] | list[tuple[str, str | Path]] | dict[str, str | Path]


@dataclass(frozen=True)
class Study:
    """How to measure one model (``measure(model, train_set, val_set, options)``) and draw its table."""

    measure: Callable[..., Table]
    figure: Callable[[Table], Any]
    summary: str


def _cka(model, train_set, val_set, options):
    return layer_cka(model, val_set, **options)


def _probes(model, train_set, val_set, options):
    options = dict(options)
    count = options.pop("count", None)  # as many training as validation images
    return layer_probes(model, train_set, val_set, train_count=count, val_count=count, **options)


def _ablation(model, train_set, val_set, options):
    return head_importance(model, val_set, **options)


def _lens(model, train_set, val_set, options):
    return layer_decoding(model, val_set, **options)


def _statistics(model, train_set, val_set, options):
    return attention_statistics(model, val_set, **options)


STUDIES = {
    "cka": Study(_cka, cka_figure, "linear CKA between every pair of layers (and across models)"),
    "probes": Study(_probes, probe_figure, "a linear probe per layer: mIoU where segmentation is decodable"),
    "ablation": Study(_ablation, importance_figure, "mIoU change when each head or branch is zeroed"),
    "lens": Study(_lens, lens_figure, "the trained head on each earlier layer: mIoU per layer"),
    "statistics": Study(
        _statistics, statistics_figure, "attention entropy and distance per head, bootstrap CIs"
    ),
}


def model_label(source: str | Path) -> str:
    """A model's folder name: its run's, for a checkpoint inside the run's ``checkpoints/``."""
    path = Path(source)
    path = path.parent if path.is_file() else path
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


def _labelled(models: Models) -> dict[str, str | Path]:
    """Each model under the name of its folder in the study (``models`` may name them)."""
    if isinstance(models, dict):
        pairs = list(models.items())
    else:
        pairs = [model if isinstance(model, tuple) else (model_label(model), model) for model in models]
    names = [name for name, _ in pairs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(
            f"two models would share the folder {clashes[0]!r}: name them, run_study(name, "
            "{'a': path_a, 'b': path_b}, ...)"
        )
    return dict(pairs)


def _record(folder: Path, settings: dict[str, Any]) -> None:
    """Write ``study.yaml``, or check that the folder's matches: one study's options per folder."""
    record = folder / "study.yaml"
    if record.exists():
        before = yaml.safe_load(record.read_text())
        if before != settings:
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise ValueError(
                f"{folder} holds a study with other settings ({', '.join(changed)}); choose another "
                "--out or pass --overwrite to measure afresh there"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(record, lambda file: file.write(yaml.safe_dump(settings, sort_keys=True).encode()))


def _save(table: Table, figure: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / "figure.png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    # Last: its presence marks the model done.
    write_atomically(folder / "table.csv", lambda file: file.write(table.csv_text().encode()))


def run_study(
    name: str,
    models: Models,
    out: str | Path,
    *,
    data: str | Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Table]:
    """Run study ``name`` (``STUDIES``) on each of ``models`` (paths, each named after its run folder,
    or named: (name, path) pairs or a dict) into ``out``; ``options`` go to the
    study's function (``count``, ``batch_size``, ``precision``, ``seed``, ``steps``...). Returns the
    tables measured in this call, by folder name."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    if not models:
        raise ValueError("give at least one model (a run folder or checkpoint)")
    models = _labelled(models)
    folder = Path(out)
    settings = {
        "study": name,
        "models": {label: str(m) for label, m in models.items()},
        "data": data and str(data),
        **options,
    }
    if overwrite and (folder / "study.yaml").exists():
        (folder / "study.yaml").unlink()
    _record(folder, settings)
    data_cfg = load_config(data) if data is not None else None
    study, tables, loaded, refused = STUDIES[name], {}, [], []
    for label, source in models.items():
        cfg, model, _ = load_run(source)
        model.eval()
        loaded.append((label, model, cfg))
        target = folder / label
        if (target / "table.csv").exists() and not overwrite:
            log(f"{name}: {target} is complete, not measured again")
            continue
        train_set, val_set = build_datasets(_with_data(cfg, data_cfg))
        log(f"{name}: measuring {source}")
        try:
            table = study.measure(model, train_set, val_set, options)
        except ValueError as error:  # e.g. the lens on HLG: said for that model, the others go on
            refused.append(f"{label}: {error}")
            log(f"{name}: {label} is not measured: {error}")
            continue
        tables[target.name] = table
        _save(table, study.figure(table), target)
    if len(refused) == len(models):
        raise ValueError(f"{name} measured no model: {refused[0]}")
    if name == "cka":
        tables.update(_cross_cka(loaded, folder, data_cfg, overwrite, log, options))
    return tables


def _with_data(cfg: Config, data_cfg: Config | None) -> Config:
    if data_cfg is None:
        return cfg
    cfg.data = data_cfg.data
    return cfg


def _cross_cka(loaded, folder: Path, data_cfg, overwrite: bool, log, options) -> dict[str, Table]:
    """CKA of each pair of models, layer by layer, on the first model's (or ``data``'s) images."""
    tables = {}
    for first in range(len(loaded)):
        for second in range(first + 1, len(loaded)):
            (label_x, model_x, cfg), (label_y, model_y, _) = loaded[first], loaded[second]
            target = folder / f"cka_{label_x}_vs_{label_y}"
            if (target / "table.csv").exists() and not overwrite:
                log(f"cka: {target} is complete, not measured again")
                continue
            _, val_set = build_datasets(_with_data(cfg, data_cfg))
            log(f"cka: {label_x} against {label_y}")
            table = layer_cka(model_x, val_set, model_y, **options)
            tables[target.name] = table
            _save(table, cka_figure(table, f"linear CKA: {label_x} vs {label_y}", label_x, label_y), target)
    return tables
