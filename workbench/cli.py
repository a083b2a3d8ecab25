"""The ``workbench`` command."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from pathlib import Path

from workbench.engine.distributed import is_main
from workbench.models import list_models, model_info
from workbench.models.complexity import build_on_meta, count_gmacs, count_params


def _diff(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{(ours / paper - 1) * 100:+.2f}%"


def _setting(kwargs: dict) -> str:
    return ", ".join(
        f"{value}px" if key == "img_size" else f"{value} {key.replace('num_', '')}"
        for key, value in kwargs.items()
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def models_table(pattern: str = "*") -> str:
    """Every registered model matching ``pattern``: measured parameters and GFLOPs beside the paper's."""
    names = [name for name in list_models() if fnmatch.fnmatch(name, pattern)]
    if not names:
        raise ValueError(f"no registered model matches {pattern!r}; models are: {', '.join(list_models())}")
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
    return "\n".join(lines)


def metrics_table(metrics: dict) -> str:
    """Per-class IoU / accuracy and the summary figures (or top-1 / top-5 for classifiers), as text."""
    if "IoU" not in metrics:
        return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
    width = max(len(name) for name in metrics["IoU"])
    lines = [f"{'class'.ljust(width)}    IoU    Acc"]
    for name, iou in metrics["IoU"].items():
        lines.append(f"{name.ljust(width)}  {iou:5.2f}  {metrics['Acc'][name]:5.2f}")
    lines.append(f"mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}  mAcc {metrics['mAcc']:.2f}")
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> None:
    from workbench.config import load_config
    from workbench.engine import train

    cfg = load_config(args.config, args.overrides)
    resume = {"auto": "auto", "none": False}.get(args.resume, args.resume)
    result = train(cfg, resume=resume)
    if "metrics" in result and is_main():
        print(metrics_table(result["metrics"]))


def _eval(args: argparse.Namespace) -> None:
    from workbench.config import load_config
    from workbench.engine import build_model, load_weights
    from workbench.engine.distributed import setup
    from workbench.engine.train import build_task_datasets, evaluate_task

    cfg = load_config(args.config, args.overrides)
    rank, world, device = setup()
    model = build_model(cfg)
    load_weights(model, args.checkpoint, ema=args.ema)
    _, val_set = build_task_datasets(cfg)
    metrics = evaluate_task(cfg, model.to(device), val_set, device, rank, world)
    if is_main():
        print(metrics_table(metrics))


def _predict(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image

    from workbench.data.datasets import read_image
    from workbench.engine import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in map(Path, args.images):
        image = read_image(path)
        prediction = predictor(image)
        Image.fromarray(prediction.colorize()).save(out / f"{path.stem}_mask.png")
        Image.fromarray(prediction.overlay(image)).save(out / f"{path.stem}_overlay.png")
        Image.fromarray(prediction.labels.astype(np.uint8)).save(out / f"{path.stem}_labels.png")
        print(f"{path} -> {out / path.stem}_{{mask,overlay,labels}}.png")


def _convert(args: argparse.Namespace) -> None:
    from workbench.config import Config, ModelConfig
    from workbench.engine.checkpoint import save_weights
    from workbench.interop import load_pretrained

    info = model_info(args.model)
    classes = args.num_classes or info.paper.num_classes
    model = info.entrypoint(num_classes=classes)  # segmentor or classifier: both are timm entry points
    report = load_pretrained(model, args.source, format=args.format, strict=not args.lenient)
    cfg = Config(task=info.task, model=ModelConfig(args.model, {}))
    cfg.data.num_classes = classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out, model, cfg)
    print(report)
    print(f"wrote {out}/model.safetensors and {out}/config.yaml")


def _demo(args: argparse.Namespace) -> None:
    from workbench.demo import demo_checkpoint, demo_metrics

    checkpoint = demo_checkpoint(args.config, retrain=args.retrain)
    print(f"demo checkpoint: {checkpoint}")
    print(metrics_table(demo_metrics(checkpoint)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="table of every registered model against its paper")
    models.add_argument("pattern", nargs="?", default="*", help="glob on model names, e.g. 'setr_*_base'")
    train = commands.add_parser("train", help="train a segmentor (torchrun for several processes)")
    train.add_argument("config", help="YAML config, e.g. configs/demo_gpvit.yaml")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 iters=200")
    train.add_argument(
        "--resume", default="auto", help="auto (newest checkpoint of work_dir), none, or a checkpoint"
    )
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    evaluate.add_argument("config")
    evaluate.add_argument("overrides", nargs="*")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    evaluate.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    predict = commands.add_parser("predict", help="write coloured masks and overlays for images")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--out", default="predictions")
    convert = commands.add_parser("convert", help="a released checkpoint -> a workbench checkpoint")
    convert.add_argument("source", help="file, URL or catalogue name (e.g. gpvit_l1_in1k)")
    convert.add_argument("out", help="output folder (model.safetensors + config.yaml)")
    convert.add_argument("--model", required=True, help="registered model name, e.g. gpvit_l1")
    convert.add_argument("--num-classes", type=int, default=0, help="default: the paper's setting")
    convert.add_argument("--format", default="auto")
    convert.add_argument("--lenient", action="store_true", help="load what fits instead of refusing")
    demo = commands.add_parser("demo", help="train (once, cached) and evaluate the demo model")
    demo.add_argument("--config", default="configs/demo_gpvit.yaml")
    demo.add_argument("--retrain", action="store_true")
    args = parser.parse_args(argv)
    handlers = {"train": _train, "eval": _eval, "predict": _predict, "convert": _convert, "demo": _demo}
    try:
        if args.command == "models":
            print(models_table(args.pattern))
        else:
            handlers[args.command](args)
    except (ValueError, FloatingPointError) as error:
        print(f"workbench: {error}", file=sys.stderr)
        return 2
    return 0
