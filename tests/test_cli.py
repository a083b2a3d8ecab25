"""The ``workbench`` command: tables, help, overrides anywhere, predict's output names, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny import tiny_checkpoint
from workbench import cli
from workbench.cli import build_parser, main
from workbench.config import resolve_config
from workbench.inference.folder import output_names
from workbench.models import model_info
from workbench.models.complexity import build_on_meta, count_params


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m workbench ARGS`` as a user runs it (about 3 s: the import of torch)."""
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=cwd,
        timeout=120,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbench: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A (randomly initialised) tiny SETR checkpoint folder, as ``workbench convert`` writes one."""
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"), "tiny_setr")


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


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
    done = run_cli("models", "setr_naive_vit_base")
    assert done.returncode == 0, done.stderr
    assert "setr_naive_vit_base" in done.stdout and "GFLOPs" in done.stdout


def test_help_documents_every_argument_with_an_example(capsys):
    parser, commands = build_parser()
    with pytest.raises(SystemExit, match="0"):
        main(["--version"])
    assert capsys.readouterr().out.startswith("workbench 0.")
    assert "train, evaluate" in parser.description
    assert set(commands) == {
        "models",
        "train",
        "eval",
        "predict",
        "convert",
        "export",
        "study",
        "demo",
        "bench",
    }
    for name, command in commands.items():
        assert f"workbench {name}" in command.epilog, name
        for action in command._actions:
            assert action.help, (name, action.dest)
    assert "(default: auto)" in commands["train"].format_help()  # defaults are shown
    assert "{auto,workbench," in commands["convert"].format_help()  # and choices


def test_overrides_are_accepted_after_options(checkpoint, capsys):
    """They reach the config (a bad one is reported by name) instead of "unrecognized arguments"."""
    argv = ["eval", "tiny_setr", "--checkpoint", str(checkpoint), "eval.flip=true", "eval.mode=sliding"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "workbench: override 'eval.mode=sliding': eval.mode must be one of whole, slide, got 'sliding'\n"
    )


def test_argparse_errors_show_the_subcommand_usage(checkpoint, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["eval", "tiny_setr", "--checkpoint", str(checkpoint), "--flip"])
    err = capsys.readouterr().err
    assert err.startswith("usage: workbench eval") and "unrecognized arguments: --flip" in err
    with pytest.raises(SystemExit, match="2"):
        main(["predict", "x.png"])
    assert capsys.readouterr().err.startswith("usage: workbench predict")


def test_library_errors_are_one_line_and_ctrl_c_is_130(monkeypatch, capsys):
    def layout_error(args):
        raise ValueError("/data/ade does not exist. Expected layout:\nroot/images/training/*.jpg")

    monkeypatch.setattr(cli, "_demo", layout_error)
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == (
        "workbench: /data/ade does not exist. Expected layout: root/images/training/*.jpg\n"
    )

    def interrupted(args):
        raise KeyboardInterrupt("interrupted at step 3; saved runs/x/checkpoints/iter_0000003")

    monkeypatch.setattr(cli, "_demo", interrupted)
    assert main(["demo"]) == 130
    assert (
        capsys.readouterr().err == "workbench: interrupted at step 3; saved runs/x/checkpoints/iter_0000003\n"
    )


def test_the_demo_preset_resolves_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = build_parser()[1]["demo"].get_default("config")
    assert resolve_config(default).is_file()


def test_output_names_tell_images_of_the_same_name_apart(tmp_path):
    def names(*paths: str) -> list[str]:
        return output_names([tmp_path / path for path in paths])

    assert names("a/x.jpg", "b/x.jpg", "y.jpg") == ["a_x", "b_x", "y"]
    assert names("a/c/x.jpg", "b/c/x.jpg") == ["a_c_x", "b_c_x"]
    assert names("x.jpg", "x.png") == ["x_jpg", "x_png"]
    assert len(set(names("a/x.jpg", "b/x.jpg", "c/a_x.jpg"))) == 3
    with pytest.raises(ValueError, match=r"image .*x\.jpg is given twice"):
        names("x.jpg", "a/../x.jpg")


def test_predict_never_overwrites_and_names_do_not_collide(tmp_path, checkpoint):
    first, second = _photo(tmp_path / "a" / "x.png", 0), _photo(tmp_path / "b" / "x.png", 1)
    out = tmp_path / "out"
    both = [str(first), str(second), "--checkpoint", str(checkpoint), "--out", str(out), "--overlays"]
    assert main(["predict", *both]) == 0
    written = {path.name: path.read_bytes() for path in out.glob("*.png")}
    assert set(written) == {f"{n}_{k}.png" for n in ("a_x", "b_x") for k in ("mask", "overlay", "labels")}
    assert written["a_x_overlay.png"] != written["b_x_overlay.png"]  # two images, two results
    assert main(["predict", *both]) == 0  # the same images again: complete, skipped, untouched
    assert all((out / name).read_bytes() == data for name, data in written.items())

    _photo(first, 2)  # a new photo under the same name: its results must not replace the old ones
    # Alone, a/x.png is "x": no clash with "a_x".
    assert main(["predict", str(first), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    done = run_cli("predict", *both)
    assert_one_line_error(done, str(out / "a_x_labels.png"), "exists", "--overwrite")
    assert all((out / name).read_bytes() == data for name, data in written.items())

    assert main(["predict", *both, "--overwrite"]) == 0
    assert (out / "a_x_overlay.png").read_bytes() != written["a_x_overlay.png"]
    assert (out / "b_x_overlay.png").read_bytes() == written["b_x_overlay.png"]  # same photo, same result


def test_predict_reads_16_bit_images_scaled_like_their_8_bit_twin(tmp_path, checkpoint):
    """A 16-bit grey PNG (mode I;16) is scaled to 0..255, not clipped to white: same result as 8-bit."""
    grey = np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint16)
    Image.fromarray(grey * 257).save(tmp_path / "deep.png")  # 255 * 257 = 65535
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "flat.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    images = [str(tmp_path / "deep.png"), str(tmp_path / "flat.png")]
    out = ["--out", str(tmp_path / "out"), "--overlays"]
    assert main(["predict", *images, "--checkpoint", str(checkpoint), *out]) == 0
    for kind in ("overlay", "labels"):
        deep, flat = (np.asarray(Image.open(tmp_path / "out" / f"{n}_{kind}.png")) for n in ("deep", "flat"))
        np.testing.assert_array_equal(deep, flat)


def test_impossible_out_and_work_dir_are_one_line(tmp_path, checkpoint, capsys):
    photo, blocker = _photo(tmp_path / "x.png", 0), tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["predict", str(photo), "--checkpoint", str(checkpoint), "--out", str(blocker / "out")]) == 2
    assert (
        capsys.readouterr().err == f"workbench: --out {blocker / 'out'}: {blocker} is a file, not a folder\n"
    )
    assert main(["train", "tiny_setr", f"work_dir={blocker}/run", "iters=2"]) == 2
    assert (
        capsys.readouterr().err
        == f"workbench: work_dir {blocker / 'run'}: {blocker} is a file, not a folder\n"
    )
    assert blocker.read_text() == "not a folder"


def test_a_read_only_out_folder_is_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    photo, read_only = _photo(tmp_path / "x.png", 0), tmp_path / "read-only"
    read_only.mkdir(mode=0o555)

    def refused(*_args, **_kwargs):  # root may write anywhere: the file system's refusal, simulated
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    assert main(["predict", str(photo), "--checkpoint", str(checkpoint), "--out", str(read_only)]) == 2
    assert f"--out {read_only}: cannot write in {read_only}" in capsys.readouterr().err


def test_a_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("iters: 4\ndata: {batch_size: 2\n")
    assert_one_line_error(run_cli("train", str(config)), str(config), "YAML syntax error at line 3")
