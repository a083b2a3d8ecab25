"""The embedded demo model: trained once by the project's own training code on the demo set, cached."""

from __future__ import annotations

import hashlib
from pathlib import Path

from workbench.config import load_config, to_dict
from workbench.data.demo import cache_dir
from workbench.engine import latest_checkpoint, load_weights, train
from workbench.engine.checkpoint import checkpoint_config, load_state
from workbench.engine.train import build_model, build_task_datasets, evaluate_task


def demo_checkpoint(config: str | Path = "configs/demo_gpvit.yaml", retrain: bool = False) -> Path:
    """The finished demo checkpoint of ``config``, training it first if the cache lacks it.

    The cache folder is named after a hash of the config, so an edited config trains a new model.
    """
    cfg = load_config(config)
    digest = hashlib.sha256(repr(to_dict(cfg)).encode()).hexdigest()[:10]
    cfg.work_dir = str(cache_dir() / f"demo-model-{Path(config).stem}-{digest}")
    found = latest_checkpoint(cfg.work_dir)
    if retrain or found is None or load_state(found)["step"] < cfg.iters:
        print(f"training the demo model ({cfg.model.name}, {cfg.iters} steps) into {cfg.work_dir}")
        train(cfg, resume=False if retrain else "auto")
        found = latest_checkpoint(cfg.work_dir)
    return found


def demo_metrics(checkpoint: str | Path) -> dict:
    cfg = checkpoint_config(checkpoint)
    model = build_model(cfg)
    load_weights(model, checkpoint)
    _, val_set = build_task_datasets(cfg)
    return evaluate_task(cfg, model, val_set)
