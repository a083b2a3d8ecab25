"""The training loop: one function for notebooks, ``workbench train`` and ``torchrun`` alike.

    state = train(cfg)                                   # builds model and data from cfg
    state = train(cfg, model=my_model, callbacks=[plot])  # or takes them ready-made

Resuming is exact: the learning rate is a function of the step, the data order a function of
(seed, epoch) and every sample's augmentation a function of its own seed, so a run restarted from a
checkpoint sees the same batches and the same random crops as the run that never stopped.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from workbench.config import Config, save_config
from workbench.data import build_datasets
from workbench.data.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_NAMES,
    CITYSCAPES_PALETTE,
    PASCAL_CONTEXT_CLASSES,
    Classes,
    default_palette,
    read_classes,
)
from workbench.data.demo import CLASSES as DEMO_CLASSES
from workbench.data.demo import PALETTE as DEMO_PALETTE
from workbench.engine import distributed
from workbench.engine.checkpoint import latest_checkpoint, load_state, load_weights, resolve, save_checkpoint
from workbench.engine.classification import (
    Classifier,
    classification_classes,
    classification_datasets,
    evaluate_classifier,
)
from workbench.engine.evaluate import evaluate
from workbench.engine.optim import build_optimizer, learning_rate, set_learning_rate
from workbench.models import create_segmentor

Callback = Callable[[str, dict[str, Any]], None]


def dataset_classes(cfg: Config) -> Classes:
    """Class names and colours of the configured data set (without reading its images)."""
    data = cfg.data
    if data.dataset == "demo":
        return Classes(DEMO_CLASSES, DEMO_PALETTE)
    if data.dataset == "cityscapes":
        return Classes(CITYSCAPES_NAMES, CITYSCAPES_PALETTE)
    if data.dataset == "folder":
        return read_classes(Path(data.root) / "classes.txt")
    count = data.num_classes or {"ade20k": ADE20K_CLASSES, "pascal_context": PASCAL_CONTEXT_CLASSES}.get(
        data.dataset, 0
    )
    if not count:
        raise ValueError(f"unknown data set {data.dataset!r}")
    return Classes(tuple(f"class_{i}" for i in range(count)), default_palette(count))


def build_model(cfg: Config) -> nn.Module:
    """The configured segmentor, or for ``task: classification`` a timm classifier in a ``Classifier``."""
    if cfg.task == "classification":
        data = cfg.data
        num_classes = data.num_classes or len(classification_classes(cfg))
        model = timm.create_model(cfg.model.name, num_classes=num_classes, **cfg.model.kwargs)
        return Classifier(model, num_classes, data.mixup, data.cutmix, data.label_smoothing)
    if cfg.task != "segmentation":
        raise ValueError(f"task must be 'segmentation' or 'classification', got {cfg.task!r}")
    num_classes = cfg.data.num_classes or len(dataset_classes(cfg))
    return create_segmentor(cfg.model.name, num_classes=num_classes, **cfg.model.kwargs)


def evaluate_task(
    cfg: Config, model: nn.Module, val_set, device="cpu", rank=0, world=1, progress=True
) -> dict:
    """Segmentation metrics (mIoU, aAcc, per class) or classification accuracy (top-1, top-5)."""
    if cfg.task == "classification":
        return evaluate_classifier(model, val_set, device, rank, world, progress)
    return evaluate(model, val_set, cfg.eval, model.num_classes, device, rank, world, progress)


def build_task_datasets(cfg: Config) -> tuple[Any, Any]:
    if cfg.task == "classification":
        return classification_datasets(cfg.data)
    return build_datasets(cfg.data, cfg.seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class TrainSampler(Sampler):
    """Endless, seeded and resumable. Epoch e visits a permutation seeded by (seed, e), cut into global
    batches of ``batch * world`` samples (the rest dropped); process ``rank`` takes its slice of each.
    Items are (index, sample seed), so augmentation does not depend on worker processes."""

    def __init__(
        self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1, start_batch: int = 0
    ) -> None:
        self.batch, self.seed, self.rank, self.start_batch = batch, seed, rank, start_batch
        self.global_batch = batch * world
        self.batches_per_epoch = size // self.global_batch
        self.size = size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {size} samples, fewer than one global batch of {self.global_batch}"
            )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        batch = self.start_batch
        while True:
            epoch, within = divmod(batch, self.batches_per_epoch)
            order = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)
            )
            first = within * self.global_batch + self.rank * self.batch
            for index in order[first : first + self.batch].tolist():
                yield index, sample_seed(self.seed, epoch, index)
            batch += 1


class _Losses(nn.Module):
    """Makes ``losses`` the forward pass, so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.losses(images, targets)


class _Log:
    """CSV (step rows) and TensorBoard, written by the main process only."""

    def __init__(self, work_dir: Path, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = work_dir / "log.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if start and self.path.is_file():
            # A resumed run drops what the interrupted one logged after its checkpoint.
            with self.path.open() as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= start]
        self.rows = rows
        self.fields: list[str] = []
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(work_dir / "tensorboard"), purge_step=start or None)
        except ImportError:
            self.writer = None

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        self.rows.append(row)
        new_fields = [key for key in row if key not in self.fields]
        if new_fields:  # a first row, or a new column: (re)write the file with the full header
            self.fields = list(dict.fromkeys(key for r in self.rows for key in r))
            with self.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _resume_from(cfg: Config, resume: bool | str | Path) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True or resume == "auto":
        return latest_checkpoint(cfg.work_dir)
    return resolve(resume)


def train(
    cfg: Config,
    model: nn.Module | None = None,
    datasets: tuple[Any, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool | str | Path = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.iters`` optimiser steps; returns the last losses, step and evaluation metrics.

    ``resume="auto"`` continues from the newest checkpoint in ``cfg.work_dir``; a path continues from
    that checkpoint; ``False`` starts afresh. Callbacks get ("step" | "eval" | "checkpoint", info).
    """
    rank, world, device = distributed.setup()
    main = rank == 0
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = model if model is not None else build_model(cfg)
    train_set, val_set = datasets if datasets is not None else build_task_datasets(cfg)
    work_dir = Path(cfg.work_dir)
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, work_dir / "config.yaml")
    model.to(device)
    if world > 1:
        model = distributed.convert_sync_batchnorm(model, device)
    loss_module: nn.Module = _Losses(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(model, cfg.optim)
    use_amp = device.type == "cuda" and cfg.amp != "none"
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.amp == "fp16")
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema)

    start = 0
    checkpoint = _resume_from(cfg, resume)
    if checkpoint is not None:
        load_weights(model, checkpoint)
        state = load_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            load_weights(ema.module, checkpoint, ema=True)
        start = state["step"]

    sampler = TrainSampler(len(train_set), cfg.data.batch_size, cfg.seed, rank, world, start * cfg.grad_accum)
    loader = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)  # (creating the iterator draws from the global RNG: restore it only after)
    if checkpoint is not None:
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], device)
    log = _Log(work_dir, start, main)
    bar = tqdm(
        total=cfg.iters, initial=start, desc="train", disable=not (progress and main), dynamic_ncols=True
    )
    result: dict[str, Any] = {"step": start}

    def notify(event: str, info: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(event, info)

    def save(step: int) -> None:
        if main:
            rng = {"rng_cpu": torch.get_rng_state()}
            if device.type == "cuda":
                rng["rng_cuda"] = torch.cuda.get_rng_state(device)
            state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), **rng}
            path = save_checkpoint(work_dir, step, model, cfg, state, ema.module if ema is not None else None)
            notify("checkpoint", {"step": step, "path": str(path)})
        distributed.barrier()

    def run_eval(step: int) -> dict[str, Any]:
        metrics = evaluate_task(
            cfg, ema.module if ema is not None else model, val_set, device, rank, world, progress
        )
        if main:
            log.write(step, {f"val/{k}": v for k, v in metrics.items() if not isinstance(v, dict)})
        notify("eval", {"step": step, "metrics": metrics})
        return metrics

    model.train()
    tic = time.perf_counter()
    pending: dict[str, float] = {}  # training figures summed since the last log row
    pending_steps = 0
    for step in range(start, cfg.iters):
        lr = learning_rate(step, cfg.iters, cfg.optim.lr, cfg.schedule)
        set_learning_rate(optimizer, lr)
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            images, targets = (t.to(device, non_blocking=True) for t in next(batches))
            # Gradients are all-reduced only on the last micro-step: syncing each one would cost
            # grad_accum all-reduces for the same result.
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or world == 1 else loss_module.no_sync()
            with sync, torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                losses = loss_module(images, targets)
                loss = losses["loss"] / cfg.grad_accum
            if not torch.isfinite(loss):
                bar.close()
                log.close()
                kept = latest_checkpoint(work_dir)
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {step + 1}; stopped. Last good checkpoint: {kept or 'none'}"
                )
            scaler.scale(loss).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.item() / cfg.grad_accum
        if cfg.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model, step=step)

        done = step + 1
        elapsed, tic = time.perf_counter() - tic, time.perf_counter()
        rate = cfg.data.batch_size * world * cfg.grad_accum / max(elapsed, 1e-9)
        result.update(step=done, losses=totals, lr=lr)
        for key, value in {**totals, "img_per_s": rate}.items():
            pending[key] = pending.get(key, 0.0) + value
        pending_steps += 1
        if main and (done % cfg.log_interval == 0 or done == cfg.iters):  # means since the last row
            log.write(done, {**{f"train/{k}": v / pending_steps for k, v in pending.items()}, "train/lr": lr})
            pending, pending_steps = {}, 0
        bar.set_postfix(loss=f"{totals['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        bar.update(1)
        notify("step", {"step": done, "losses": totals, "lr": lr, "img_per_s": rate})
        if cfg.eval.interval and done % cfg.eval.interval == 0 and done < cfg.iters and val_set is not None:
            result["metrics"] = run_eval(done)
        if done % cfg.checkpoint_interval == 0 or done == cfg.iters:
            save(done)
    bar.close()
    if val_set is not None and result["step"] == cfg.iters:
        result["metrics"] = run_eval(cfg.iters)
    log.close()
    return result
