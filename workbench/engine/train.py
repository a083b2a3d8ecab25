"""The training loop: one function for notebooks, ``workbench train`` and ``torchrun`` alike.

    state = train(cfg)                                   # builds model and data from cfg
    state = train(cfg, model=my_model, callbacks=[plot])  # or takes them ready-made

Resuming is exact: the learning rate is a function of the step, the data order a function of
(seed, epoch) and every sample's augmentation a function of its own seed, so a run restarted from a
checkpoint sees the same batches and the same random crops as the run that never stopped.

``train`` is a library call: it creates a process group only under torchrun (and destroys it), and
the global random number generators (torch, CUDA, numpy, python) are as it found them on return.
An existing run folder is never overwritten: a run of another model, a fresh start over a run and
an ``iters`` below the run's step are refused before anything is written; a finished run is left
as it is. Ctrl-C stops at the end of the current step, saves a checkpoint and raises
``KeyboardInterrupt`` naming it (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import contextlib
import csv
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from workbench.build import build_datasets, build_model
from workbench.config import Config, load_config, save_config, to_dict
from workbench.engine import distributed
from workbench.engine.optim import build_optimizer, learning_rate, set_learning_rate
from workbench.engine.tasks import task_of
from workbench.interop import LoadReport, load_pretrained, load_weights
from workbench.interop.checkpoint import (
    CONFIG,
    latest_checkpoint,
    load_state,
    prune_checkpoints,
    remove_staging,
    resolve,
    save_checkpoint,
)
from workbench.precision import autocast, run_precision

Callback = Callable[[str, dict[str, Any]], None]


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


def to_device(batch: Any, device: torch.device) -> Any:
    """A tensor, or the lists and dicts of tensors of a detection batch, on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return [to_device(item, device) for item in batch]


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


@contextlib.contextmanager
def _scoped_global_rng() -> Iterator[None]:
    """The torch (CPU and CUDA), numpy and python RNG states are restored on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the loop stops after its step and saves); a second one
    interrupts at once. Outside the main thread signals cannot be caught: the event stays unset."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def _same_model(cfg: Config, other: Config) -> bool:
    """Whether a checkpoint of ``other`` fits the model ``cfg`` builds (initial weights aside); model
    arguments compare as saved in YAML (a notebook's tuple equals the saved config's list)."""

    def built(c: Config) -> tuple:
        return c.task, c.model.name, to_dict(c.model)["kwargs"], c.data.dataset, c.data.num_classes

    return built(cfg) == built(other)


def load_initial_weights(model: nn.Module, cfg: Config) -> LoadReport | None:
    """``cfg.model.pretrained`` into ``model`` through ``load_pretrained`` (strict; ImageNet weights fill
    a dense model's backbone), as a fresh run starts; None when it names nothing. A file that cannot be
    read or does not fit raises a ValueError whose first line names ``model.pretrained``, and nothing
    is loaded."""
    if not cfg.model.pretrained:
        return None
    try:
        return load_pretrained(model, cfg.model.pretrained)
    except (ValueError, OSError) as error:
        raise ValueError(f"model.pretrained={cfg.model.pretrained}: {error}") from error


def _run_exists(work_dir: Path) -> bool:
    return any((work_dir / name).exists() for name in (CONFIG, "log.csv", "checkpoints"))


def _checkpoint_to_resume(cfg: Config, resume: bool | str | Path) -> Path | None:
    """The checkpoint ``resume`` names, after refusing what would overwrite another run."""
    work_dir = Path(cfg.work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise ValueError(f"work_dir {work_dir} is a file, not a folder")
    if _run_exists(work_dir):
        if resume is False or resume is None:
            raise ValueError(
                f"work_dir {work_dir} already holds a run; resume it (--resume auto) or choose a new work_dir"
            )
        if (work_dir / CONFIG).is_file() and not _same_model(cfg, previous := load_config(work_dir / CONFIG)):
            raise ValueError(
                f"work_dir {work_dir} holds a run of {previous.model.name} on {previous.data.dataset}, not "
                f"{cfg.model.name} on {cfg.data.dataset}: choose a new work_dir"
            )
    if resume is False or resume is None:
        return None
    if resume is True or resume == "auto":
        return latest_checkpoint(work_dir)
    checkpoint = resolve(resume)
    if not _same_model(cfg, previous := load_config(checkpoint / CONFIG)):
        raise ValueError(
            f"checkpoint {checkpoint} is of {previous.model.name} on {previous.data.dataset}, not "
            f"{cfg.model.name} on {cfg.data.dataset}"
        )
    return checkpoint


def train(
    cfg: Config,
    model: nn.Module | None = None,
    datasets: tuple[Any, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool | str | Path = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.iters`` optimiser steps; returns the step, the last losses and evaluation metrics.

    ``resume="auto"`` continues from the newest checkpoint in ``cfg.work_dir``; a path continues from
    that checkpoint; ``False`` starts afresh (in a folder that holds no run). Callbacks get
    ("step" | "eval" | "checkpoint", info). A run already at ``cfg.iters`` returns at once with
    ``finished: True``.
    """
    cfg.validate()  # a notebook may have edited fields since the config was loaded
    with distributed.process_group() as (rank, world, device), _scoped_global_rng():
        return _train(cfg, model, datasets, callbacks, resume, progress, rank, world, device)


def _train(
    cfg: Config,
    model: nn.Module | None,
    datasets: tuple[Any, Any] | None,
    callbacks: Sequence[Callback],
    resume: bool | str | Path,
    progress: bool,
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, Any]:
    main = rank == 0
    work_dir = Path(cfg.work_dir)
    task = task_of(cfg)
    checkpoint = _checkpoint_to_resume(cfg, resume)
    state = load_state(checkpoint) if checkpoint is not None else {}
    start = state.get("step", 0)
    if start > cfg.iters:
        raise ValueError(
            f"iters={cfg.iters} is below step {start} that {checkpoint} reached: set iters to at least "
            f"{start}, or choose a new work_dir"
        )
    if checkpoint is not None and start == cfg.iters:
        if main:
            print(f"{work_dir} is finished (step {start} of {cfg.iters}); nothing to do")
        return {"step": start, "finished": True, "best": state.get("best")}

    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = model if model is not None else build_model(cfg)
    train_set, val_set = datasets if datasets is not None else build_datasets(cfg)
    if val_set is not None:
        task.check(cfg, val_set)  # now, not after hours of training
    if checkpoint is None:  # a resumed run has its own weights
        report = load_initial_weights(model, cfg)  # in every process, before DDP: they start equal
        if main and report is not None:
            print(f"initial weights from {report}")
    distributed.barrier()  # every process has read the run folder before the main one writes to it
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        remove_staging(work_dir)
        save_config(cfg, work_dir / CONFIG)
    model.to(device)
    if world > 1:
        model = distributed.convert_sync_batchnorm(model, device)
    loss_module: nn.Module = _Losses(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(model, cfg.optim)
    precision = run_precision(cfg.amp, device)
    if main and progress:
        print(f"precision {precision.name} ({precision.reason})")
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")  # bf16 needs no scaling
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema)

    best = state.get("best")  # {"metric", "value", "step"} of the best evaluated checkpoint
    if checkpoint is not None:
        if main:
            print(f"resuming from step {start} of {checkpoint.parent.parent}")
        load_weights(model, checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            load_weights(ema.module, checkpoint, ema=True)

    sampler = TrainSampler(len(train_set), cfg.data.batch_size, cfg.seed, rank, world, start * cfg.grad_accum)
    loader = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=getattr(train_set, "collate_fn", None),  # detection: lists of images and targets
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
    result: dict[str, Any] = {"step": start, "best": best, "precision": precision.name}

    def notify(event: str, info: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(event, info)

    def save(step: int) -> Path:
        path = work_dir / "checkpoints" / f"iter_{step:07d}"
        if main:
            rng = {"rng_cpu": torch.get_rng_state()}
            if device.type == "cuda":
                rng["rng_cuda"] = torch.cuda.get_rng_state(device)
            state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "best": best, **rng}
            save_checkpoint(work_dir, step, model, cfg, state, ema.module if ema is not None else None)
            keep = [work_dir / "checkpoints" / f"iter_{best['step']:07d}"] if best else []
            prune_checkpoints(work_dir, cfg.keep_checkpoints, keep)
            notify("checkpoint", {"step": step, "path": str(path)})
        distributed.barrier()
        return path

    def run_eval(step: int) -> dict[str, Any]:
        metrics = task.evaluate(
            cfg, ema.module if ema is not None else model, val_set, device, rank, world, progress
        )
        if main:
            log.write(step, {f"val/{name}": metrics[name] for name in task.metric_names if name in metrics})
        notify("eval", {"step": step, "metrics": metrics})
        return metrics

    model.train()
    tic = time.perf_counter()
    pending: dict[str, float] = {}  # training figures summed since the last log row
    pending_steps = 0
    with _deferred_interrupt() as interrupt:
        for step in range(start, cfg.iters):
            lr = learning_rate(step, cfg.iters, cfg.optim.lr, cfg.schedule)
            set_learning_rate(optimizer, lr)
            totals: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                images, targets = (to_device(t, device) for t in next(batches))
                # Gradients are all-reduced only on the last micro-step: syncing each one would cost
                # grad_accum all-reduces for the same result.
                last = micro == cfg.grad_accum - 1
                sync = contextlib.nullcontext() if last or world == 1 else loss_module.no_sync()
                with sync, autocast(precision, device):
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
            if ema is not None:  # timm counts updates from 1; the first one copies the weights
                ema.update(model, step=step + 1)

            done = step + 1
            elapsed, tic = time.perf_counter() - tic, time.perf_counter()
            rate = cfg.data.batch_size * world * cfg.grad_accum / max(elapsed, 1e-9)
            result.update(step=done, losses=totals, lr=lr)
            for key, value in {**totals, "img_per_s": rate}.items():
                pending[key] = pending.get(key, 0.0) + value
            pending_steps += 1
            if main and (done % cfg.log_interval == 0 or done == cfg.iters):  # means since the last row
                log.write(
                    done, {**{f"train/{k}": v / pending_steps for k, v in pending.items()}, "train/lr": lr}
                )
                pending, pending_steps = {}, 0
            bar.set_postfix(loss=f"{totals['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
            bar.update(1)
            notify("step", {"step": done, "losses": totals, "lr": lr, "img_per_s": rate})

            improved = False
            if val_set is not None and (
                done == cfg.iters or (cfg.eval.interval and done % cfg.eval.interval == 0)
            ):
                result["metrics"] = run_eval(done)
                value = result["metrics"][task.best_metric]
                if best is None or value > best["value"]:
                    best = result["best"] = {"metric": task.best_metric, "value": value, "step": done}
                    improved = True
            stop = distributed.any_process(interrupt.is_set(), device)
            if done % cfg.checkpoint_interval == 0 or done == cfg.iters or improved or stop:
                path = save(done)
            if stop:
                bar.close()
                log.close()
                raise KeyboardInterrupt(f"interrupted at step {done}; saved {path}")
    bar.close()
    log.close()
    return result
