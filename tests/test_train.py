"""Training: it learns, it resumes exactly after a kill, DDP matches one process, NaN stops it, CLI."""

from __future__ import annotations

import csv
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from workbench.build import build_datasets, build_model
from workbench.cli import main
from workbench.config import EvalConfig, load_config
from workbench.data import Classes
from workbench.engine import ConfusionMatrix, evaluate, train
from workbench.engine.classification import evaluate_classifier

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
    """150 steps of the demo GPViT (batch 4, ~40 s): the loss falls and mIoU clearly beats the
    majority-class baseline, i.e. the model segments shapes, not just the background (measured:
    19.0 against a baseline of 13.1)."""
    overrides = (
        "iters=150",
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
        "optim.lr=0.001",
        "schedule.warmup_iters=10",
        "checkpoint_interval=1000",
    )
    result = train(cfg, progress=False)
    losses = _losses(tmp_path)
    first, last = np.mean([losses[s] for s in range(1, 11)]), np.mean([losses[s] for s in range(141, 151)])
    assert last < 0.7 * first, f"loss {first:.3f} -> {last:.3f}"
    _, val_set = build_datasets(cfg)
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
    assert main(["train", config, "iters=4", "checkpoint_interval=2", "ema=0.5", f"work_dir={run}"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert (run / "config.yaml").is_file() and (run / "log.csv").is_file()
    assert any((run / "tensorboard").iterdir())
    for weights in ([], ["--ema"]):
        assert main(["eval", config, "--checkpoint", str(run), *weights]) == 0
        assert "aAcc" in capsys.readouterr().out
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    assert mask.shape == (40, 56, 3)
    assert main(["eval", config, "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err


class _Echo(nn.Module):
    """Predicts, at every pixel, the channel with the largest value: the images are the logits."""

    num_classes = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


class _Pairs(list):
    classes = Classes(("sky", "road", "car"), ((0, 0, 255), (128, 64, 128), (0, 0, 142)))


def test_evaluate_gives_the_metrics_of_a_known_confusion():
    """Two 2x3 images whose predictions and labels make a confusion matrix worked out by hand."""
    predicted = [torch.tensor([[0, 0, 1], [1, 2, 2]]), torch.tensor([[0, 1, 1], [2, 2, 2]])]
    labels = [torch.tensor([[0, 0, 0], [1, 1, 255]]), torch.tensor([[0, 1, 1], [2, 2, 1]])]
    logits = [F.one_hot(p, 3).permute(2, 0, 1).float() for p in predicted]
    metrics = evaluate(_Echo(), _Pairs(zip(logits, labels, strict=True)), EvalConfig(), 3, progress=False)
    # Rows: truth sky / road / car; columns: predicted. The ignored pixel (255) counts nowhere.
    # sky   [3, 1, 0]   IoU 3 / (4 + 3 - 3) = 3/4   Acc 3/4
    # road  [0, 3, 2]   IoU 3 / (5 + 4 - 3) = 1/2   Acc 3/5
    # car   [0, 0, 2]   IoU 2 / (2 + 4 - 2) = 1/2   Acc 2/2     8 of 11 pixels right
    assert metrics["IoU"] == pytest.approx({"sky": 75.0, "road": 50.0, "car": 50.0})
    assert metrics["Acc"] == pytest.approx({"sky": 75.0, "road": 60.0, "car": 100.0})
    assert metrics["mIoU"] == pytest.approx(175 / 3) and metrics["aAcc"] == pytest.approx(800 / 11)
    assert metrics["mAcc"] == pytest.approx(235 / 3)


class _FixedScores(nn.Module):
    """Class scores looked up by the image's first pixel value (its index)."""

    num_classes = 6

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scores[images[:, 0, 0, 0].long()]


def test_top1_and_top5_accuracy_of_known_scores():
    scores = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # label 0: top-1
            [1.0, 9, 2, 3, 4, 5],  # label 2: second best -> top-5 only
            [9.0, 8, 7, 6, 5, 4],  # label 5: last of six -> neither
            [0.0, 1, 2, 3, 4, 9],  # label 5: top-1
        ]
    )
    dataset = [(torch.full((3, 2, 2), float(i)), label) for i, label in enumerate((0, 2, 5, 5))]
    metrics = evaluate_classifier(_FixedScores(scores), dataset, "cpu", progress=False)
    assert metrics == {"top1": 50.0, "top5": 75.0}


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
    assert set(result["metrics"]) == {"top1", "top5"} and result["best"]["metric"] == "top1"
    assert all(np.isfinite(list(_losses(tmp_path / "run").values())))
    with (tmp_path / "run" / "log.csv").open() as f:
        assert [row["step"] for row in csv.DictReader(f) if row.get("val/top1")] == ["12"]


class _PixelSegmentor(nn.Module):
    """A 1x1 convolution: no batch statistics or dropout, so one step's update is plain SGD maths."""

    num_classes = 6

    def __init__(self) -> None:
        super().__init__()
        self.classify = nn.Conv2d(3, 6, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(images)

    def losses(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(self(images), targets, ignore_index=255)
        return {"loss_main": loss, "loss": loss}


def _sgd_run(work_dir: Path, *overrides: str):
    """A tiny demo set without padding (every image has as many labelled pixels), SGD, constant LR."""
    cfg = _config(
        "tiny_setr.yaml", work_dir, "data.ratio_range=[1.0,1.0]", "data.demo_train=16", "data.demo_val=2",
        "optim.optimizer=sgd", "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.lr=0.5",
        "schedule.policy=constant", "schedule.warmup_iters=0", "checkpoint_interval=100", *overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = _PixelSegmentor()
    return cfg, model, build_datasets(cfg)


def test_accumulating_two_micro_batches_equals_one_batch_of_twice_the_size(tmp_path):
    cfg, accumulated, data = _sgd_run(tmp_path / "a", "iters=1", "data.batch_size=2", "grad_accum=2")
    start = [p.detach().clone() for p in accumulated.parameters()]
    train(cfg, model=accumulated, datasets=data, progress=False)
    cfg, whole, data = _sgd_run(tmp_path / "b", "iters=1", "data.batch_size=4")
    train(cfg, model=whole, datasets=data, progress=False)
    for before, a, b in zip(start, accumulated.parameters(), whole.parameters(), strict=True):
        assert (a - before).abs().max() > 1e-3  # the step moved the weights
        torch.testing.assert_close(a - before, b - before, rtol=1e-4, atol=1e-6)


def test_clipping_bounds_the_gradient_norm_of_the_applied_step(tmp_path):
    """With SGD the step is -lr x gradient: its norm over lr is the gradient norm actually applied."""
    steps = {}
    for clip in (0.0, 0.05):
        cfg, model, data = _sgd_run(tmp_path / str(clip), "iters=1", f"clip_grad={clip}")
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        train(cfg, model=model, datasets=data, progress=False)
        steps[clip] = (torch.cat([p.detach().flatten() for p in model.parameters()]) - start) / cfg.optim.lr
    unclipped, clipped = steps[0.0].norm(), steps[0.05].norm()
    assert unclipped > 0.1  # clipping has something to do
    assert clipped == pytest.approx(0.05, rel=1e-4)
    torch.testing.assert_close(steps[0.05], steps[0.0] * 0.05 / unclipped, rtol=1e-4, atol=1e-8)


def test_ema_weights_follow_the_formula_and_callbacks_see_every_event(tmp_path):
    """timm's ModelEmaV3: the first update copies the weights, then ema = d * ema + (1 - d) * weights."""
    cfg, model, data = _sgd_run(tmp_path, "iters=3", "ema=0.5", "checkpoint_interval=2")
    weights, events = [], []

    def record(event: str, info: dict) -> None:
        events.append((event, info["step"]))
        if event == "step":
            weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    result = train(cfg, model=model, datasets=data, callbacks=[record], progress=False)
    assert events == [
        ("step", 1), ("step", 2), ("checkpoint", 2), ("step", 3), ("eval", 3), ("checkpoint", 3)
    ]  # fmt: skip
    assert "mIoU" in result["metrics"]
    ema = load_file(str(tmp_path / "checkpoints" / "iter_0000003" / "ema.safetensors"))
    for key, value in ema.items():
        expected = 0.5 * (0.5 * weights[0][key] + 0.5 * weights[1][key]) + 0.5 * weights[2][key]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)


def test_train_leaves_the_global_random_state_and_the_process_group_as_it_found_them(tmp_path):
    """A notebook calling train() draws the same random numbers afterwards as it would have without."""

    def draws() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    cfg, model, data = _sgd_run(tmp_path, "iters=2", "seed=123")
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected = draws()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    train(cfg, model=model, datasets=data, progress=False)
    assert draws() == expected
    assert not torch.distributed.is_initialized()


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


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "workbench", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(done: subprocess.CompletedProcess, *mentions: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for mention in mentions:
        assert mention in done.stderr, done.stderr


@pytest.fixture(scope="module")
def finished_setr_run(tmp_path_factory) -> Path:
    """A finished two-step tiny SETR run."""
    run = tmp_path_factory.mktemp("runs") / "setr"
    train(_config("tiny_setr.yaml", run, "iters=2", "checkpoint_interval=1"), progress=False)
    return run


def test_a_run_of_another_model_is_refused_before_anything_is_written(finished_setr_run):
    before = _files(finished_setr_run)
    done = _cli(
        "train", str(ROOT / "configs" / "tiny_gpvit.yaml"), "iters=4", f"work_dir={finished_setr_run}"
    )
    _one_line_error(done, str(finished_setr_run), "setr_naive_vit_base", "gpvit_l1_segformer")
    assert _files(finished_setr_run) == before


def test_a_fresh_start_over_an_existing_run_is_refused(finished_setr_run):
    before = _files(finished_setr_run)
    config = str(ROOT / "configs" / "tiny_setr.yaml")
    done = _cli("train", config, "iters=4", f"work_dir={finished_setr_run}", "--resume", "none")
    _one_line_error(done, str(finished_setr_run), "already holds a run")
    assert _files(finished_setr_run) == before


def test_iters_below_the_runs_step_is_refused_and_the_config_kept(finished_setr_run):
    before = _files(finished_setr_run)
    done = _cli("train", str(ROOT / "configs" / "tiny_setr.yaml"), "iters=1", f"work_dir={finished_setr_run}")
    _one_line_error(done, "iters=1", "step 2")
    assert _files(finished_setr_run) == before


def test_a_finished_run_says_so_and_does_nothing(finished_setr_run, capsys):
    before = _files(finished_setr_run)
    config = str(ROOT / "configs" / "tiny_setr.yaml")
    assert main(["train", config, "iters=2", "checkpoint_interval=1", f"work_dir={finished_setr_run}"]) == 0
    assert f"{finished_setr_run} is finished (step 2 of 2); nothing to do" in capsys.readouterr().out
    assert _files(finished_setr_run) == before  # no second evaluation row, nothing rewritten


def test_retention_keeps_the_newest_and_the_best_checkpoints_and_resuming_says_so(tmp_path, capsys):
    cfg, model, data = _sgd_run(
        tmp_path, "iters=5", "checkpoint_interval=1", "keep_checkpoints=2", "eval.interval=1"
    )
    result = train(cfg, model=model, datasets=data, progress=False)
    kept = sorted(int(p.name[5:]) for p in (tmp_path / "checkpoints").glob("iter_*"))
    assert kept == sorted({4, 5, result["best"]["step"]})
    assert result["best"]["metric"] == "mIoU"
    stale = tmp_path / "checkpoints" / ".saving-killed"  # what a save killed halfway leaves
    stale.mkdir()
    cfg.iters = 6
    capsys.readouterr()
    train(cfg, model=model, datasets=data, progress=False)
    assert f"resuming from step 5 of {tmp_path}" in capsys.readouterr().out
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("iter_*"))[-2:] == [
        "iter_0000005",
        "iter_0000006",
    ]


def test_validation_labels_are_checked_before_the_first_step(tmp_path):
    cfg, model, (train_set, val_set) = _sgd_run(tmp_path, "iters=3")
    labels = val_set.pairs[1][1]
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full(np.asarray(Image.open(labels)).shape, 9, np.uint8)).save(bad)
    val_set.pairs[1] = (val_set.pairs[1][0], bad)
    steps = []
    with pytest.raises(ValueError, match=r"label map .*bad\.png holds values \[9\] outside 0\.\.5"):
        train(
            cfg,
            model=model,
            datasets=(train_set, val_set),
            callbacks=[lambda e, i: steps.append(e)],
            progress=False,
        )
    assert steps == [] and not tmp_path.joinpath("checkpoints").exists()
    cfg.eval.mode = "sliding"
    with pytest.raises(ValueError, match=r"eval\.mode must be one of whole, slide, got 'sliding'"):
        train(cfg, model=model, datasets=(train_set, train_set), progress=False)


def test_ctrl_c_saves_a_checkpoint_then_stops_with_one_line(tmp_path):
    config = str(ROOT / "configs" / "tiny_setr.yaml")
    command = [sys.executable, "-m", "workbench", "train", config, "iters=1000", f"work_dir={tmp_path}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not _logged_a_step(tmp_path):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]  # the lines before it are the progress bar's
    assert "Traceback" not in stderr and last.startswith("workbench: interrupted at step"), stderr
    saved = sorted((tmp_path / "checkpoints").glob("iter_*"))
    assert (
        len(saved) == 1
        and last == f"workbench: interrupted at step {int(saved[0].name[5:])}; saved {saved[0]}"
    )


def _logged_a_step(run: Path) -> bool:
    try:
        return bool(_losses(run))
    except (FileNotFoundError, KeyError, ValueError):
        return False
