"""``run_study``: a study over checkpoint folders into a run-style folder, resumable, never mixed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.tiny import tiny_checkpoint
from workbench.studies.run import STUDIES, run_study


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("models")
    return [
        tiny_checkpoint(root / "tiny_setr", "tiny_setr"),
        tiny_checkpoint(root / "tiny_gpvit", "tiny_gpvit"),
    ]


def _rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_a_study_writes_its_table_figure_and_settings_and_resumes(checkpoints, tmp_path):
    out = tmp_path / "lens"
    logged: list[str] = []
    tables = run_study("lens", checkpoints, out, count=2, batch_size=2, progress=False, log=logged.append)
    assert set(tables) == {"tiny_setr", "tiny_gpvit"}
    for name, table in tables.items():
        rows = _rows(out / name / "table.csv")
        assert len(rows) == len(table) and rows[-1]["layer"] == table[-1].layer
        assert (out / name / "figure.png").stat().st_size > 0
    assert "lens" in (out / "study.yaml").read_text()
    logged.clear()
    again = run_study("lens", checkpoints, out, count=2, batch_size=2, progress=False, log=logged.append)
    assert again == {} and sum("not measured again" in line for line in logged) == 2
    with pytest.raises(ValueError, match=r"holds a study with other settings \(count\)"):
        run_study("lens", checkpoints, out, count=3, batch_size=2, progress=False, log=logged.append)


def test_cka_across_models_adds_each_pair(checkpoints, tmp_path):
    tables = run_study("cka", checkpoints, tmp_path / "cka", count=8, batch_size=4, progress=False, log=print)
    assert set(tables) == {"tiny_setr", "tiny_gpvit", "cka_tiny_setr_vs_tiny_gpvit"}
    cross = tables["cka_tiny_setr_vs_tiny_gpvit"]
    assert {row.layer_x for row in cross} <= {f"blocks.{i}" for i in range(24)}
    assert all(0.0 <= row.cka <= 1.0 + 1e-6 for row in cross)


def test_unknown_study_and_no_model_are_refused(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="unknown study 'nope'; studies: cka, probes"):
        run_study("nope", checkpoints, tmp_path)
    with pytest.raises(ValueError, match="at least one model"):
        run_study("lens", [], tmp_path)
    assert set(STUDIES) == {"cka", "probes", "ablation", "lens", "statistics"}


def test_the_command_line_runs_a_study(checkpoints, tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "probes"
    argv = ["study", "probes", "--models", str(checkpoints[0]), "--out", str(out), "--count", "2"]
    assert main([*argv, "--steps", "2", "--batch-size", "2"]) == 0
    rows = _rows(out / "tiny_setr" / "table.csv")
    assert rows and {"layer", "mIoU"} <= set(rows[0])
    assert "1 table(s) written" in capsys.readouterr().out
    assert main([*argv, "--steps", "3", "--batch-size", "2"]) == 2  # other settings, same folder
    assert "holds a study with other settings (steps)" in capsys.readouterr().err


def test_checkpoints_of_two_runs_with_the_same_step_get_their_runs_names(checkpoints, tmp_path):
    """runs/a/checkpoints/iter_0100 and runs/b/checkpoints/iter_0100 are two models, never one folder
    (the second was once skipped as 'complete'); names that still clash are refused."""
    import shutil

    paths = []
    for run, source in zip(("run_a", "run_b"), checkpoints, strict=True):
        target = tmp_path / run / "checkpoints" / "iter_0000100"
        shutil.copytree(source, target)
        paths.append(target)
    tables = run_study("lens", paths, tmp_path / "lens", count=2, batch_size=2, progress=False, log=print)
    assert set(tables) == {"run_a", "run_b"}
    with pytest.raises(ValueError, match="two models would share the folder 'x'"):
        run_study("lens", [("x", paths[0]), ("x", paths[1])], tmp_path / "other", count=2, progress=False)


def test_a_model_the_study_does_not_apply_to_is_said_and_the_others_go_on(checkpoints, tmp_path):
    hlg = tiny_checkpoint(tmp_path / "tiny_hlg", "tiny_hlg")
    logged: list[str] = []
    tables = run_study(
        "lens", [checkpoints[0], hlg], tmp_path / "lens", count=2, progress=False, log=logged.append
    )
    assert set(tables) == {"tiny_setr"}
    assert any("tiny_hlg is not measured: " in line and "HLG" in line for line in logged)
    with pytest.raises(ValueError, match="lens measured no model: tiny_hlg: "):
        run_study("lens", [hlg], tmp_path / "only_hlg", count=2, progress=False, log=logged.append)
