"""Detectors under DDP: `torchrun --nproc_per_node 2 -m workbench train` on the demo detection set trains,
evaluates with the COCO evaluator over both processes' shares, checkpoints and resumes.

Two processes cannot reproduce one process step for step here (unlike the segmentation DDP test):
torchvision's RPN and RoI samplers draw their anchors and proposals from each process's own random
stream. What must hold is that the processes run in step (a tensor without a gradient stops DDP), the
same tensors move as in one process with the same global batch (some stay put by design at this size:
the adapter's injector query norms sit behind zero-initialised projections and a zero gamma; HLG's
global attention over a single window has a constant softmax), the evaluation runs over both
processes' shares of the validation set, and a run resumes.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import tiny_detection_config
from workbench.config import save_config
from workbench.engine import train


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(config, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "workbench", "train", str(config), *overrides,
    ]  # fmt: skip
    return subprocess.run(
        command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["gpvit_l1_maskrcnn", "hlg_small_retinanet"])
def test_a_detector_trains_evaluates_and_resumes_on_two_processes(name, tmp_path):
    work_dir = tmp_path / "run"
    cfg = tiny_detection_config(name, work_dir, iters=3, checkpoint_interval=1)
    cfg.eval.interval = 3
    save_config(cfg, tmp_path / "config.yaml")
    done = _torchrun(tmp_path / "config.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    single_dir = tmp_path / "single"
    train(replace(cfg, work_dir=str(single_dir), data=replace(cfg.data, batch_size=4)), progress=False)

    def unchanged(run: Path) -> list[str]:
        first = load_file(str(run / "checkpoints" / "iter_0000001" / "model.safetensors"))
        third = load_file(str(run / "checkpoints" / "iter_0000003" / "model.safetensors"))
        return sorted(
            key
            for key, value in third.items()
            if value.is_floating_point()
            and not key.endswith(("running_mean", "running_var"))
            and torch.equal(value, first[key])
        )

    assert unchanged(work_dir) == unchanged(single_dir)

    rows = list(csv.DictReader((work_dir / "log.csv").open()))
    evaluated = [row for row in rows if row.get("val/bbox_mAP")]
    assert [int(row["step"]) for row in evaluated] == [3]
    assert bool(evaluated[0].get("val/segm_mAP")) == name.endswith(
        "_maskrcnn"
    )  # mask figures where masks are

    resumed = _torchrun(tmp_path / "config.yaml", "iters=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 3" in resumed.stdout + resumed.stderr
    assert (work_dir / "checkpoints" / "iter_0000004" / "model.safetensors").is_file()
