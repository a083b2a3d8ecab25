"""``benchmarks/gpu_smoke.py`` on the CPU: its table and exit codes, its Predictor part on a tiny model,
the way it runs a notebook, and one line (exit code 2) on a machine without CUDA. The GPU run itself
needs a GPU machine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_smoke.py"
spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
gpu_smoke = sys.modules["gpu_smoke"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(gpu_smoke)

TINY_PREDICTOR = ["--device", "cpu", "--only", "predictor", "--tiny", "--size", "64", "--repeats", "2"]


def test_predictor_part_runs_on_the_cpu_and_writes_its_table(tmp_path):
    out = tmp_path / "smoke.md"
    assert gpu_smoke.main([*TINY_PREDICTOR, "--models", "setr_naive_vit_base", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "# GPU smoke: CPU"
    rows = [line.split(" | ") for line in lines if line.startswith("| predictor |")]
    calls = [row[1] for row in rows]
    assert calls == [
        "setr_naive_vit_base: build, to cpu",
        "setr_naive_vit_base: predict",
        "setr_naive_vit_base: set_image",
        "setr_naive_vit_base: click on 4 sites",
    ]
    assert all(row[-1] == "ok |" and float(row[2]) > 0 for row in rows)
    assert all(float(row[3]) > 0 for row in rows[1:])  # the repeated calls' best


def test_a_failing_call_is_reported_and_sets_the_exit_code(capsys):
    assert gpu_smoke.main([*TINY_PREDICTOR, "--models", "no_such_model"]) == 1
    row = "| predictor | no_such_model: build, to cpu |  |  |  | FAILED: ValueError: unknown model 'no_such_model'"
    assert row in capsys.readouterr().out


def test_a_notebook_runs_with_its_parameters_from_the_environment(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import json, os\nassert json.loads(os.environ['WORKBENCH_NB_PARAMETERS']) == {'STEPS': 2}\n"
            "assert os.environ['CUDA_VISIBLE_DEVICES'] == ''"
        )
    ]
    path = tmp_path / "check.ipynb"
    nbformat.write(notebook, path)
    assert gpu_smoke._run_notebook(path, {"STEPS": 2}, timeout=60, cpu=True) is None  # no CUDA: no peak


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "smoke.md"
    assert gpu_smoke.main(["--out", str(out)]) == 2
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "no CUDA GPU" in printed
    assert not out.exists()
