"""The ``workbench`` command."""

from __future__ import annotations

import os
import subprocess
import sys

from workbench.cli import main
from workbench.models import model_info
from workbench.models.complexity import build_on_meta, count_params


def test_models_table_shows_measured_counts_beside_the_paper(capsys):
    assert main(["models", "setr_*_base"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("setr_")}
    assert set(rows) == {f"setr_{d}_{e}_base" for d in ("naive", "pup", "mla") for e in ("vit", "deit")}
    for name, row in rows.items():
        paper = model_info(name).paper
        measured = count_params(build_on_meta(name, num_classes=150, img_size=512)) / 1e6
        assert row[2] == f"{measured:.2f}" and row[3] == f"{paper.params_m:.2f}"
        assert abs(float(row[4].rstrip("%"))) < 0.5
    assert "ADE20K builds" in out  # the counting-convention footnote


def test_unknown_pattern_is_an_error(capsys):
    assert main(["models", "gpvit_l9*"]) == 2
    assert "no registered model matches 'gpvit_l9*'" in capsys.readouterr().err


def test_console_script_runs():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "models", "setr_naive_vit_base"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "setr_naive_vit_base" in done.stdout and "GFLOPs" in done.stdout
