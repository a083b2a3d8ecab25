"""Text tables of models and metrics, for the CLI, the notebooks and the app alike."""

from __future__ import annotations

import fnmatch

import torch

from workbench.models import list_models, model_info
from workbench.models.complexity import build_on_meta, count_gmacs, count_params
from workbench.models.detection import create_detector, detector_info, list_detectors


def _diff(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{(ours / paper - 1) * 100:+.2f}%"


def _setting(kwargs: dict) -> str:
    return ", ".join(
        f"{value}px" if key == "img_size" else f"{value} {key.replace('num_', '')}"
        for key, value in kwargs.items()
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def detectors_table(names: list[str]) -> list[str]:
    """Detectors' parameter counts (built on the meta device, COCO's 80 classes) beside the README's."""
    header = ("detector", "params M", "README", "diff")
    rows, notes = [], {}
    for name in names:
        info = detector_info(name)
        with torch.device("meta"):
            params = count_params(create_detector(name)) / 1e6
        notes.setdefault(info.note, len(notes) + 1)
        rows.append(
            (
                f"{name} [d{notes[info.note]}]",
                f"{params:.2f}",
                _fmt(info.params_m),
                _diff(params, info.params_m),
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return [*lines, *(f"[d{number}] {note}" for note, number in notes.items())]


def models_table(pattern: str = "*") -> str:
    """Every registered model matching ``pattern``: measured parameters and GFLOPs beside the paper's;
    then the matching detectors (parameters only)."""
    names = [name for name in list_models() if fnmatch.fnmatch(name, pattern)]
    detectors = [name for name in list_detectors() if fnmatch.fnmatch(name, pattern)]
    if not names and detectors:
        return "\n".join(detectors_table(detectors))
    if not names:
        known = ", ".join([*list_models(), *list_detectors()])
        raise ValueError(f"no registered model matches {pattern!r}; models are: {known}")
    header = ("model", "params M", "paper", "diff", "GFLOPs", "paper", "diff", "counted at", "GFLOPs at")
    rows, notes = [], {}
    for name in names:
        info = model_info(name)
        paper = info.paper
        params = count_params(build_on_meta(name, **paper.params_setting())) / 1e6
        gflops = count_gmacs(build_on_meta(name, **paper.build_setting()), paper.input_size)
        if paper.note:
            notes.setdefault(paper.note, len(notes) + 1)
        mark = f" [{notes[paper.note]}]" if paper.note else ""
        rows.append(
            (
                name + mark,
                f"{params:.2f}",
                _fmt(paper.params_m),
                _diff(params, paper.params_m),
                f"{gflops:.2f}",
                _fmt(paper.gflops),
                _diff(gflops, paper.gflops),
                _setting(paper.params_setting()),
                f"{paper.input_size}px, {paper.num_classes} classes",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    lines.append("params: learnable parameters. GFLOPs: multiply-adds (10^9) of one forward pass, eval mode.")
    lines += [f"[{number}] {note}" for note, number in notes.items()]
    if detectors:
        lines += ["", *detectors_table(detectors)]
    return "\n".join(lines)


def metrics_table(metrics: dict) -> str:
    """Per-class IoU / accuracy and the summary figures (or top-1 / top-5 for classifiers, or the
    per-category and summary COCO APs for detectors), as text."""
    if "per_category" in metrics:
        kinds = list(next(iter(metrics["per_category"].values()), {}))
        width = max([len("category"), *map(len, metrics["per_category"])])
        lines = ["  ".join(["category".ljust(width), *(f"{kind} AP".rjust(8) for kind in kinds)])]
        for name, aps in metrics["per_category"].items():
            lines.append("  ".join([name.ljust(width), *(f"{aps[kind]:8.2f}" for kind in kinds)]))
        summary = {k: v for k, v in metrics.items() if k != "per_category"}
        return "\n".join([*lines, "  ".join(f"{k} {v:.2f}" for k, v in summary.items())])
    if "IoU" not in metrics:
        return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
    width = max(len(name) for name in metrics["IoU"])
    lines = [f"{'class'.ljust(width)}    IoU    Acc"]
    for name, iou in metrics["IoU"].items():
        lines.append(f"{name.ljust(width)}  {iou:5.2f}  {metrics['Acc'][name]:5.2f}")
    lines.append(f"mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}  mAcc {metrics['mAcc']:.2f}")
    return "\n".join(lines)
