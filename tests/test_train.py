"""Training: it learns, it resumes exactly after a kill, DDP matches one process, NaN stops it, CLI."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from workbench.cli import main
from workbench.config import load_config
from workbench.data import build_datasets
from workbench.engine import ConfusionMatrix, evaluate, train

ROOT = Path(__file__).resolve().parents[1]


def _config(name: str, work_dir: Path, *overrides: str):
    return load_config(ROOT / "configs" / name, [f"work_dir={work_dir}", *overrides])


def _losses(work_dir: Path) -> dict[int, float]:
    with (work_dir / "log.csv").open() as f:
        return {
            int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")
        }


def _majority_miou(val_set, num_classes: int) -> float:
    """mIoU of always predicting the most frequent class: what a model that learned nothing scores."""
    labels = [val_set[i][1] for i in range(len(val_set))]
    majority = torch.bincount(torch.cat([t.flatten() for t in labels]), minlength=num_classes).argmax()
    matrix = ConfusionMatrix(num_classes)
    for target in labels:
        matrix.update(torch.full_like(target, int(majority)), target)
    return matrix.metrics()["mIoU"]


def test_it_learns_shapes_on_a_short_budget(tmp_path):
    """120 steps of the demo GPViT (batch 4, 30 s): the loss falls and mIoU clearly beats the
    majority-class baseline, i.e. the model segments shapes, not just the background."""
    overrides = (
        "iters=120",
        "log_interval=1",
        "data.batch_size=4",
        "data.demo_train=160",
        "data.demo_val=32",
        "data.num_workers=0",
    )
    cfg = _config(
        "demo_gpvit.yaml",
        tmp_path,
        *overrides,
        "optim.lr=0.002",
        "schedule.warmup_iters=10",
        "checkpoint_interval=1000",
    )
    result = train(cfg, progress=False)
    losses = _losses(tmp_path)
    first, last = np.mean([losses[s] for s in range(1, 11)]), np.mean([losses[s] for s in range(111, 121)])
    assert last < 0.7 * first, f"loss {first:.3f} -> {last:.3f}"
    _, val_set = build_datasets(cfg.data)
    chance = _majority_miou(val_set, 6)
    assert result["metrics"]["mIoU"] > chance + 4, (
        f"mIoU {result['metrics']['mIoU']:.1f} vs chance {chance:.1f}"
    )


def test_setr_loss_falls(tmp_path):
    train(_config("tiny_setr.yaml", tmp_path, "iters=60", "checkpoint_interval=1000"), progress=False)
    losses = _losses(tmp_path)
    assert np.mean([losses[s] for s in range(56, 61)]) < 0.7 * np.mean([losses[s] for s in range(1, 6)])


def test_resume_after_a_kill_gives_the_same_losses(tmp_path):
    overrides = ("iters=12", "checkpoint_interval=4")
    uninterrupted = _config("tiny_gpvit.yaml", tmp_path / "a", *overrides)
    train(uninterrupted, progress=False)
    interrupted = tmp_path / "b"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "workbench",
        "train",
        str(ROOT / "configs" / "tiny_gpvit.yaml"),
        *overrides,
        f"work_dir={interrupted}",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = interrupted / "checkpoints" / "iter_0000004"
    deadline = time.time() + 240
    while not (checkpoint / "state.pt").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (checkpoint / "state.pt").is_file(), "the training subprocess never wrote its step-4 checkpoint"
    train(_config("tiny_gpvit.yaml", interrupted, *overrides), resume=checkpoint, progress=False)
    expected, resumed = _losses(tmp_path / "a"), _losses(interrupted)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"
    final_a = load_file(str(tmp_path / "a" / "checkpoints" / "iter_0000012" / "model.safetensors"))
    final_b = load_file(str(interrupted / "checkpoints" / "iter_0000012" / "model.safetensors"))
    for key, value in final_a.items():
        torch.testing.assert_close(final_b[key], value, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    common = (
        "iters=3",
        "checkpoint_interval=3",
        "optim.optimizer=sgd",
        "optim.lr=0.05",
        "data.ratio_range=[1.0,1.0]",
        "model.kwargs.dropout=0.0",  # dropout masks would differ between one and two processes
    )
    train(_config("tiny_gpvit.yaml", tmp_path / "single", *common, "data.batch_size=4"), progress=False)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "workbench", "train", str(ROOT / "configs" / "tiny_gpvit.yaml"),
        *common, "data.batch_size=2", f"work_dir={tmp_path / 'ddp'}",
    ]  # fmt: skip
    done = subprocess.run(
        command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    single = load_file(str(tmp_path / "single" / "checkpoints" / "iter_0000003" / "model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "checkpoints" / "iter_0000003" / "model.safetensors"))
    assert single.keys() == ddp.keys()
    for key, value in single.items():
        torch.testing.assert_close(
            ddp[key].to(value.dtype), value, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
        )


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    from workbench.engine.train import build_model

    cfg = _config("tiny_gpvit.yaml", tmp_path, "iters=10", "checkpoint_interval=2")
    model = build_model(cfg)
    honest = model.losses
    calls = []

    def poisoned(images, targets):
        calls.append(1)
        losses = honest(images, targets)
        if len(calls) == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    model.losses = poisoned
    with pytest.raises(
        FloatingPointError, match=r"loss is nan at step 3; stopped\. Last good checkpoint: .*iter_0000002"
    ):
        train(cfg, model=model, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("iter_*")) == ["iter_0000002"]


def test_cli_train_eval_predict(tmp_path, capsys):
    config = str(ROOT / "configs" / "tiny_setr.yaml")
    run = tmp_path / "run"
    assert main(["train", config, "iters=4", "checkpoint_interval=2", f"work_dir={run}"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert (run / "config.yaml").is_file() and (run / "log.csv").is_file()
    assert any((run / "tensorboard").iterdir())
    assert main(["eval", config, "--checkpoint", str(run)]) == 0
    assert "aAcc" in capsys.readouterr().out
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    assert mask.shape == (40, 56, 3)
    assert main(["eval", config, "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err


def test_evaluate_reports_per_class_metrics(tmp_path):
    cfg = _config("tiny_gpvit.yaml", tmp_path)
    from workbench.engine.train import build_model

    model = build_model(cfg)
    _, val_set = build_datasets(cfg.data)
    metrics = evaluate(model, val_set, cfg.eval, 6, progress=False)
    assert set(metrics["IoU"]) == {"background", "disc", "square", "triangle", "ring", "cross"}
    assert 0 <= metrics["mIoU"] <= 100 and 0 <= metrics["aAcc"] <= 100


def test_classification_training_with_mixup(tmp_path):
    """Two classes of textures (horizontal vs vertical stripes) in ImageNet-style folders."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 8)):
        for label, axis in (("horizontal", 0), ("vertical", 1)):
            for i in range(count):
                period = rng.integers(4, 9)
                stripes = (np.arange(48) // period % 2).astype(np.uint8) * 200
                image = np.repeat(np.expand_dims(stripes, 1 - axis), 48, axis=1 - axis)
                folder = tmp_path / "data" / split / label
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.stack([image] * 3, -1)).save(folder / f"{i}.png")
    overrides = [
        "task=classification", "model.name=gpvit_l1", f"data.root={tmp_path / 'data'}", "data.dataset=imagefolder",
        "data.crop_size=32", "data.mixup=0.8", "data.cutmix=1.0", "data.batch_size=8", "iters=12",
        "checkpoint_interval=12", "model.kwargs={embed_dim: 24, depth: 4, group_layers: {1: 8, 3: 4}}",
    ]  # fmt: skip
    cfg = _config("tiny_gpvit.yaml", tmp_path / "run", *overrides)
    result = train(cfg, progress=False)
    assert set(result["metrics"]) == {"top1", "top5"} and 0 <= result["metrics"]["top1"] <= 100
    assert result["metrics"]["top5"] == 100.0  # two classes: the true one is always in the top five
    assert all(np.isfinite(list(_losses(tmp_path / "run").values())))


def test_ema_accumulation_clipping_and_callbacks(tmp_path):
    events = []
    cfg = _config(
        "tiny_gpvit.yaml",
        tmp_path,
        "iters=4",
        "checkpoint_interval=2",
        "ema=0.5",
        "grad_accum=2",
        "clip_grad=0.5",
    )
    result = train(
        cfg, callbacks=[lambda event, info: events.append((event, info.get("step")))], progress=False
    )
    assert [e for e in events if e[0] == "step"] == [("step", s) for s in (1, 2, 3, 4)]
    assert ("checkpoint", 2) in events and ("eval", 4) in events and "mIoU" in result["metrics"]
    folder = tmp_path / "checkpoints" / "iter_0000004"
    model, ema = load_file(str(folder / "model.safetensors")), load_file(str(folder / "ema.safetensors"))
    assert model.keys() == ema.keys()
    assert any(not torch.equal(model[k], ema[k]) for k in model if model[k].is_floating_point())
    assert (
        main(["eval", str(ROOT / "configs" / "tiny_gpvit.yaml"), "--checkpoint", str(folder), "--ema"]) == 0
    )


def test_log_rows_average_the_steps_of_each_interval(tmp_path):
    train(_config("tiny_setr.yaml", tmp_path / "every", "iters=6", "checkpoint_interval=100"), progress=False)
    train(
        _config(
            "tiny_setr.yaml", tmp_path / "thirds", "iters=6", "checkpoint_interval=100", "log_interval=3"
        ),
        progress=False,
    )
    every, thirds = _losses(tmp_path / "every"), _losses(tmp_path / "thirds")
    assert sorted(thirds) == [3, 6]
    assert thirds[3] == pytest.approx(np.mean([every[s] for s in (1, 2, 3)]), rel=1e-5)
    assert thirds[6] == pytest.approx(np.mean([every[s] for s in (4, 5, 6)]), rel=1e-5)
