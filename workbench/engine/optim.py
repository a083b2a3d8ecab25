"""Optimisers with the recipes' parameter groups, and the learning rate as a pure function of the step."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from workbench.config import OptimConfig, ScheduleConfig


def _body_patterns(model: nn.Module) -> list[re.Pattern] | None:
    """The regexes of the model's timm-style ``group_matcher()``; None for a model without one."""
    if not hasattr(model, "group_matcher"):
        return None
    patterns = []
    for spec in model.group_matcher().values():
        patterns += [regex for regex, _ in spec] if isinstance(spec, list | tuple) else [spec]
    return [re.compile(pattern) for pattern in patterns if pattern]


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: (head or not) x (weight decay or not). ``lr_mult`` scales each group's LR.

    Head: the parameters the model's ``group_matcher()`` leaves unmatched (timm's convention, where
    unmatched layers are the neck and head): a segmentor's decode and auxiliary heads, a classifier's
    ``head``. No decay: tensors of at most one dimension (norms, biases) and the names of the model's
    ``no_weight_decay()`` (position embeddings, tokens, position-bias MLPs).
    """
    body = _body_patterns(model)
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        head = body is not None and not any(pattern.match(name) for pattern in body)
        decay = param.ndim > 1 and name not in no_decay
        groups.setdefault((head, decay), []).append(param)
    return [
        {
            "params": params,
            "lr_mult": cfg.head_lr_mult if head else 1.0,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (head, decay), params in sorted(groups.items())
    ]


def _fusable(groups: list[dict]) -> bool:
    """True where torch's fused optimizer kernels apply: float parameters on the CPU or a CUDA GPU."""
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over ``param_groups``, with torch's fused kernels where they apply: the same
    update in one kernel per step instead of one loop per tensor (the demo GPViT's 262 tensors on
    2 idle CPU cores: 4.5 ms against 16.8 ms per step)."""
    groups = param_groups(model, cfg)
    fused = _fusable(groups) or None  # None: torch's default choice elsewhere (e.g. the meta device)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    raise ValueError(f"optim.optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def learning_rate(step: int, total: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """LR at optimiser step ``step`` of ``total``: warm-up, then poly / cosine / constant / step."""
    progress = min(step, total) / max(total, 1)
    if cfg.policy == "poly":
        lr = (base_lr - cfg.min_lr) * (1 - progress) ** cfg.power + cfg.min_lr
    elif cfg.policy == "cosine":
        lr = cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    elif cfg.policy == "constant":
        lr = base_lr
    elif cfg.policy == "step":
        lr = base_lr * cfg.gamma ** sum(step >= boundary for boundary in cfg.steps)
    else:
        raise ValueError(f"schedule.policy must be poly, cosine, constant or step, got {cfg.policy!r}")
    if step < cfg.warmup_iters:  # linear warm-up from warmup_ratio x the scheduled LR (mmcv)
        lr *= 1 - (1 - step / cfg.warmup_iters) * (1 - cfg.warmup_ratio)
    return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
