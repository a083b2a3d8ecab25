"""Side by side at one size and precision: each model's eager forward, mmseg's way to labels, the
Predictor, torch.compile, the machine's roofline and where the time goes (not a test; writes Markdown).

    python benchmarks/fast_path.py --threads 2 --compile --out docs/fast_path.md

Per model, in one process, on fixed random weights and a random 512x512 photo:
- ``forward``: the model's forward under ``torch.autocast`` (plain eager; the bench's baseline).
- ``mmseg labels``: forward, softmax over the classes at the input's size and arg-max: how mmseg's
  ``simple_test`` (and the papers' code built on it) turns logits into labels.
- ``Predictor``: ``Predictor(model, precision=...)(photo)`` end to end, preprocessing included.
- ``compiled``: ``torch.compile`` (inductor) of the forward: its first call (the compile) and median.
With ``--official``, the released GPViT code (ChenhongyiYang/GPViT, built through
``benchmarks/official``: its mmseg backbone and UPerNet, our weights converted into it) joins the
table as "(official code)" rows, timed in the same rounds as ours (its forward is mmseg's
``encode_decode``; its backbone gives the segmentor's four maps, ours ``forward_features``).
Medians of ``--repeats`` calls, the cases of a model interleaved so drift hits them alike. GFLOP/s are
2 x GMACs (``workbench.models.complexity``) per second, against the roofline measured here
(``workbench.engine.roofline``). The profile splits one eager forward's operator time by kind.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from workbench import Predictor
from workbench.engine.roofline import achieved_gflops, measure_roofline
from workbench.models import create_segmentor
from workbench.models.complexity import count_gmacs
from workbench.precision import autocast, resolve_precision

MODELS = {  # name -> (build at a size, gives logits (segmentor), takes the Predictor)
    "gpvit_l1_upernet": (lambda size: create_segmentor("gpvit_l1_upernet", num_classes=150), True, True),
    "gpvit_l1": (lambda size: timm.create_model("gpvit_l1", num_classes=0), False, False),
    "setr_pup_vit_base": (
        lambda size: create_segmentor("setr_pup_vit_base", num_classes=150, img_size=size),
        True,
        True,
    ),
    "setr_pup_vit_large": (
        lambda size: create_segmentor("setr_pup_vit_large", num_classes=150, img_size=size),
        True,
        True,
    ),
    "setr_hlg_small": (lambda size: create_segmentor("setr_hlg_small", num_classes=150), True, True),
    "vit_base_patch16_384": (
        lambda size: timm.create_model("vit_base_patch16_384", num_classes=0, dynamic_img_size=True),
        False,
        False,
    ),
}
KINDS = {  # operator kind -> name fragments of the aten operators it counts
    "convolution": ("convolution",),
    "matmul": ("addmm", "aten::mm", "bmm", "aten::matmul"),
    "attention": ("scaled_dot_product",),
    "resize": ("upsample",),
    "copies": ("copy_", "clone", "contiguous", "aten::cat", "constant_pad"),
    "norms": ("layer_norm", "batch_norm", "group_norm"),
}


def median_ms(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def official(name: str) -> Callable[[int], nn.Module]:
    """A builder of the released GPViT code's ``name`` ("upernet" or "backbone", its four maps at
    layers 2, 5, 8, 11) holding our same-seed model's weights (``to_official``)."""

    def build(size: int) -> nn.Module:
        from workbench.interop.gpvit import to_official

        released = _load_file(Path(__file__).parent / "official" / "gpvit.py")
        build_official_gpvit_l1, build_official_upernet_l1 = (
            released.build_official_gpvit_l1,
            released.build_official_upernet_l1,
        )

        torch.manual_seed(0)
        if name == "upernet":
            ours = create_segmentor("gpvit_l1_upernet", num_classes=150)
            theirs = build_official_upernet_l1(num_classes=150)
        else:
            ours = timm.create_model("gpvit_l1", num_classes=0, global_pool="", out_indices=(2, 5, 8, 11))
            theirs = build_official_gpvit_l1()
        state = to_official(ours.state_dict())
        if name != "upernet":
            state = {key.removeprefix("backbone."): value for key, value in state.items()}
        theirs.load_state_dict(state, strict=True)
        theirs.eval()  # the official backbone's train() returns None: not chained
        return theirs

    return build


@functools.cache
def _load_file(path: Path):
    """The module of a Python file by its path (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OFFICIAL = {  # our model -> a builder of the released code's
    "gpvit_l1_upernet": official("upernet"),
    "gpvit_l1": official("backbone"),
}


def mmseg_labels(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Logits at the input size, their softmax and arg-max, as mmseg's ``simple_test`` does."""
    return model(images).float().softmax(1).argmax(1).cpu().numpy()


def profile_kinds(forward: Callable[[], object]) -> dict[str, float]:
    """Self CPU milliseconds of one call by operator kind, the rest under "other"."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    kinds = dict.fromkeys([*KINDS, "other"], 0.0)
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        kind = next((k for k, parts in KINDS.items() if any(p in event.key for p in parts)), "other")
        kinds[kind] += event.self_cpu_time_total / 1000
    return kinds


def measure(
    name: str, size: int, precision: str, repeats: int, compile_model: bool, official: bool
) -> list[dict]:
    """The rows of model ``name``: its own, and with ``official`` the released code's of the same model
    (where there is one), timed in the same interleaved rounds so that drift hits both alike."""
    build, segmentor, takes_predictor = MODELS[name]
    torch.manual_seed(0)
    model = build(size).eval()
    chosen = resolve_precision(precision, "cpu")
    images = torch.randn(1, 3, size, size)
    photo = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    forward = model if segmentor else model.forward_features
    cases: dict[str, Callable[[], object]] = {"forward": lambda: forward(images)}
    if segmentor:
        cases["mmseg labels"] = lambda: mmseg_labels(model, images)
    if takes_predictor:
        predictor = Predictor(model, precision=precision, compile="no")
        cases["Predictor"] = lambda: predictor(photo)
    rows = [{"model": name, "gmacs": count_gmacs(model, size)}]
    if official and name in OFFICIAL:
        theirs = OFFICIAL[name](size)
        cases["official forward"] = lambda: theirs(images)
        if segmentor:
            cases["official mmseg labels"] = lambda: mmseg_labels(theirs, images)
        rows.append({"model": f"{name} (official code)", "gmacs": count_gmacs(theirs, size)})
    with torch.no_grad(), autocast(chosen, "cpu"):
        if compile_model:
            compiled = torch.compile(forward)
            start = time.perf_counter()
            compiled(images)
            rows[0]["compile_s"] = time.perf_counter() - start
            cases["compiled"] = lambda: compiled(images)
        for case in cases.values():
            case()  # warm
        rounds = {label: [] for label in cases}
        for _ in range(repeats):
            for label, case in cases.items():
                rounds[label].append(median_ms(case, 1))
        for label, times in rounds.items():
            row = rows[1] if label.startswith("official ") else rows[0]
            row[label.removeprefix("official ")] = statistics.median(times)
        rows[0]["kinds"] = profile_kinds(lambda: forward(images))
        if len(rows) > 1:
            rows[1]["kinds"] = profile_kinds(lambda: theirs(images))
    for row in rows:
        print(row, flush=True)
    return rows


def report(rows: list[dict], size: int, precision: str, roofline, threads: int) -> str:
    lines = [
        f"# Fast path: side by side at {size}², {precision}, batch 1",
        "",
        "Regenerate with `make bench` (`python benchmarks/fast_path.py`). "
        f"{threads} CPU threads, torch {torch.__version__}, timm {timm.__version__}; random weights; "
        f"medians of interleaved calls. Roofline measured in the same run: matmul "
        f"{roofline.matmul_gflops:.0f} GFLOP/s, convolution {roofline.conv_gflops:.0f} GFLOP/s ({precision}).",
        "",
        "| model | GMACs | forward (ms) | GFLOP/s | of roofline | mmseg labels (ms) | Predictor (ms) | "
        "Predictor vs mmseg | compiled (ms) | compiled vs forward | compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        gflops = achieved_gflops(row["gmacs"], row["forward"])
        cells = [
            row["model"],
            f"{row['gmacs']:.1f}",
            f"{row['forward']:.0f}",
            f"{gflops:.0f}",
            f"{100 * gflops / roofline.best:.0f}%",
        ]
        mmseg, predictor, compiled = (row.get(key) for key in ("mmseg labels", "Predictor", "compiled"))
        cells += [f"{mmseg:.0f}" if mmseg else "—", f"{predictor:.0f}" if predictor else "—"]
        cells += [f"{mmseg / predictor:.2f}×" if predictor else "—"]
        cells += [f"{compiled:.0f}" if compiled else "—"]
        cells += [f"{row['forward'] / compiled:.2f}×" if compiled else "—"]
        cells += [f"{row['compile_s']:.0f}" if compiled else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Where an eager forward's time goes (profiled, self CPU ms and share)", ""]
    kinds = list(rows[0]["kinds"])
    lines += ["| model | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for row in rows:
        total = sum(row["kinds"].values())
        lines.append(
            f"| {row['model']} | "
            + " | ".join(f"{ms:.0f} ({100 * ms / total:.0f}%)" for ms in row["kinds"].values())
            + " |"
        )
    lines += [
        "",
        "Reading: `forward` is plain eager execution of the model as built (the `workbench bench "
        "--baseline eager` case); `mmseg labels` adds what mmseg's `simple_test` does to reach labels "
        "(softmax and arg-max over the classes at the input's size); the `Predictor` reads its labels "
        "from the decode head's logits (`argmax_resized`: exact, without the K x H x W resize). "
        "`of roofline` is the forward's GFLOP/s over the faster of the two measured limits. The "
        "profile's convolution, matmul and attention columns are oneDNN's and PyTorch's kernels; "
        "what fusing can remove lies in the others.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes each)")
    parser.add_argument(
        "--official",
        action="store_true",
        help="add the released GPViT code's rows (needs its checkout: benchmarks/official/README.md)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--out", help="write the Markdown report here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    roofline = measure_roofline(args.precision, "cpu")
    rows = [
        row
        for name in args.models
        for row in measure(name, args.size, args.precision, args.repeats, args.compile, args.official)
    ]
    text = report(rows, args.size, args.precision, roofline, torch.get_num_threads())
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
