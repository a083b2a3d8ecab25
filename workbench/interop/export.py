"""A segmentor out of Python: torch.export (``.pt2``) and ONNX files, the preprocessing beside them as
JSON, and a parity report against the eager model computed at export time.

``export(model, out_dir)`` writes ``<name>.pt2`` (``torch.export.export`` + ``torch.export.save``),
``<name>.onnx``, ``<name>.preprocessing.json`` and ``<name>.parity.json`` and returns an
``ExportResult``. The model runs in eval mode, where ``Segmentor.forward`` returns the decode head's
logits only (the auxiliary heads run inside ``losses``), so no auxiliary head is in the graph.

How (measured on the tiny builds, torch 2.14, onnxruntime 1.32; figures in docs/export.md):

- One ``torch.export`` trace serves both files: the ``.pt2`` saves it, and the ONNX file is
  ``torch.onnx.export`` of that ExportedProgram (``dynamo=True``). Where the dynamo exporter fails,
  the TorchScript exporter (``dynamo=False``) traces the model again; ``ExportResult.onnx_exporter``
  says which wrote the file, ``dynamo_onnx_error`` why.
- Height and width are dynamic, as ``Dim("height", min, max) * multiple`` (``trace_multiple``: the
  size divisor, SETR's 16; GPViT takes any side eagerly but traces only on multiples of its stride
  8), from ``min_side`` (``default_min_side``) to ``max_side``. Two shape shortcuts of the models
  would otherwise pin the sizes: the position embedding's "same grid: no resampling" branch (SETR,
  GPViT) is not taken while exporting (``resample_pos_embed`` checks ``torch.compiler.is_exporting``,
  as timm's does), and the resampling it skips is the identity at the same grid (bilinear and
  bicubic with align_corners=False sample the grid points exactly; the parity at the export size
  checks it); and UperNet's 6x6 pyramid pooling pins a 6-token map, which the default
  ``min_side`` (7 tokens: 56 px at GPViT's stride 8) keeps out of the range.
- Each file's dynamic claim is checked: where the trace still guards the input size on a value
  (``_assert_scalar`` nodes), or a file fails or differs from eager by more than ``tolerance`` at a
  parity size other than the export size, that file is redone with static shapes and
  ``ExportResult.static_reason[format]`` holds the one-line reason.
- Per family: SETR (Naive, PUP, MLA) and GPViT SegFormer: both files dynamic, dynamo. GPViT UperNet:
  the ``.pt2`` dynamic; the ONNX file static, as the dynamo exporter decomposes adaptive average
  pooling (the pyramid pooling) into indices of the export size (wrong logits, or a GatherND index
  error, at other sizes). SETR-HLG: static, as its window grouping pads the token grid to multiples
  of 7 and samples dilated groups with stride ceil(H/7), Python integers of the input size; its ONNX
  file comes from the TorchScript exporter (dynamo's decomposition fails on a ``view``).
- Detectors (torchvision's RetinaNet and Mask R-CNN on GPViT / HLG) are refused with a ValueError
  (``DETECTOR_REASON``): ``torch.export`` stops at their data-dependent post-processing (score
  thresholds and NMS keep a data-dependent number of boxes: GuardOnDataDependentSymNode). The
  TorchScript ONNX exporter does write a graph, fixed to the traced image size, that onnxruntime
  runs, but no parity could be established (random-weight detectors keep no boxes), so it is not
  offered.

Parity: at three sizes (the export size, and two more, one of a different aspect), eager logits
against onnxruntime (CPUExecutionProvider) and against ``torch.export.load(path).module()``: the
largest absolute logit difference and the share of pixels whose arg-max class agrees.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.config import Config
from workbench.models.segmentor import Segmentor

INPUT_NAME, OUTPUT_NAME = "images", "logits"
EXPORT_FORMATS = ("pt2", "onnx")
DETECTOR_REASON = (
    "detectors cannot be exported: torch.export fails on torchvision's data-dependent post-processing "
    "(score thresholds and NMS keep a data-dependent number of boxes)"
)


@dataclass
class Parity:
    """One runtime at one size against eager: ``error`` holds the one-line failure if it did not run."""

    runtime: str  # "onnxruntime" or "torch.export"
    size: tuple[int, int]
    max_abs_diff: float = float("nan")
    argmax_agreement: float = float("nan")  # share of pixels with the same arg-max class
    error: str = ""

    def within(self, tolerance: float) -> bool:
        """Ran, and no logit further than ``tolerance`` from eager's (the arg-max may still flip at a
        near-tie: random weights give some; that share is reported, not judged)."""
        return not self.error and self.max_abs_diff <= tolerance


@dataclass
class ExportResult:
    """What ``export`` wrote and how: per format ("pt2", "onnx") whether the sides are dynamic, and
    where not, the one-line reason."""

    name: str
    files: dict[str, str]  # "pt2" / "onnx" / "preprocessing" / "parity" -> path
    export_size: tuple[int, int]
    dynamic: dict[str, bool]
    static_reason: dict[str, str]  # empty where dynamic
    onnx_exporter: str  # "dynamo", "torchscript" or "" (no ONNX file)
    dynamo_onnx_error: str  # why the dynamo exporter failed where TorchScript's wrote the file
    export_s: float  # seconds spent tracing, writing and checking
    tolerance: float
    parity: list[Parity] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)


def _one_line(error: BaseException) -> str:
    """The error's first line; for a chained error (the ONNX exporter's wrap their cause), its root's."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _size_asserts(program: torch.export.ExportedProgram) -> list[str]:
    """The runtime assertions on input sizes that the trace added (each a size it cannot take)."""
    return [
        str(node.args[1]) if len(node.args) > 1 else str(node.args[0])
        for node in program.graph.nodes
        if node.op == "call_function" and "assert_scalar" in str(node.target)
    ]


def trace_multiple(model: nn.Module) -> int:
    """What the dynamic sides are multiples of: the size divisor (SETR: the patch size), or where the
    model takes any side (GPViT, HLG) its first feature stride, on which a trace must divide exactly."""
    return model.size_divisor if model.size_divisor > 1 else model.feature_info[0]["reduction"]


def default_min_side(model: nn.Module) -> int:
    """The smallest side of the dynamic range: the model's minimum, and for a pyramid-pooling head
    (UperNet) one token more than its largest pooled map, whose resize back to the map a trace would
    otherwise pin at that size."""
    pooled = [
        module.output_size
        for module in model.modules()
        if isinstance(module, nn.AdaptiveAvgPool2d) and isinstance(module.output_size, int)
    ]
    stride = model.feature_info[-1]["reduction"] if pooled else 1
    return max(model.min_size, (max(pooled, default=0) + 1) * stride)


def _static_reason(model: nn.Module) -> str:
    if type(model).__module__.endswith(".hlg"):
        return (
            "HLG's window grouping pads the token grid to multiples of 7 and samples dilated groups with "
            "stride ceil(H/7), Python integers of the input size that a trace fixes"
        )
    return ""


def _trace(
    model: nn.Module, example: torch.Tensor, dynamic: bool, divisor: int, min_side: int, max_side: int
) -> torch.export.ExportedProgram:
    shapes = None
    if dynamic:
        if divisor > 1:
            height = (
                torch.export.Dim("height", min=-(-min_side // divisor), max=max_side // divisor) * divisor
            )
            width = torch.export.Dim("width", min=-(-min_side // divisor), max=max_side // divisor) * divisor
        else:
            height = torch.export.Dim("height", min=min_side, max=max_side)
            width = torch.export.Dim("width", min=min_side, max=max_side)
        shapes = {INPUT_NAME: {2: height, 3: width}}
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=shapes)


def _write_onnx(
    model: nn.Module, program: torch.export.ExportedProgram, example: torch.Tensor, path: Path, dynamic: bool
) -> tuple[str, str]:
    """Write ``path`` through the dynamo exporter from ``program``, else TorchScript's; return (exporter,
    the dynamo exporter's one-line failure or "")."""
    try:
        onnx_program = torch.onnx.export(
            program, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=True
        )
        onnx_program.save(str(path))
        return "dynamo", ""
    except Exception as error:  # the exporter raises many kinds; the TorchScript one is the fallback
        dynamo_error = _one_line(error)
    axes = (
        {INPUT_NAME: {2: "height", 3: "width"}, OUTPUT_NAME: {2: "height", 3: "width"}} if dynamic else None
    )
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            dynamo=False,
        )
    return "torchscript", dynamo_error


def _session(path: Path, threads: int | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(runtime: str, size: tuple[int, int], eager: torch.Tensor, other: np.ndarray) -> Parity:
    other_t = torch.from_numpy(np.asarray(other)).float()
    if other_t.shape != eager.shape:
        return Parity(
            runtime, size, error=f"output shape {tuple(other_t.shape)} != eager {tuple(eager.shape)}"
        )
    agreement = (other_t.argmax(1) == eager.argmax(1)).float().mean().item()
    return Parity(runtime, size, (other_t - eager).abs().max().item(), agreement)


RUNTIMES = {"pt2": "torch.export", "onnx": "onnxruntime"}


def parity(
    model: nn.Module, fmt: str, path: Path, sizes: Sequence[tuple[int, int]], seed: int = 0
) -> list[Parity]:
    """Eager logits against the exported file ``path`` (``fmt``: "pt2" through
    ``torch.export.load(path).module()``, "onnx" through onnxruntime on the CPU) at ``sizes``, on seeded
    normal-random images."""
    runtime = RUNTIMES[fmt]
    if fmt == "onnx":
        session = _session(path)

        def run(images: torch.Tensor) -> np.ndarray:
            return session.run(None, {INPUT_NAME: images.numpy()})[0]
    else:
        module = torch.export.load(str(path)).module()

        def run(images: torch.Tensor) -> np.ndarray:
            return module(images).numpy()

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for size in sizes:
        images = torch.randn(1, model.in_chans, *size, generator=generator)
        try:
            with torch.no_grad():
                rows.append(_compare(runtime, size, model(images), run(images)))
        except Exception as error:  # a guard of the trace, onnxruntime refusing a fixed dimension
            rows.append(Parity(runtime, size, error=_one_line(error)))
    return rows


def preprocessing(
    model: nn.Module,
    export_size: tuple[int, int],
    static_reason: dict[str, str],
    min_side: int,
    max_side: int,
    multiple: int,
    recipe: Config | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a runtime must do to an RGB photo before the exported graph, and what comes out."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    divisor = getattr(model, "size_divisor", 1)
    description: dict[str, Any] = {
        "model": cfg.get("architecture", type(model).__name__),
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": "RGB",
            "batch": 1,
            "normalise": "(pixel - mean) / std, pixels on the 0-255 scale",
        },
        "mean": [round(value * 255, 4) for value in mean],
        "std": [round(value * 255, 4) for value in std],
        "size_divisor": divisor,
        "shapes": {
            fmt: (
                {"dynamic": False, "height": export_size[0], "width": export_size[1], "why": why}
                if why
                else {"dynamic": True, "min_side": min_side, "max_side": max_side, "multiple_of": multiple}
            )
            for fmt, why in static_reason.items()
        },
        "pad": "zero-pad bottom and right to a multiple of shapes.multiple_of (static: to the export "
        "size); crop the logits back",
        "num_classes": getattr(model, "num_classes", None),
        "class_names": list(class_names) if class_names is not None else None,
        "output": {"name": OUTPUT_NAME, "layout": "logits (1, K, H, W) at the input size"},
    }
    if recipe is not None:
        description["test_scale"] = {
            "scale": list(recipe.data.scale),
            "meaning": "(long, short): resize keeping the aspect so the short side is at most "
            "`short` and the long side at most `long`",
            "mode": recipe.eval.mode,
            **(
                {"window": recipe.eval.window, "stride": recipe.eval.stride}
                if recipe.eval.mode == "slide"
                else {}
            ),
        }
    return description


def _check_model(model: nn.Module) -> None:
    if isinstance(model, Segmentor):
        return
    if (
        hasattr(model, "roi_heads")
        or hasattr(model, "anchor_generator")
        or type(model).__module__.startswith("workbench.models.detection")
    ):
        raise ValueError(DETECTOR_REASON)
    raise ValueError(f"export takes a workbench Segmentor, got {type(model).__name__}")


def _default_sizes(export_size: tuple[int, int], divisor: int, min_side: int) -> list[tuple[int, int]]:
    """The export size, one larger square and one of another aspect, on the divisor's grid."""
    step = max(divisor, 16)
    height, width = export_size
    return [
        export_size,
        (height + 2 * step, width + 2 * step),
        (max(height - step, min_side), width + 4 * step),
    ]


def export(
    model: nn.Module,
    out_dir: str | Path,
    *,
    name: str | None = None,
    size: int | tuple[int, int] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    dynamic: bool = True,
    min_side: int | None = None,
    max_side: int = 2048,
    parity_sizes: Sequence[tuple[int, int]] | None = None,
    recipe: Config | None = None,
    class_names: Sequence[str] | None = None,
    tolerance: float = 1e-3,
) -> ExportResult:
    """Export segmentor ``model`` (set to eval mode; see the module docstring) into ``out_dir``.

    Args:
        size: the trace's image size (default: the model's pretrained input size).
        formats: any of ``EXPORT_FORMATS``.
        dynamic: try dynamic height and width; they fall back to static with the reason.
        min_side, max_side: the dynamic range in pixels (min_side default: ``default_min_side``).
        parity_sizes: (H, W) sizes of the parity report (default: the export size and two others).
        recipe: a config whose test scale and inference mode go into the preprocessing JSON
            (``workbench.inference.recipes.recipe_for``).
        class_names: written into the preprocessing JSON.
        tolerance: the largest |logit diff| against eager for a dynamic file to count as right at a
            size other than the export size (else that file is redone static, with the reason).
    """
    _check_model(model)
    unknown = [item for item in formats if item not in EXPORT_FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {EXPORT_FORMATS}, got {list(formats)}")
    model.eval()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = name or cfg.get("architecture", type(model).__name__.lower())
    multiple = trace_multiple(model)
    if size is None:
        size = tuple(cfg.get("input_size", (3, 512, 512))[-2:])
    export_size = (size, size) if isinstance(size, int) else tuple(size)
    model.check_images(torch.zeros(1, model.in_chans, *export_size))
    min_side = min_side or default_min_side(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, model.in_chans, *export_size, generator=torch.Generator().manual_seed(0))
    sizes = (
        [tuple(s) for s in parity_sizes] if parity_sizes else _default_sizes(export_size, multiple, min_side)
    )

    start = time.perf_counter()
    reason = "" if dynamic else "static shapes were asked for"
    reason = reason or _static_reason(model)
    try:
        program = _trace(model, example, not reason, multiple, min_side, max_side)
    except Exception as error:  # a constraint violation of the dynamic dims names the cause
        reason = f"the dynamic trace failed: {_one_line(error)}"
    else:
        if not reason and (asserts := _size_asserts(program)):
            reason = f"the trace guards the input size: {asserts[0]}"
    static_program = None
    if reason:
        program = static_program = _trace(model, example, False, multiple, min_side, max_side)

    files = {fmt: out / f"{name}.{fmt}" for fmt in formats}
    reasons = dict.fromkeys(formats, reason)
    exporter = dynamo_error = ""
    rows: dict[str, list[Parity]] = {}
    for fmt in formats:
        for attempt in range(2):  # a dynamic file failing away from the export size is redone static
            if fmt == "pt2":
                torch.export.save(program if attempt == 0 else static_program, str(files[fmt]))
            else:
                exporter, dynamo_error = _write_onnx(
                    model, program if attempt == 0 else static_program, example, files[fmt], not reasons[fmt]
                )
            rows[fmt] = parity(model, fmt, files[fmt], sizes)
            broken = [
                row
                for row in rows[fmt]
                if row.size != export_size
                and min_side <= min(row.size) <= max(row.size) <= max_side
                and not any(side % multiple for side in row.size)
                and not row.within(tolerance)
            ]
            if reasons[fmt] or not broken:
                break
            row = broken[0]
            problem = row.error or f"max |logit diff| {row.max_abs_diff:.2g} > {tolerance:g}"
            reasons[fmt] = f"the dynamic file is wrong at {row.size[0]}x{row.size[1]}: {problem}"
            if static_program is None:
                static_program = _trace(model, example, False, multiple, min_side, max_side)
    export_s = time.perf_counter() - start

    description = preprocessing(
        model, export_size, reasons, min_side, max_side, multiple, recipe, class_names
    )
    files["preprocessing"] = out / f"{name}.preprocessing.json"
    files["parity"] = out / f"{name}.parity.json"
    result = ExportResult(
        name=name,
        files={key: str(path) for key, path in files.items()},
        export_size=export_size,
        dynamic={fmt: not why for fmt, why in reasons.items()},
        static_reason=reasons,
        onnx_exporter=exporter,
        dynamo_onnx_error=dynamo_error,
        export_s=export_s,
        tolerance=tolerance,
        parity=[row for fmt in formats for row in rows[fmt]],
        preprocessing=description,
    )
    files["preprocessing"].write_text(json.dumps(description, indent=2) + "\n")
    report = {key: value for key, value in asdict(result).items() if key != "preprocessing"}
    files["parity"].write_text(json.dumps(report, indent=2) + "\n")
    return result


@dataclass
class RuntimeLatency:
    latency_ms: float  # median of ``repeats`` calls after one warm-up
    first_call_s: float
    export_s: float
    exporter: str


def measure_onnxruntime(model: nn.Module, size: int, repeats: int = 3, threads: int = 2) -> RuntimeLatency:
    """Latency of segmentor ``model`` at ``size``² (batch 1, fp32) in onnxruntime on the CPU with
    ``threads`` intra-op threads: exported once (static shapes, ONNX only) into a temporary folder."""
    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got {repeats}")
    _check_model(model)
    model.eval()
    example = torch.randn(1, model.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        program = _trace(model, example, False, model.size_divisor, size, size)
        exporter, _ = _write_onnx(model, program, example, path, dynamic=False)
        export_s = time.perf_counter() - start
        session = _session(path, threads)
    feed = {INPUT_NAME: example.numpy()}
    start = time.perf_counter()
    session.run(None, feed)
    first_call_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return RuntimeLatency(statistics.median(times) * 1000, first_call_s, export_s, exporter)
