"""Export to torch.export (.pt2) and ONNX: round trips against eager at sizes the trace did not see,
the preprocessing and parity JSON beside the files, static shapes with their reason, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny import tiny, tiny_checkpoint
from workbench.inference.recipes import recipe_for
from workbench.interop import export
from workbench.interop.export import measure_onnxruntime
from workbench.models.detection import create_detector, detector_info

TOLERANCE = 1e-4  # |logit diff| against eager, fp32 on the CPU (measured: below 2e-6)
NAMES = ("sky", "tree", "road", "grass", "water")


@pytest.fixture(scope="module")
def setr_export(tmp_path_factory):
    """SETR-PUP (patch 16) exported at 64x64, checked at 64x64 and at two sizes the trace never saw."""
    model = tiny("setr_pup_vit_base")
    out = tmp_path_factory.mktemp("setr")
    result = export(
        model,
        out,
        size=64,
        parity_sizes=[(64, 64), (96, 96), (48, 128)],
        recipe=recipe_for("setr_pup_vit_base", 150),
        class_names=NAMES,
    )
    return model, out, result


@pytest.fixture(scope="module")
def gpvit_export(tmp_path_factory):
    """GPViT SegFormer (stride 8, any side eagerly) at 64x64; checked at 80x80 and 64x96 too."""
    result = export(
        tiny("gpvit_l1_segformer"),
        tmp_path_factory.mktemp("gpvit"),
        size=64,
        parity_sizes=[(64, 64), (80, 80), (64, 96)],
    )
    return result


@pytest.fixture(scope="module")
def hlg_export(tmp_path_factory):
    result = export(
        tiny("setr_hlg_small"), tmp_path_factory.mktemp("hlg"), size=64, parity_sizes=[(64, 64), (96, 96)]
    )
    return result


def _rows(result, runtime):
    return {row.size: row for row in result.parity if row.runtime == runtime}


@pytest.mark.parametrize("runtime", ["torch.export", "onnxruntime"])
def test_setr_round_trips_at_sizes_outside_the_export(setr_export, runtime):
    _, _, result = setr_export
    assert result.dynamic == {"pt2": True, "onnx": True}, result.static_reason
    assert result.onnx_exporter == "dynamo"
    rows = _rows(result, runtime)
    assert set(rows) == {(64, 64), (96, 96), (48, 128)}
    for row in rows.values():
        assert not row.error and row.max_abs_diff < TOLERANCE and row.argmax_agreement == 1.0, row


def test_the_files_run_outside_the_workbench(setr_export):
    """The .pt2 and .onnx files alone reproduce the eager logits (at a size not in the export)."""
    import onnxruntime

    model, _, result = setr_export
    images = torch.randn(1, 3, 112, 80)
    with torch.no_grad():
        eager = model(images)
        from_pt2 = torch.export.load(result.files["pt2"]).module()(images)
    session = onnxruntime.InferenceSession(result.files["onnx"], providers=["CPUExecutionProvider"])
    from_onnx = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    assert from_pt2.shape == from_onnx.shape == (1, 5, 112, 80)
    assert (from_pt2 - eager).abs().max() < TOLERANCE
    assert (from_onnx - eager).abs().max() < TOLERANCE


def test_the_preprocessing_and_parity_json(setr_export):
    _, out, result = setr_export
    written = json.loads((out / "setr_pup_vit_base.preprocessing.json").read_text())
    assert written == json.loads(json.dumps(result.preprocessing))
    assert written["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert written["std"] == pytest.approx([58.395, 57.12, 57.375])
    assert written["size_divisor"] == 16
    assert written["shapes"]["onnx"] == {"dynamic": True, "min_side": 16, "max_side": 2048, "multiple_of": 16}
    assert written["input"]["name"] == "images" and written["input"]["layout"] == "NCHW"
    assert written["output"]["layout"] == "logits (1, K, H, W) at the input size"
    assert written["num_classes"] == 5 and written["class_names"] == list(NAMES)
    assert written["test_scale"]["scale"] == [2048, 512]  # SETR's ADE20K recipe
    assert written["test_scale"]["mode"] == "slide"
    report = json.loads((out / "setr_pup_vit_base.parity.json").read_text())
    assert report["dynamic"] == {"pt2": True, "onnx": True}
    assert len(report["parity"]) == 6
    assert {tuple(row["size"]) for row in report["parity"]} == {(64, 64), (96, 96), (48, 128)}


@pytest.mark.parametrize("runtime", ["torch.export", "onnxruntime"])
def test_gpvit_round_trips_at_sizes_outside_the_export(gpvit_export, runtime):
    assert gpvit_export.dynamic == {"pt2": True, "onnx": True}, gpvit_export.static_reason
    assert gpvit_export.preprocessing["shapes"]["pt2"]["multiple_of"] == 8
    rows = _rows(gpvit_export, runtime)
    assert set(rows) == {(64, 64), (80, 80), (64, 96)}
    for row in rows.values():
        assert not row.error and row.max_abs_diff < TOLERANCE and row.argmax_agreement == 1.0, row


def test_hlg_is_static_with_its_reason(hlg_export):
    """HLG's window padding fixes the size: both files static, the one-line reason in the result and
    in the JSON; right at the export size, refused (not wrong) at another."""
    for fmt in ("pt2", "onnx"):
        assert hlg_export.dynamic[fmt] is False
        reason = hlg_export.static_reason[fmt]
        assert "window" in reason and "\n" not in reason
        assert hlg_export.preprocessing["shapes"][fmt] == {
            "dynamic": False,
            "height": 64,
            "width": 64,
            "why": reason,
        }
    for runtime in ("torch.export", "onnxruntime"):
        rows = _rows(hlg_export, runtime)
        assert rows[(64, 64)].max_abs_diff < TOLERANCE and rows[(64, 64)].argmax_agreement == 1.0
        assert rows[(96, 96)].error  # a static file refuses another size rather than answering wrongly


def test_detectors_are_refused_with_the_reason(tmp_path):
    name = "gpvit_l1_retinanet"
    detector = create_detector(name, num_classes=5, **detector_info(name).tiny)
    with pytest.raises(ValueError, match="NMS"):
        export(detector, tmp_path)
    assert not list(tmp_path.iterdir())


def test_onnxruntime_latency(setr_export):
    model, _, _ = setr_export
    latency = measure_onnxruntime(model, 64, repeats=2, threads=2)
    assert latency.exporter == "dynamo"
    assert 0 < latency.latency_ms < 10_000


def test_onnxruntime_is_a_runtime_of_the_bench():
    """``run_bench(runtimes=...)``: onnxruntime rows beside eager ones for fp32 CPU inference only."""
    from workbench.engine import bench

    result = bench.run_bench(
        models=["setr_pup_vit_large"],
        sizes=[32],
        modes=["inference", "train"],
        runtimes=("eager", "onnxruntime"),
        quick=True,
        repeats=1,
        log=lambda line: None,
    )
    cases = {(row.mode, row.runtime): row for row in result.rows}
    assert set(cases) == {("inference", "eager"), ("train", "eager"), ("inference", "onnxruntime")}
    row = cases["inference", "onnxruntime"]
    assert row.status == "ok" and row.latency_ms > 0 and row.first_call_s > 0
    assert "| onnxruntime |" in bench.markdown(result)
    with pytest.raises(ValueError, match="unknown runtime"):
        bench.run_bench(models=["setr_pup_vit_large"], sizes=[32], runtimes=("tensorrt",), quick=True)


def test_the_command_line_exports_a_run_and_never_overwrites_silently(tmp_path, capsys):
    from workbench.build import classes_of
    from workbench.cli import main
    from workbench.config import load_config

    cfg = load_config("tiny_setr")
    run = tiny_checkpoint(tmp_path / "run", "tiny_setr")
    out = tmp_path / "exported" / "tiny"
    argv = ["export", "--checkpoint", str(run), "--out", str(out), "--size", "64", "64", "--formats", "onnx"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "onnx: dynamic height and width" in printed and "parity onnxruntime 64x64" in printed
    described = json.loads((out / "tiny.preprocessing.json").read_text())
    assert described["class_names"] == list(classes_of(cfg).names)
    assert main(argv) == 2
    assert "tiny.onnx exists; pass --overwrite" in capsys.readouterr().err
