"""`workbench bench`: its outputs' structure, the exponent fit, the budget skips and the memory probe."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from workbench.cli import main
from workbench.engine import bench


def test_exponent_fit_recovers_a_power_law():
    tokens = [256, 1024, 4096, 16384]
    noise = np.random.default_rng(0).uniform(0.97, 1.03, len(tokens))
    assert bench.fit_exponent(tokens, [3e-3 * n**1.7 * e for n, e in zip(tokens, noise, strict=True)]) == (
        pytest.approx(1.7, abs=0.03)
    )
    assert bench.fit_exponent([100, 400], [1.0, 16.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="two distinct token counts"):
        bench.fit_exponent([256, 256], [1.0, 1.1])
    with pytest.raises(ValueError, match="positive"):
        bench.fit_exponent([256, 1024], [0.0, 1.0])


def _synthetic(exponent: float, memory_per_token: float = 0.1):
    """A stand-in for ``measure``: latency tokens**exponent ms, memory linear in tokens."""

    def measure(spec, size, mode, precision="fp32", compiled=False, batch=1, layout="contiguous", **_):
        tokens = (size // spec.stride) ** 2
        row = bench.BenchRow(spec.name, spec.family, mode, precision, compiled, size, tokens, batch, "ok")
        row.layout = layout
        row.latency_ms = tokens**exponent
        row.throughput_img_s = batch / row.latency_ms * 1000
        row.peak_memory_mb = memory_per_token * tokens
        row.first_call_s = row.latency_ms / 1000
        return row

    return measure


def test_sizes_over_budget_are_skipped_and_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "measure", _synthetic(1.5))
    messages = []
    # vit: 16-pixel tokens; 64² -> 16 tokens (1.6 MB), 128² -> 64 (6.4 MB), 256² predicted 25.6 MB
    result = bench.run_bench(
        ["vit_base_patch16_224"], [256, 64, 128, 512], ["inference"], memory_budget_mb=10, log=messages.append
    )
    assert [(row.resolution, row.status) for row in result.rows] == [
        (64, "ok"),
        (128, "ok"),
        (256, "skipped"),
        (512, "skipped"),
    ]
    assert result.rows[2].note == "predicted 26 MB > memory budget 10 MB"
    assert result.rows[3].note.startswith("a smaller size was skipped (predicted 26 MB")
    assert (
        messages[2]
        == "vit_base_patch16_224 inference fp32 256²: skipped: predicted 26 MB > memory budget 10 MB"
    )
    report = bench.markdown(result)
    assert "## Not run" in report and "256²: skipped: predicted 26 MB" in report
    assert "- torch.compile: not timed in this run" in report and "- GPU: this run is CPU only" in report
    assert (
        result.environment["sizes"] == "64 128 256 512"
        and result.environment["batch"] == "1 (a training step: 2)"
    )
    # the fitted exponent uses the measured sizes only
    assert "| vit_base_patch16_224 | inference | fp32 | no | contiguous | 64², 128² | 1.50 |" in report

    timed = bench.run_bench(
        ["setr_hlg_small"], [64, 128, 256], ["train"], memory_budget_mb=1e9, time_budget_s=1.0
    )
    # hlg: 4-pixel tokens; 64² (256 tokens) runs 4.1 s; from one point time is taken as linear
    assert [row.status for row in timed.rows] == ["ok", "skipped", "skipped"]
    assert timed.rows[1].note.endswith("s per call > time budget 1 s")
    assert timed.rows[1].batch == 2  # a training step takes two images


def test_out_of_memory_is_a_skip(monkeypatch):
    synthetic = _synthetic(1.0)

    def measure(spec, size, mode, **kwargs):
        if size > 64:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return synthetic(spec, size, mode, **kwargs)

    monkeypatch.setattr(bench, "measure", measure)
    result = bench.run_bench(["vit_base_patch16_224"], [64, 128, 256], ["inference"], memory_budget_mb=1e9)
    assert [row.note for row in result.rows] == [
        "",
        "out of memory",
        "a smaller size was skipped (out of memory)",
    ]
    assert math.isnan(result.rows[1].latency_ms)


def test_bad_arguments_are_one_line_errors(capsys):
    with pytest.raises(ValueError, match="unknown bench model 'resnet50'"):
        bench.run_bench(["resnet50"])
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        bench.run_bench(precisions=["fp8"])
    assert main(["bench", "--quick", "--models", "vit_base_patch16_224", "--sizes", "0"]) == 2
    assert capsys.readouterr().err.startswith("workbench: sizes, batch and repeats must be positive")


def test_cpu_peak_memory_sees_an_allocation_after_a_larger_one():
    big = torch.ones(100_000_000 // 4)  # 100 MB: raises the high-water mark before the probe
    del big
    baseline = bench._reset_peak("cpu")
    tensor = torch.ones(50_000_000 // 4)  # 50 MB, touched
    assert bench._peak("cpu") - baseline >= 40
    del tensor


def test_quick_bench_writes_csv_markdown_and_plots(tmp_path, capsys):
    models = ["setr_hlg_small", "vit_base_patch16_224"]
    threads = torch.get_num_threads()
    assert main(["bench", "--quick", "--out", str(tmp_path), "--models", *models, "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # the setting does not outlive the command
    printed = capsys.readouterr().out
    assert "setr_hlg_small train fp32 64²:" in printed and f"wrote {tmp_path}/benchmarks.md" in printed

    lines = (tmp_path / "benchmarks.csv").read_text().splitlines()
    environment = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# "))
    assert environment["torch"] == torch.__version__ and environment["threads"] == "1"
    assert {"device", "timm", "date", "memory budget"} <= set(environment)
    rows = list(csv.DictReader(line for line in lines if not line.startswith("# ")))
    assert tuple(rows[0]) == bench.CSV_COLUMNS
    assert [(row["model"], row["mode"], row["resolution"]) for row in rows] == [
        (model, mode, size) for model in models for mode in ("inference", "train") for size in ("32", "64")
    ]
    assert all(row["status"] == "ok" and float(row["latency_ms"]) > 0 for row in rows)
    assert [row["batch"] for row in rows[:4]] == ["1", "1", "2", "2"]
    assert [row["tokens"] for row in rows[:2]] == ["64", "256"]  # HLG's stride-4 first stage

    report = (tmp_path / "benchmarks.md").read_text()
    assert f"- **torch**: {torch.__version__}" in report
    assert report.count("| setr_hlg_small | train | fp32 | no | contiguous | 32², 64² |") == 1  # exponent row
    assert "![benchmarks_train.png](benchmarks_train.png)" in report
    for mode in ("inference", "train"):
        assert (tmp_path / f"benchmarks_{mode}.png").read_bytes()[:4] == b"\x89PNG"


def test_layouts_are_a_dimension_of_the_grid_and_outputs_take_a_name(tmp_path):
    argv = ["bench", "--quick", "--out", str(tmp_path), "--models", "gpvit_l1", "--modes", "inference"]
    argv += ["--layouts", "contiguous", "channels_last", "--name", "fast", "--title", "Fast path"]
    assert main(argv) == 0
    lines = (tmp_path / "fast.csv").read_text().splitlines()
    rows = list(csv.DictReader(line for line in lines if not line.startswith("# ")))
    assert [(row["layout"], row["resolution"]) for row in rows] == [
        ("contiguous", "32"),
        ("contiguous", "64"),
        ("channels_last", "32"),
        ("channels_last", "64"),
    ]
    report = (tmp_path / "fast.md").read_text()
    assert (
        report.startswith("# Fast path\n")
        and "| gpvit_l1 | inference | fp32 | no | channels_last | 32² |" in report
    )
    assert (tmp_path / "fast_inference.png").read_bytes()[:4] == b"\x89PNG"


def test_figures_are_matplotlib_figures_with_a_line_per_series(monkeypatch):
    monkeypatch.setattr(bench, "measure", _synthetic(1.0))
    result = bench.run_bench(
        ["vit_base_patch16_224", "gpvit_l1_upernet"],
        [64, 128],
        ["inference"],
        ["fp32", "bf16"],
        memory_budget_mb=1e9,
    )
    plots = bench.figures(result)
    assert list(plots) == ["benchmarks_inference.png"]
    figure = plots["benchmarks_inference.png"]
    assert isinstance(figure, Figure)
    time_axes, memory_axes = figure.axes
    assert len(time_axes.lines) == len(memory_axes.lines) == 4
    assert time_axes.get_xscale() == "log" and time_axes.get_yscale() == "log"


def test_the_roofline_section_reads_each_inference_case_against_the_machines_limits(tmp_path):
    """``--roofline``: the machine's matmul and convolution GFLOP/s, and each eager inference case's
    achieved GFLOP/s = 2 x GMACs x batch / latency, as a share of the better of the two."""
    from workbench.engine.roofline import achieved_gflops, measure_roofline
    from workbench.models.complexity import count_gmacs

    assert achieved_gflops(144.4, 1200.0) == pytest.approx(240.67, abs=0.01)
    limits = measure_roofline("fp32", size=128, channels=16, spatial=8, repeats=1)
    assert limits.matmul_gflops > 0 and limits.conv_gflops > 0 and limits.best >= limits.matmul_gflops
    result = bench.run_bench(
        models=["gpvit_l1"], sizes=[32], modes=["inference"], repeats=1, quick=True, roofline=True, log=print
    )
    (row, gmacs, gflops), *_ = result.achieved
    assert gmacs == pytest.approx(count_gmacs(bench.BENCH_MODELS["gpvit_l1"].build(32, True), 32))
    assert gflops == pytest.approx(2 * gmacs * row.batch / (row.latency_ms / 1000))
    report = bench.markdown(result)
    assert "## Against the machine's roofline" in report and "- fp32: matmul " in report
    assert f"| gpvit_l1 | fp32 | contiguous | 32² | {gmacs:.1f} | {gflops:.0f} |" in report
    assert "roofline" not in bench.markdown(bench.BenchResult(result.environment, result.rows))


def test_baseline_eager_times_plain_eager_and_gives_each_case_its_speedup():
    """``baseline="eager"`` adds the plain eager cases to the grid (here only channels-last was asked
    for) and gives every row its eager latency over its own, at the same model, precision and size."""
    result = bench.run_bench(
        models=["gpvit_l1"],
        sizes=[32],
        modes=["inference"],
        layouts=["channels_last"],
        repeats=1,
        quick=True,
        baseline="eager",
        log=print,
    )
    eager, channels_last = result.rows
    assert (eager.layout, eager.compiled, eager.runtime) == ("contiguous", False, "eager")
    assert eager.speedup == 1.0
    assert channels_last.layout == "channels_last"
    assert channels_last.speedup == pytest.approx(eager.latency_ms / channels_last.latency_ms)
    report = bench.markdown(result)
    assert "| vs eager |" in report and f"| {channels_last.speedup:.2f}× |" in report
    assert "baseline" in result.environment and "vs eager" not in bench.markdown(
        bench.run_bench(
            models=["gpvit_l1"], sizes=[32], modes=["inference"], repeats=1, quick=True, log=print
        )
    )
    with pytest.raises(ValueError, match="baseline must be 'eager' or None, got 'onnx'"):
        bench.run_bench(models=["gpvit_l1"], sizes=[32], quick=True, baseline="onnx")
