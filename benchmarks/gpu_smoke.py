"""Smoke run on a CUDA GPU: the Predictor, the analyses, the app's handlers and every notebook, each call
timed with its peak CUDA memory (not a test of the suite; run it where a GPU is).

    python benchmarks/gpu_smoke.py --out gpu_smoke.md
    python benchmarks/gpu_smoke.py --only predictor,analyses --models gpvit_l1_upernet --size 512
    python benchmarks/gpu_smoke.py --device cpu --only predictor --tiny --size 64   # the same code on a CPU

Parts (``--only``, all by default), each model randomly initialised:

- predictor: ``workbench.Predictor(model, device=..., precision="bf16")`` on each of ``--models`` at
  ``--size``: a prediction, ``set_image``, a click on every attention site, a GP block's groups;
- analyses: ``attention_distances``, ``effective_receptive_field`` and ``attribute`` on each model with
  bf16 weights on the device, fed CPU images (results must come back on the CPU);
- app: the Gradio app's handlers (``apps.handlers.Workbench``, bf16) on a checkpoint of ``--app-config``:
  a segmentation, a click, an occlusion attribution;
- notebooks: every notebook run top to bottom with the test suite's tiny parameters
  (``tests/test_notebooks.py``); its peak is the kernel's (0 MiB: the notebook ran on the CPU).

Times are wall-clock seconds with CUDA synchronised: the first call (cuDNN autotuning and lazy
initialisation included) and the best of ``--repeats`` for the Predictor's calls. Peak memory is
``torch.cuda.max_memory_allocated`` during the call, weights included. A failing call is reported in the
table and the exit code is 1; without CUDA (and no ``--device cpu``) one line says so and it exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``apps`` and the suite's notebook settings import from the root
    sys.path.insert(0, str(ROOT))
for name, value in (
    ("HF_HUB_OFFLINE", "1"),  # a GPU machine is often offline: timm would retry the hub for ~50 s
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("GRADIO_ANALYTICS_ENABLED", "False"),
    ("MPLBACKEND", "Agg"),
):
    os.environ.setdefault(name, value)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import workbench  # noqa: E402
from workbench.build import build_model  # noqa: E402
from workbench.config import load_config  # noqa: E402
from workbench.data.demo import render_scene  # noqa: E402
from workbench.interop.checkpoint import save_weights  # noqa: E402
from workbench.models import model_info  # noqa: E402
from workbench.viz.attribution import attribute  # noqa: E402
from workbench.viz.distance import attention_distances  # noqa: E402
from workbench.viz.groups import gp_sites  # noqa: E402
from workbench.viz.record import select_sites  # noqa: E402
from workbench.viz.rollout import effective_receptive_field  # noqa: E402

PARTS = ("predictor", "analyses", "app", "notebooks")
MODELS = "setr_pup_vit_large,gpvit_l1_upernet,setr_hlg_small"  # the papers' models, as in 07's benchmark
NUM_CLASSES = 150  # ADE20K's
PRECISION = "bf16"


@dataclass
class Row:
    """One call: seconds of the first run and the best of the repeats, peak CUDA MiB, error or note."""

    part: str
    call: str
    first_s: float | None = None
    best_s: float | None = None
    peak_mib: float | None = None
    error: str | None = None
    note: str = ""


class Smoke:
    """Runs calls on ``device``, each timed (CUDA synchronised) with its peak CUDA memory, into ``rows``."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats, self.rows = device, repeats, []
        self.cuda = device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def call(self, part: str, name: str, run: Callable[[], Any], repeats: int = 1) -> Any:
        """``run()`` ``repeats`` times as row ``part``/``name``; its result, or None when it failed."""
        row = Row(part, name)
        self.rows.append(row)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        seconds = []
        try:
            for _ in range(repeats):
                self._sync()
                start = time.perf_counter()
                result = run()
                self._sync()
                seconds.append(time.perf_counter() - start)
        except Exception as error:  # a smoke run reports every failure and goes on to the next call
            row.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            return None
        row.first_s, row.best_s = seconds[0], min(seconds[1:], default=None)
        if self.cuda:
            row.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        return result


def _model(name: str, tiny: bool) -> torch.nn.Module:
    overrides = model_info(name).tiny if tiny else {}
    return workbench.create_segmentor(name, num_classes=NUM_CLASSES, **overrides).eval()


def _on_cpu(result: Any) -> Any:
    """``result`` when every tensor in it (dicts, an ``Attribution``) is on the CPU; else a ValueError."""
    fields = {"result": result} if isinstance(result, torch.Tensor) else result
    values = (fields if isinstance(fields, dict) else vars(fields)).values()
    if any(isinstance(value, torch.Tensor) and value.device.type != "cpu" for value in values):
        raise ValueError("a result stayed on the model's device")
    return result


def predictor_part(smoke: Smoke, models: list[str], size: int, tiny: bool) -> None:
    photo, _ = render_scene(np.random.default_rng(0), size)
    for name in models:
        _predictor_calls(smoke, name, photo, tiny)  # a function: one model on the device at a time


def _predictor_calls(smoke: Smoke, name: str, photo: np.ndarray, tiny: bool) -> None:
    predictor = smoke.call(
        "predictor",
        f"{name}: build, to {smoke.device}",
        lambda: workbench.Predictor(
            _model(name, tiny).to(smoke.device), device=smoke.device, precision=PRECISION
        ),
    )
    if predictor is None:
        return
    y, x = photo.shape[0] // 3, photo.shape[1] // 2
    sites = list(select_sites(predictor.model, None))
    smoke.call("predictor", f"{name}: predict", lambda: predictor(photo), smoke.repeats)
    smoke.call("predictor", f"{name}: set_image", lambda: predictor.set_image(photo), smoke.repeats)
    smoke.call(
        "predictor",
        f"{name}: click on {len(sites)} sites",
        lambda: [predictor.attention_at(y, x, site) for site in sites],
        smoke.repeats,
    )
    blocks = list(gp_sites(dict.fromkeys(sites)))
    if blocks:  # a GPViT: its first GP block's groups
        smoke.call(
            "predictor", f"{name}: groups of {blocks[0]}", lambda: predictor.group_assignment(blocks[0])
        )


def analyses_part(smoke: Smoke, models: list[str], size: int, tiny: bool) -> None:
    images = torch.randn(2, 3, size, size)  # on the CPU, as a data set gives them
    for name in models:
        _analyses_calls(smoke, name, images, tiny)


def _analyses_calls(smoke: Smoke, name: str, images: torch.Tensor, tiny: bool) -> None:
    model = smoke.call(
        "analyses", f"{name}: bf16 weights", lambda: _model(name, tiny).to(smoke.device, torch.bfloat16)
    )
    if model is None:
        return
    size = images.shape[-1]
    box = (size // 4, size // 4, size // 2, size // 2)
    calls = {
        "attention_distances": lambda: attention_distances(model, images),
        "effective_receptive_field": lambda: effective_receptive_field(model, images),
        "attribute (saliency)": lambda: attribute(model, images, 1, box, "saliency"),
    }
    for call, run in calls.items():
        smoke.call("analyses", f"{name}: {call}", lambda run=run: _on_cpu(run()))


def app_part(smoke: Smoke, config: str, size: int) -> None:
    from apps.handlers import Workbench
    from apps.settings import Settings  # gradio's import costs seconds: only when the app runs

    y, x = size // 3, size // 2
    with TemporaryDirectory() as folder:
        cfg = load_config(config)
        save_weights(folder, build_model(cfg), cfg)
        path = str(Path(folder) / "scene.png")
        Image.fromarray(render_scene(np.random.default_rng(0), size)[0]).save(path)
        settings = Settings(device=str(smoke.device), precision=PRECISION)
        app = smoke.call("app", f"{config}: load", lambda: Workbench(settings, folder))
        if app is None:
            return
        key = app.default.key
        smoke.call("app", "label_map (segment)", lambda: app.label_map(key, path))
        smoke.call("app", "attention (click)", lambda: app.attention(key, path, y, x, "", "mean"))
        smoke.call("app", "attribution (occlusion)", lambda: app.attribution(key, path, (y, x), "occlusion"))


PEAK_CELL = "import torch\nprint(torch.cuda.max_memory_allocated() if torch.cuda.is_available() else -1)"


def _run_notebook(path: Path, parameters: dict, timeout: int, cpu: bool) -> float | None:
    """Execute a copy of ``path`` with ``parameters`` (read from WORKBENCH_NB_PARAMETERS, as the suite
    sets them); the kernel's peak CUDA MiB, from a cell appended to the copy (None without CUDA)."""
    import nbformat  # the test extras, needed for this part alone
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    environment = {"WORKBENCH_NB_PARAMETERS": json.dumps(parameters)}
    if cpu:
        environment["CUDA_VISIBLE_DEVICES"] = ""  # --device cpu: the kernel sees no GPU either
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)  # the kernel inherits them
    try:
        NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    peak = int(notebook.cells[-1].outputs[0]["text"])
    return None if peak < 0 else peak / 2**20


def notebooks_part(smoke: Smoke) -> None:
    from tests.test_notebooks import CELL_TIMEOUT, NOTEBOOKS, TINY  # the suite's tiny settings, in one place

    for name, settings in TINY.items():
        with TemporaryDirectory() as folder:
            parameters = json.loads(json.dumps(settings).replace("{tmp}", folder))
            peak = smoke.call(
                "notebooks",
                name,
                lambda path=NOTEBOOKS / f"{name}.ipynb", parameters=parameters: _run_notebook(
                    path, parameters, CELL_TIMEOUT, not smoke.cuda
                ),
            )
        row = smoke.rows[-1]
        if row.error is None:
            row.peak_mib = peak
            if smoke.cuda and not peak:
                row.note = "no CUDA memory used: ran on the CPU"


def markdown(rows: list[Row], header: str) -> str:
    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    lines = [
        header,
        "",
        "| part | call | first (s) | best (s) | peak CUDA (MiB) | status |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        peak = "" if row.peak_mib is None else f"{row.peak_mib:.0f}"
        status = f"FAILED: {row.error}" if row.error else f"ok{'; ' + row.note if row.note else ''}"
        lines.append(
            f"| {row.part} | {row.call} | {seconds(row.first_s)} | {seconds(row.best_s)} | {peak} | {status} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="markdown file for the table")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the code paths, no GPU)")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}"
    )
    parser.add_argument("--models", default=MODELS, help="segmentors for the predictor and the analyses")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--tiny", action="store_true", help="the models' registered tiny settings")
    parser.add_argument("--app-config", default="demo_gpvit", help="config of the app's checkpoint")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each Predictor call")
    args = parser.parse_args(argv)
    parts = args.only.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; expected some of {', '.join(PARTS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_smoke: no CUDA GPU on this machine (torch {torch.__version__}); nothing run (--device cpu runs it on the CPU)"
        )
        return 2
    smoke, models = Smoke(device, args.repeats), args.models.split(",")
    if "predictor" in parts:
        predictor_part(smoke, models, args.size, args.tiny)
    if "analyses" in parts:
        analyses_part(smoke, models, args.size, args.tiny)
    if "app" in parts:
        app_part(smoke, args.app_config, args.size)
    if "notebooks" in parts:
        notebooks_part(smoke)
    where = torch.cuda.get_device_name(device) if smoke.cuda else "CPU"
    header = (
        f"# GPU smoke: {where}\n\ntorch {torch.__version__} (CUDA {torch.version.cuda}), precision {PRECISION}, "
        f"models at {args.size}x{args.size}{' (tiny)' if args.tiny else ''}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    table = markdown(smoke.rows, header)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 1 if any(row.error for row in smoke.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
