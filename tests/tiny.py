"""Tiny builds of the registered models (their ``tiny`` settings at registration), for 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import timm

from workbench.build import build_model
from workbench.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, load_config
from workbench.interop.checkpoint import save_weights
from workbench.models import model_info
from workbench.models.detection import detector_info


def tiny(name: str, num_classes: int = 5, **overrides):
    """Model ``name`` with its registered tiny settings (few layers, narrow), structure unchanged."""
    return timm.create_model(name, num_classes=num_classes, **{**model_info(name).tiny, **overrides})


def tiny_setr(name: str, num_classes: int = 5, **overrides):
    """A 4-layer, 32-wide version of a SETR variant."""
    return tiny(name, num_classes, **overrides)


def tiny_setr_encoder(decoder: str, depth: int, **keywords):
    """A 32-wide ``setr_{decoder}_vit_base`` of ``depth`` layers in eval mode, 5 classes, built through
    ``create_segmentor`` with ``keywords`` (the encoder's layout: img_size, patch_size, reg_tokens ...):
    the stand-in released ViT checkpoints load into. MLA taps four layers spread over the depth; Naive
    and PUP decode the last layer, with one auxiliary head halfway."""
    from workbench import create_segmentor

    if decoder == "mla":
        layers = dict(decode_layers=tuple(i * depth // 4 for i in range(4)))
    else:
        layers = dict(decode_layers=(depth - 1,), aux_layers=(max(0, depth // 2 - 1),))
    return create_segmentor(
        f"setr_{decoder}_vit_base",
        num_classes=5,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        head_channels=16,
        mla_channels=16,
        mla_head_channels=8,
        **layers,
        **keywords,
    ).eval()


def tiny_gpvit(num_classes: int = 5, **overrides):
    """A 4-layer, 24-wide GPViT classifier: stripe, GP (8 groups), stripe, GP (4 groups)."""
    return tiny("gpvit_l1", num_classes, **overrides)


def tiny_gpvit_segmentor(decoder: str, num_classes: int = 5, **overrides):
    """A tiny GPViT segmentor with dense outputs from all four layers."""
    return tiny(f"gpvit_l1_{decoder}", num_classes, **overrides)


def tiny_hlg(num_classes: int = 5, **overrides):
    """A two-layers-per-stage HLG classifier, 32 to 256 wide."""
    return tiny("hlg_tiny", num_classes, **overrides)


def tiny_setr_hlg(num_classes: int = 5, **overrides):
    return tiny("setr_hlg_small", num_classes, **overrides)


TINY_GPVIT = model_info("gpvit_l1").tiny
TINY_HLG = model_info("hlg_tiny").tiny


def tiny_detection_config(
    name: str,
    work_dir: str | Path,
    iters: int = 2,
    steps: tuple[int, ...] = (2,),
    warmup_iters: int = 1,
    **fields,
) -> Config:
    """A run of detector ``name`` (its tiny settings) on the 64-pixel demo detection set (8 training and
    4 validation images, batch 2) for ``iters`` steps of a step schedule; ``fields`` set other fields."""
    return Config(
        task="detection",
        model=ModelConfig(name, dict(detector_info(name).tiny)),
        data=DataConfig(
            dataset="demo_detection", demo_size=64, demo_train=8, demo_val=4, batch_size=2, num_workers=0
        ),
        optim=OptimConfig(lr=1e-3, weight_decay=0.05, head_lr_mult=1.0),
        schedule=ScheduleConfig(policy="step", steps=steps, warmup_iters=warmup_iters),
        iters=iters,
        amp="fp32",
        log_interval=1,
        work_dir=str(work_dir),
        **fields,
    )


def tiny_checkpoint(folder: Path, config: str = "tiny_gpvit") -> Path:
    """A freshly initialised model of ``config`` saved in ``folder`` as a workbench checkpoint."""
    cfg = load_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder, build_model(cfg), cfg)
    return folder
