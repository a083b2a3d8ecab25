"""``workbench bench``: latency, throughput and peak memory of inference and of one training step
against resolution, for the workbench's families and two timm peers.

Models (``BENCH_MODELS``): SETR-PUP ViT-L, GPViT-L1 UperNet and SETR-HLG-Small segmentors (150
classes, ADE20K's), the GPViT-L1 backbone alone (its scaling without a decoder at stride 4), and the
backbones of two timm peers: ``vit_base_patch16_224`` with
``dynamic_img_size`` (global attention) and ``swin_tiny_patch4_window7_224`` built with ``img_size``
at each resolution (windowed attention; timm 1.0 pads windows at sizes that are not multiples of
224). ``quick=True`` builds their few-layer, narrow versions for the test suite.

Measurement, per case (model, resolution, mode, precision, compiled): build the model, one warm-up
call (its time, ``first_call_s``, holds the compile cost when compiled), then ``repeats`` timed calls;
latency is their median. A training step (batch at least 2) is forward, loss, backward and a fused
AdamW step (the engine's optimizer). Precision and layout are the engine's settings
(``workbench.precision``): bf16 runs under ``torch.autocast``; ``channels_last`` lays out the
convolution weights channels-last, as the Predictor does for inference. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset per case);
on the CPU the peak RSS *increase* during the case (model build included): the kernel's high-water
mark (VmHWM) is reset to the current RSS through ``/proc/self/clear_refs`` before the case, so an
earlier, larger case does not hide it, and glibc's ``malloc_trim`` first returns the memory that
earlier cases freed. What the allocator still keeps can make a CPU figure an underestimate; the CUDA
figure has no such caveat.

Runtimes: ``eager`` (PyTorch, optionally compiled) and ``onnxruntime``: the segmentor exported once
per model and size to ONNX (static shapes, ``workbench.interop.export.measure_onnxruntime``) and
``session.run`` timed on the CPU with as many intra-op threads as torch uses. onnxruntime cases are fp32
inference of the segmentors on the CPU, uncompiled and contiguous; other combinations are not run.
Their ``first_call_s`` holds the export and session set-up as well as the first call.

Budgets: sizes run in increasing order; before each case its memory and time are predicted from the
smaller sizes already measured (log-log fit of the last two; from one point, linear in tokens, which
can be optimistic by the size ratio). A case predicted over ``memory_budget_mb`` or
``time_budget_s`` is skipped, and so are the larger sizes of its series; each skip is a row with the
reason, printed and written in every output. Tokens are the model's first-stage tokens
((size / stride)²); the fitted exponent of time against tokens does not depend on that stride.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import gc
import itertools
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
from matplotlib.figure import Figure
from torch import nn

from workbench.engine.roofline import Roofline, achieved_gflops, measure_roofline
from workbench.interop.export import measure_onnxruntime
from workbench.models import create_segmentor, model_info
from workbench.models.complexity import count_gmacs
from workbench.precision import autocast, resolve_precision, use_channels_last


@dataclass(frozen=True)
class BenchModel:
    """A model of the benchmark: how to build it at a resolution, and its first-stage stride."""

    name: str
    family: str
    stride: int  # pixels per first-stage token side
    build: Callable[[int, bool], nn.Module]  # (resolution, quick) -> model
    segmentor: bool  # Segmentor.losses for training; else the mean of forward_features


def _segmentor(name: str, fixed_size: bool = False) -> Callable[[int, bool], nn.Module]:
    def build(size: int, quick: bool) -> nn.Module:
        overrides = dict(model_info(name).tiny) if quick else {}
        if fixed_size:  # SETR's position embedding is built for one size
            overrides["img_size"] = size
        return create_segmentor(name, num_classes=150, **overrides)

    return build


def _workbench_backbone(name: str) -> Callable[[int, bool], nn.Module]:
    """A workbench classifier without head (its ``forward_features`` is timed)."""

    def build(size: int, quick: bool) -> nn.Module:
        return timm.create_model(name, num_classes=0, **(dict(model_info(name).tiny) if quick else {}))

    return build


_TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
_TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


def _timm_backbone(name: str, tiny: dict, sized: bool) -> Callable[[int, bool], nn.Module]:
    """A timm classifier without head; ``sized``: built with ``img_size`` at each resolution, else
    with ``dynamic_img_size`` (position embedding resampled on the fly)."""

    def build(size: int, quick: bool) -> nn.Module:
        kwargs = {"img_size": size} if sized else {"dynamic_img_size": True}
        return timm.create_model(name, num_classes=0, **(tiny if quick else {}), **kwargs)

    return build


BENCH_MODELS = {
    model.name: model
    for model in (
        BenchModel("setr_pup_vit_large", "SETR", 16, _segmentor("setr_pup_vit_large", fixed_size=True), True),
        BenchModel("gpvit_l1_upernet", "GPViT", 8, _segmentor("gpvit_l1_upernet"), True),
        BenchModel("setr_hlg_small", "HLG", 4, _segmentor("setr_hlg_small"), True),
        BenchModel("gpvit_l1", "GPViT (backbone)", 8, _workbench_backbone("gpvit_l1"), False),
        BenchModel(
            "vit_base_patch16_224",
            "timm ViT (global)",
            16,
            _timm_backbone("vit_base_patch16_224", _TINY_VIT, sized=False),
            False,
        ),
        BenchModel(
            "swin_tiny_patch4_window7_224",
            "timm Swin (windowed)",
            4,
            _timm_backbone("swin_tiny_patch4_window7_224", _TINY_SWIN, sized=True),
            False,
        ),
    )
}
MODES = ("inference", "train")
PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("contiguous", "channels_last")
FULL_SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (32, 64)
RUNTIMES = ("eager", "onnxruntime")


@dataclass
class BenchRow:
    """One case: measured (status "ok") or skipped (status "skipped", the reason in ``note``)."""

    model: str
    family: str
    mode: str
    precision: str
    compiled: bool
    resolution: int
    tokens: int
    batch: int
    status: str
    latency_ms: float = math.nan
    throughput_img_s: float = math.nan
    peak_memory_mb: float = math.nan
    first_call_s: float = math.nan
    note: str = ""
    layout: str = "contiguous"
    runtime: str = "eager"
    # With a baseline (``--baseline eager``): the baseline case's latency over this one's (> 1: faster).
    speedup: float = math.nan

    def series(self) -> tuple[str, str, str, bool, str, str]:
        return self.model, self.mode, self.precision, self.compiled, self.layout, self.runtime


@dataclass
class BenchResult:
    environment: dict[str, str]
    rows: list[BenchRow] = field(default_factory=list)
    # With ``roofline=True``: the machine's limits per precision, and per measured eager inference
    # case (model, precision, size) its GMACs and achieved GFLOP/s.
    rooflines: dict[str, Roofline] = field(default_factory=dict)
    achieved: list[tuple[BenchRow, float, float]] = field(default_factory=list)


def environment(device: str) -> dict[str, str]:
    """Where the figures come from: device, versions, thread count, date."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            models = [
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if "model name" in line
            ]
            name = models[0] if models else name
    return {
        "device": f"{device}: {name}",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fit_exponent(tokens: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(tokens): time ∝ tokens ** exponent."""
    if len(tokens) != len(seconds):
        raise ValueError(f"tokens and seconds differ in length ({len(tokens)} vs {len(seconds)})")
    if len(set(tokens)) < 2:
        raise ValueError(f"the exponent needs at least two distinct token counts, got {list(tokens)}")
    if min(tokens) <= 0 or min(seconds) <= 0:
        raise ValueError("tokens and seconds must be positive to fit on a log-log scale")
    slope, _ = np.polyfit(np.log(tokens), np.log(seconds), 1)
    return float(slope)


def _rss_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {key}")


def _reset_peak(device: str) -> float:
    """Reset the peak-memory counter; return the baseline (MB) that the peak is measured from."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    # glibc keeps freed memory of earlier cases for reuse, which would hide this case's growth
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)
    return _rss_mb("VmRSS")


def _peak(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mb("VmHWM")


def _step(
    spec: BenchModel,
    model: nn.Module,
    mode: str,
    device: str,
    precision: str,
    size: int,
    batch: int,
    compiled: bool = False,
):
    """A function running one inference call or one training step on fixed random inputs. The
    function timed (forward, ``losses`` or ``forward_features``) is what ``compiled`` compiles: a
    compiled module's other methods would run eager."""
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.randint(0, 150, (batch, size, size), device=device)
    chosen = resolve_precision(precision, device)
    maybe_compile = torch.compile if compiled else lambda function: function
    if mode == "inference":
        model.eval()
        forward = maybe_compile(model if spec.segmentor else model.forward_features)

        def run() -> None:
            with torch.inference_mode(), autocast(chosen, device):
                forward(images)

        return run
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    losses = maybe_compile(model.losses if spec.segmentor else model.forward_features)

    def run() -> None:
        with autocast(chosen, device):
            loss = losses(images, targets)["loss"] if spec.segmentor else losses(images).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _case_batch(mode: str, batch: int) -> int:
    return max(batch, 2) if mode == "train" else batch


def measure(
    spec: BenchModel,
    size: int,
    mode: str,
    precision: str = "fp32",
    compiled: bool = False,
    batch: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    quick: bool = False,
    layout: str = "contiguous",
    runtime: str = "eager",
) -> BenchRow:
    """Measure one case (see the module docstring). A training step takes at least two images: the
    decode heads' BatchNorm after global pooling needs more than one value per channel."""
    batch = _case_batch(mode, batch)
    row = BenchRow(
        spec.name, spec.family, mode, precision, compiled, size, (size // spec.stride) ** 2, batch, "ok"
    )
    row.layout, row.runtime = layout, runtime
    onnx = runtime == "onnxruntime"
    if onnx and not _onnxruntime_case(spec, mode, precision, compiled, layout, batch, device):
        raise ValueError(
            "onnxruntime times fp32 inference of a segmentor at batch 1 on the CPU, uncompiled, contiguous"
        )
    baseline = _reset_peak(device)
    model = spec.build(size, quick).to(device)
    if onnx:
        timed = measure_onnxruntime(model, size, repeats, torch.get_num_threads())
        row.latency_ms, row.throughput_img_s = timed.latency_ms, 1000 / timed.latency_ms
        row.first_call_s = timed.export_s + timed.first_call_s
        row.peak_memory_mb = max(_peak(device) - baseline, 0.0)
        return row
    use_channels_last(model, layout == "channels_last")
    run = _step(spec, model, mode, device, precision, size, batch, compiled)
    start = time.perf_counter()
    run()
    _sync(device)
    row.first_call_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    latency = statistics.median(times)
    row.latency_ms = latency * 1000
    row.throughput_img_s = batch / latency
    row.peak_memory_mb = max(_peak(device) - baseline, 0.0)
    del model, run
    return row


def _onnxruntime_case(
    spec: BenchModel, mode: str, precision: str, compiled: bool, layout: str, batch: int, device: str
) -> bool:
    """Whether onnxruntime times this case: fp32 inference of a segmentor at batch 1 on the CPU,
    uncompiled and contiguous (the exported graph has no other variant)."""
    case = (mode, precision, compiled, layout, batch, device)
    return spec.segmentor and case == ("inference", "fp32", False, "contiguous", 1, "cpu")


def _predict(done: list[BenchRow], tokens: int, attribute: str, single_point_exponent: float) -> float:
    """Extrapolate ``attribute`` of a series to ``tokens`` from its measured rows (log-log)."""
    counts = [row.tokens for row in done]
    values = [max(getattr(row, attribute), 1e-6) for row in done]
    exponent = fit_exponent(counts[-2:], values[-2:]) if len(set(counts)) >= 2 else single_point_exponent
    return values[-1] * (tokens / counts[-1]) ** exponent


def run_bench(
    models: Sequence[str] = tuple(BENCH_MODELS),
    sizes: Sequence[int] = FULL_SIZES,
    modes: Sequence[str] = MODES,
    precisions: Sequence[str] = ("fp32",),
    compiled: Sequence[bool] = (False,),
    layouts: Sequence[str] = ("contiguous",),
    batch: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    runtimes: Sequence[str] = ("eager",),
    memory_budget_mb: float | None = None,
    time_budget_s: float | None = None,
    quick: bool = False,
    roofline: bool = False,
    baseline: str | None = None,
    log: Callable[[str], None] = print,
) -> BenchResult:
    """Every case of the grid, sizes in increasing order, skipping (and saying so) what the budgets
    rule out. ``memory_budget_mb`` None: the CUDA device's memory, or the machine's available RAM.
    ``roofline``: also measure the machine's matmul and convolution GFLOP/s per precision and what
    each eager inference case achieves of them (``workbench.engine.roofline``). ``baseline="eager"``
    times plain eager execution (uncompiled, contiguous, PyTorch) of every case too, and gives each case
    its speed-up over it at the same model, mode, precision and size (``BenchRow.speedup``)."""
    if baseline not in (None, "eager"):
        raise ValueError(f"baseline must be 'eager' or None, got {baseline!r}")
    if baseline == "eager":  # the baseline cases join the grid, first in each series' order
        compiled = (False, *[item for item in compiled if item])
        layouts = ("contiguous", *[item for item in layouts if item != "contiguous"])
        runtimes = ("eager", *[item for item in runtimes if item != "eager"])
    unknown = [name for name in models if name not in BENCH_MODELS]
    if unknown:
        raise ValueError(f"unknown bench model {unknown[0]!r}; choose from {', '.join(BENCH_MODELS)}")
    for value, allowed, what in (
        (modes, MODES, "mode"),
        (precisions, PRECISIONS, "precision"),
        (layouts, LAYOUTS, "layout"),
        (runtimes, RUNTIMES, "runtime"),
    ):
        bad = [item for item in value if item not in allowed]
        if bad:
            raise ValueError(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")
    if not sizes or min(sizes) <= 0 or batch <= 0 or repeats <= 0:
        raise ValueError(f"sizes, batch and repeats must be positive, got {list(sizes)}, {batch}, {repeats}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device is available")
    if memory_budget_mb is None:
        memory_budget_mb = (
            torch.cuda.get_device_properties(0).total_memory / 2**20
            if device == "cuda"
            else _rss_mb_available()
        )
    result = BenchResult(environment(device))
    result.environment |= {
        "sizes": " ".join(str(size) for size in sorted(sizes)),
        "modes": " ".join(modes),
        "precisions": " ".join(precisions),
        "compiled": " ".join("yes" if item else "no" for item in compiled),
        "layouts": " ".join(layouts),
        **({"runtimes": " ".join(runtimes)} if tuple(runtimes) != ("eager",) else {}),
        "batch": f"{batch} (a training step: {_case_batch('train', batch)})",
        "repeats": str(repeats),
        "memory budget": f"{memory_budget_mb:.0f} MB",
    }
    if time_budget_s is not None:
        result.environment["time budget"] = f"{time_budget_s:g} s per call"
    for name, mode, precision, compile_model, layout, runtime in itertools.product(
        models, modes, precisions, compiled, layouts, runtimes
    ):
        case = {
            "mode": mode,
            "precision": precision,
            "compiled": compile_model,
            "batch": batch,
            "layout": layout,
            "runtime": runtime,
        }
        spec = BENCH_MODELS[name]
        if runtime == "onnxruntime" and not _onnxruntime_case(
            spec, mode, precision, compile_model, layout, batch, device
        ):
            continue
        for row in _series(
            spec, sorted(sizes), case, repeats, device, quick, memory_budget_mb, time_budget_s
        ):
            result.rows.append(row)
            log(_describe(row))
    if roofline:
        _against_roofline(result, device, quick)
    if baseline:
        result.environment["baseline"] = "eager: uncompiled, contiguous, PyTorch, same precision"
        _against_baseline(result)
    return result


def _against_baseline(result: BenchResult) -> None:
    """Each measured row's speed-up over plain eager execution of its model, mode, precision and size."""
    eager = {
        (row.model, row.mode, row.precision, row.resolution): row.latency_ms
        for row in result.rows
        if row.status == "ok" and (row.compiled, row.layout, row.runtime) == (False, "contiguous", "eager")
    }
    for row in result.rows:
        base = eager.get((row.model, row.mode, row.precision, row.resolution))
        if row.status == "ok" and base is not None:
            row.speedup = base / row.latency_ms


def _against_roofline(result: BenchResult, device: str, quick: bool) -> None:
    """Fill ``result.rooflines`` and ``result.achieved`` (GMACs counted once per model and size)."""
    cases = [r for r in result.rows if r.status == "ok" and r.mode == "inference" and r.runtime == "eager"]
    for precision in dict.fromkeys(row.precision for row in cases):
        size = 256 if quick else 2048
        result.rooflines[precision] = measure_roofline(
            precision, device, size=size, channels=64 if quick else 512, spatial=16 if quick else 64
        )
    counted: dict[tuple[str, int], float] = {}
    for row in cases:
        key = (row.model, row.resolution)
        if key not in counted:
            counted[key] = count_gmacs(BENCH_MODELS[row.model].build(row.resolution, quick), row.resolution)
        result.achieved.append((row, counted[key], achieved_gflops(counted[key], row.latency_ms, row.batch)))


def _series(
    spec: BenchModel,
    sizes: Sequence[int],
    case: dict,
    repeats: int,
    device: str,
    quick: bool,
    memory_budget_mb: float,
    time_budget_s: float | None,
) -> Iterator[BenchRow]:
    """One model/mode/precision/compile series over increasing sizes; once a size is predicted over
    budget (or runs out of memory), it and every larger size are skipped rows with the reason."""
    done: list[BenchRow] = []
    reason = ""
    for size in sizes:
        tokens = (size // spec.stride) ** 2
        if reason:
            reason = reason if reason.startswith("a smaller") else f"a smaller size was skipped ({reason})"
        elif done:
            memory = _predict(done, tokens, "peak_memory_mb", 1.0)
            seconds = _predict(done, tokens, "latency_ms", 1.0) / 1000
            if memory > memory_budget_mb:
                reason = f"predicted {memory:.0f} MB > memory budget {memory_budget_mb:.0f} MB"
            elif time_budget_s is not None and seconds > time_budget_s:
                reason = f"predicted {seconds:.1f} s per call > time budget {time_budget_s:g} s"
        if not reason:
            try:
                row = measure(spec, size, repeats=repeats, device=device, quick=quick, **case)
            except torch.OutOfMemoryError:
                reason = "out of memory"
            else:
                done.append(row)
                yield row
                continue
        batch = _case_batch(case["mode"], case["batch"])
        yield BenchRow(
            spec.name,
            spec.family,
            resolution=size,
            tokens=tokens,
            status="skipped",
            note=reason,
            **{**case, "batch": batch},
        )


def _rss_mb_available() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def _describe(row: BenchRow) -> str:
    flags = (" compiled" if row.compiled else "") + (
        " channels_last" if row.layout == "channels_last" else ""
    )
    flags += " onnxruntime" if row.runtime == "onnxruntime" else ""
    case = f"{row.model} {row.mode} {row.precision}{flags} {row.resolution}²"
    if row.status != "ok":
        return f"{case}: skipped: {row.note}"
    return f"{case}: {row.latency_ms:.1f} ms, {row.throughput_img_s:.2f} img/s, peak +{row.peak_memory_mb:.0f} MB"


def exponents(result: BenchResult) -> list[tuple[tuple[str, str, str, bool, str, str], float, list[int]]]:
    """Per series with two or more measured sizes: (series, exponent of time against tokens, sizes)."""
    series: dict[tuple[str, str, str, bool, str, str], list[BenchRow]] = {}
    for row in result.rows:
        if row.status == "ok":
            series.setdefault(row.series(), []).append(row)
    fitted = []
    for key, rows in series.items():
        if len({row.tokens for row in rows}) >= 2:
            exponent = fit_exponent([row.tokens for row in rows], [row.latency_ms for row in rows])
            fitted.append((key, exponent, [row.resolution for row in rows]))
    return fitted


CSV_COLUMNS = tuple(item.name for item in fields(BenchRow))


def write_csv(result: BenchResult, path: Path) -> None:
    """One row per case, columns ``CSV_COLUMNS``; the environment as leading ``# key: value`` lines."""
    with open(path, "w", newline="") as file:
        for key, value in result.environment.items():
            file.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in result.rows:
            writer.writerow(
                {
                    key: f"{value:.4g}" if isinstance(value, float) else value
                    for key, value in asdict(row).items()
                }
            )


def _cell(value: float, digits: str) -> str:
    return "—" if math.isnan(value) else format(value, digits)


def markdown(result: BenchResult, figure_names: Sequence[str] = (), title: str = "Benchmarks") -> str:
    """A Markdown report: environment, the results table, the fitted exponents, skips, figures."""
    lines = [f"# {title}", "", "Regenerate with `make bench` (`workbench bench --out docs/`).", ""]
    lines += [f"- **{key}**: {value}" for key, value in result.environment.items()]
    # The runtime column only where a run timed more than eager PyTorch.
    runtime_head = " runtime |" if any(row.runtime != "eager" for row in result.rows) else ""
    runtime_rule = "---|" if runtime_head else ""
    baseline = "baseline" in result.environment
    speedup_head, speedup_rule = (" vs eager |", "---:|") if baseline else ("", "")
    lines += [
        "",
        "## Latency, throughput and peak memory",
        "",
        "Peak memory: the increase during the case, model build included (CPU: peak RSS; CUDA: "
        "`max_memory_allocated`). `first call` holds the compile time of compiled cases.",
        "",
        f"| model | mode | precision | compiled | layout |{runtime_head} size | tokens | latency (ms) |{speedup_head} throughput (img/s) | peak memory (MB) | first call (s) | note |",
        f"|---|---|---|---|---|{runtime_rule}---:|---:|---:|{speedup_rule}---:|---:|---:|---|",
    ]
    for row in result.rows:
        runtime_cell = f" {row.runtime} |" if runtime_head else ""
        lines.append(
            f"| {row.model} | {row.mode} | {row.precision} | {'yes' if row.compiled else 'no'} | {row.layout} |{runtime_cell} {row.resolution}² | "
            f"{row.tokens} | {_cell(row.latency_ms, '.1f')} |"
            + (f" {'—' if math.isnan(row.speedup) else f'{row.speedup:.2f}×'} |" if baseline else "")
            + f" {_cell(row.throughput_img_s, '.3g')} | "
            f"{_cell(row.peak_memory_mb, '.0f')} | {_cell(row.first_call_s, '.2f')} | "
            f"{'skipped: ' + row.note if row.status != 'ok' else ''} |"
        )
    lines += [
        "",
        "## Exponent of time against token count",
        "",
        "Least squares on log-log over the measured sizes.",
        "",
    ]
    lines += [
        f"| model | mode | precision | compiled | layout |{runtime_head} sizes | exponent |",
        f"|---|---|---|---|---|{runtime_rule}---|---:|",
    ]
    for (model, mode, precision, compiled, layout, runtime), exponent, sizes in exponents(result):
        sizes_text = ", ".join(f"{size}²" for size in sizes)
        runtime_cell = f" {runtime} |" if runtime_head else ""
        lines.append(
            f"| {model} | {mode} | {precision} | {'yes' if compiled else 'no'} | {layout} |{runtime_cell} {sizes_text} | {exponent:.2f} |"
        )
    lines += _roofline_section(result)
    lines += ["", "## Not run", ""]
    if result.environment.get("compiled") == "no":
        lines.append("- torch.compile: not timed in this run (`--compile` adds compiled cases).")
    if result.environment["device"].startswith("cpu"):
        lines.append("- GPU: this run is CPU only (`--device cuda` on a GPU machine).")
    lines += [f"- {_describe(row)}" for row in result.rows if row.status != "ok"]
    if figure_names:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in figure_names]
    return "\n".join(lines) + "\n"


def _roofline_section(result: BenchResult) -> list[str]:
    """The machine's limits and each eager inference case's share of them (``--roofline``)."""
    if not result.rooflines:
        return []
    lines = ["", "## Against the machine's roofline", ""]
    lines += [
        f"- {limits.precision}: matmul {limits.matmul_gflops:.0f} GFLOP/s, convolution "
        f"{limits.conv_gflops:.0f} GFLOP/s (measured here, this run)"
        for limits in result.rooflines.values()
    ]
    lines += [
        "",
        "| model | precision | layout | size | GMACs | achieved (GFLOP/s) | of the roofline |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row, gmacs, gflops in result.achieved:
        share = gflops / result.rooflines[row.precision].best
        lines.append(
            f"| {row.model} | {row.precision} | {row.layout} | {row.resolution}² | {gmacs:.1f} | "
            f"{gflops:.0f} | {100 * share:.0f}% |"
        )
    return lines


def figures(result: BenchResult, name: str = "benchmarks") -> dict[str, Figure]:
    """Per mode, a figure of latency against tokens (log-log) and peak memory against resolution."""
    plots = {}
    for mode in dict.fromkeys(row.mode for row in result.rows):
        figure = Figure(figsize=(11, 4.5), layout="constrained")
        time_axes, memory_axes = figure.subplots(1, 2)
        series: dict[tuple[str, str, str, bool, str, str], list[BenchRow]] = {}
        for row in result.rows:
            if row.mode == mode and row.status == "ok":
                series.setdefault(row.series(), []).append(row)
        for (model, _, precision, compiled, layout, runtime), rows in series.items():
            label = f"{model} {precision}{' compiled' if compiled else ''}"
            label += " channels_last" if layout == "channels_last" else ""
            label += " onnxruntime" if runtime == "onnxruntime" else ""
            time_axes.plot([r.tokens for r in rows], [r.latency_ms for r in rows], "o-", label=label)
            memory_axes.plot(
                [r.resolution for r in rows], [r.peak_memory_mb for r in rows], "o-", label=label
            )
        time_axes.set(xscale="log", yscale="log", xlabel="tokens (first stage)", ylabel="latency (ms)")
        memory_axes.set(
            xscale="log", xlabel="resolution (pixels per side)", ylabel="peak memory increase (MB)"
        )
        time_axes.set_title(f"{mode}: time against tokens")
        memory_axes.set_title(f"{mode}: peak memory")
        if series:
            memory_axes.legend(fontsize="small")
        plots[f"{name}_{mode}.png"] = figure
    return plots


def save(result: BenchResult, out: Path, name: str = "benchmarks", title: str = "Benchmarks") -> list[Path]:
    """Write ``<name>.csv``, ``<name>.md`` and one PNG per mode into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.csv"]
    write_csv(result, written[0])
    plots = figures(result, name)
    for file_name, figure in plots.items():
        figure.savefig(out / file_name, dpi=100)
        written.append(out / file_name)
    (out / f"{name}.md").write_text(markdown(result, list(plots), title))
    written.append(out / f"{name}.md")
    return written
