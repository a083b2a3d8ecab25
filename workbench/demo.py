"""The embedded demo model: trained once by the project's own training code on the demo set, cached."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from workbench.build import build_datasets, build_model, classes_of, eval_transform
from workbench.cache import cache_dir
from workbench.config import load_config, to_dict
from workbench.engine import train
from workbench.engine.tasks import task_of
from workbench.inference import Predictor, load_predictor, load_run
from workbench.interop.checkpoint import latest_checkpoint, load_state
from workbench.precision import resolve_device


def demo_checkpoint(config: str | Path = "demo_gpvit", retrain: bool = False) -> Path:
    """The finished demo checkpoint of ``config``, training it first if the cache lacks it.

    The cache folder is named after a hash of the config, so an edited config trains a new model.
    """
    cfg = load_config(config)
    digest = hashlib.sha256(repr(to_dict(cfg)).encode()).hexdigest()[:10]
    cfg.work_dir = str(cache_dir() / f"demo-model-{Path(config).stem}-{digest}")
    if retrain:  # the run folder is a cache entry: training afresh replaces it
        shutil.rmtree(cfg.work_dir, ignore_errors=True)
    found = latest_checkpoint(cfg.work_dir)
    if found is None or load_state(found)["step"] < cfg.iters:
        print(f"training the demo model ({cfg.model.name}, {cfg.iters} steps) into {cfg.work_dir}")
        train(cfg)
        found = latest_checkpoint(cfg.work_dir)
    return found


def demo_metrics(checkpoint: str | Path) -> dict:
    cfg, model, _ = load_run(checkpoint)
    _, val_set = build_datasets(cfg)
    return task_of(cfg).evaluate(cfg, model, val_set)


def demo_predictor(
    config: str | Path = "demo_gpvit", trained: bool = True, device: str | None = None
) -> Predictor:
    """A Predictor of the demo model of ``config``: the trained one (``demo_checkpoint``, training it
    first if the cache lacks it) or, with ``trained=False``, the same model freshly initialised (seed 0)
    with the same classes and preprocessing: the notebooks' quick runs and the untrained baselines."""
    if trained:
        return load_predictor(demo_checkpoint(config), device=device)
    cfg = load_config(config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(cfg).to(resolve_device(device)).eval()
    return Predictor(model, cfg.eval, classes_of(cfg), eval_transform(cfg))
