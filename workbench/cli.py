"""The workbench command: train, evaluate, apply, export, study and convert dense-prediction vision
transformers (SETR, HLG, GPViT) following their papers' recipes.

Every subcommand is a thin layer over a library call. Errors a user can fix (a bad config field, a
missing file, an output that exists) end in one line 'workbench: ...' on stderr and exit status 2;
Ctrl-C ends with status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench import __version__
from workbench.engine.distributed import is_main
from workbench.models import model_info
from workbench.viz.tables import metrics_table, models_table

if TYPE_CHECKING:
    from workbench.config import Config
    from workbench.models.registry import ModelInfo


def _train(args: argparse.Namespace) -> None:
    from workbench.config import load_config
    from workbench.engine import train

    cfg = load_config(args.config, args.overrides)
    _check_writable(Path(cfg.work_dir), "work_dir")
    resume = {"auto": "auto", "none": False}.get(args.resume, args.resume)
    result = train(cfg, resume=resume)
    if "metrics" in result and is_main():
        print(metrics_table(result["metrics"]))


def _eval(args: argparse.Namespace) -> None:
    from workbench.build import build_datasets, build_model
    from workbench.config import load_config
    from workbench.engine.distributed import setup
    from workbench.engine.tasks import task_of
    from workbench.interop import load_weights

    cfg = load_config(args.config, args.overrides)
    rank, world, device = setup()
    model = build_model(cfg)
    load_weights(model, args.checkpoint, ema=args.ema)
    _, val_set = build_datasets(cfg)
    metrics = task_of(cfg).evaluate(cfg, model.to(device), val_set, device, rank, world)
    if is_main():
        print(metrics_table(metrics))


def _check_writable(folder: Path, what: str) -> None:
    """Refuse, before any work and without creating anything, a folder that cannot be made or written."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"{what} {folder}: cannot write in {existing} ({error.strerror})") from error


def _predict(args: argparse.Namespace) -> None:
    from workbench.engine.distributed import process_group
    from workbench.inference import load_predictor
    from workbench.inference.folder import list_images, predict_folder

    list_images(args.sources)  # a missing image or an empty folder: refused before loading the model
    out = Path(args.out)
    _check_writable(out, "--out")
    with process_group() as (rank, world, device):
        # Under torchrun each process takes its own GPU (LOCAL_RANK) unless told otherwise.
        chosen = str(device) if world > 1 and args.device in (None, "cuda") else args.device
        predictor = load_predictor(args.checkpoint, device=chosen, precision=args.precision)
        summary = predict_folder(
            predictor,
            args.sources,
            out,
            batch=args.batch,
            workers=args.workers,
            overlays=args.overlays,
            overwrite=args.overwrite,
        )
        if rank == 0:
            print(summary)


def _convert(args: argparse.Namespace) -> None:
    import yaml

    from workbench.interop import load_pretrained
    from workbench.interop.checkpoint import is_checkpoint, save_weights
    from workbench.interop.posgrid import parse_grid

    kwargs = {}
    for pair in args.model_arg:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg expects key=value (e.g. aux_convs=2), got {pair!r}")
        try:
            kwargs[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"--model-arg {key}: {value!r} is not a YAML value ({error.problem})") from None
    pos_grid = parse_grid(args.pos_grid) if args.pos_grid else None
    out = Path(args.out)
    _check_writable(out, "out")
    if is_checkpoint(out):  # a converted or trained checkpoint is never replaced silently
        raise ValueError(f"{out} already holds a checkpoint; choose another output folder")
    info = model_info(args.model)
    classes = args.num_classes or info.paper.num_classes
    if args.dataset and info.task != "segmentation":
        raise ValueError(f"--dataset picks a segmentation test recipe; {args.model} is a {info.task} model")
    try:  # segmentor or classifier: both are timm entry points
        model = info.entrypoint(num_classes=classes, **kwargs)
    except TypeError as error:  # an unknown keyword reaches the constructor
        raise ValueError(f"--model-arg: {args.model} does not take these arguments ({error})") from None
    report = load_pretrained(
        model, args.source, format=args.format, strict=not args.lenient, pos_grid=pos_grid
    )
    cfg, recipe = _converted_config(info, kwargs, classes, args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out, model, cfg)
    print(report)
    print(f"wrote {out}/model.safetensors and {out}/config.yaml ({recipe})")


def _converted_config(info: ModelInfo, kwargs: dict, classes: int, dataset: str | None) -> tuple[Config, str]:
    """The config.yaml of a converted checkpoint, which ``workbench predict`` follows, and what it
    holds in words: the model as built and, for a segmentor, the paper's test recipe (scale,
    inference mode, class names) on ``dataset`` or on the data set of its class count, where known."""
    from workbench.config import Config, ModelConfig
    from workbench.inference.recipes import recipe_for

    cfg = recipe_for(info.name, classes, dataset) if info.task == "segmentation" else None
    if cfg is None:  # no recipe known: the Predictor runs whole images at their own size
        cfg, recipe = Config(task=info.task, model=ModelConfig(info.name)), "no test recipe known"
    else:
        recipe = f"{cfg.data.dataset} test recipe: scale {cfg.data.scale}, {cfg.eval.mode} inference"
    cfg.model.kwargs = kwargs
    cfg.data.num_classes = classes
    return cfg, recipe


def _study(args: argparse.Namespace) -> None:
    from workbench.studies.run import run_study

    models = [_study_model(source) for source in args.models]
    options = {"count": args.count, "precision": args.precision}
    if args.study in ("cka", "probes", "statistics"):  # ablation and lens draw nothing at random
        options["seed"] = args.seed
    if args.batch_size:
        options["batch_size"] = args.batch_size
    if args.study == "probes":
        options["steps"] = args.steps
    tables = run_study(args.study, models, args.out, data=args.data, overwrite=args.overwrite, **options)
    print(f"{args.study}: {len(tables)} table(s) written into {args.out}")


def _study_model(source: str) -> tuple[str, str]:
    """(name, path) of a run folder or checkpoint as given, or of a demo config's trained model
    (demo_setr), named after it."""
    from workbench.studies.run import model_label

    if Path(source).exists() or not source.startswith("demo_"):
        return model_label(source), source
    from workbench.demo import demo_checkpoint

    return source, str(demo_checkpoint(source))


def _export(args: argparse.Namespace) -> None:
    from workbench.build import classes_of
    from workbench.inference import load_run
    from workbench.interop import export

    out = Path(args.out)
    _check_writable(out, "--out")
    existing = [
        out / f"{out.name}.{suffix}" for suffix in args.formats if (out / f"{out.name}.{suffix}").exists()
    ]
    if existing and not args.overwrite:  # an export is never replaced silently
        raise ValueError(f"{existing[0]} exists; pass --overwrite to replace it, or choose another --out")
    cfg, model, _ = load_run(args.checkpoint)
    result = export(
        model,
        out,
        name=out.name,
        size=tuple(args.size) if args.size else None,
        formats=args.formats,
        dynamic=not args.static,
        max_side=args.max_side,
        recipe=cfg,
        class_names=classes_of(cfg).names,
    )
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    for fmt, dynamic in result.dynamic.items():
        print(f"{fmt}: {'dynamic height and width' if dynamic else 'static: ' + result.static_reason[fmt]}")
    for row in result.parity:
        shown = (
            row.error or f"max |logit diff| {row.max_abs_diff:.2e}, arg-max {100 * row.argmax_agreement:.3f}%"
        )
        print(f"parity {row.runtime} {row.size[0]}x{row.size[1]}: {shown}")


def _demo(args: argparse.Namespace) -> None:
    from workbench.demo import demo_checkpoint, demo_metrics

    checkpoint = demo_checkpoint(args.config, retrain=args.retrain)
    print(f"demo checkpoint: {checkpoint}")
    print(metrics_table(demo_metrics(checkpoint)))


def _bench(args: argparse.Namespace) -> None:
    import torch

    from workbench.engine import bench

    out = Path(args.out)
    _check_writable(out, "--out")
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    threads = torch.get_num_threads()
    if args.threads:  # for this command only: a caller's later work keeps its own thread count
        torch.set_num_threads(args.threads)
    try:
        result = bench.run_bench(
            models=args.models or tuple(bench.BENCH_MODELS),
            sizes=args.sizes or (bench.QUICK_SIZES if args.quick else bench.FULL_SIZES),
            modes=args.modes,
            precisions=args.precisions,
            compiled=(False, True) if args.compile else (False,),
            layouts=args.layouts,
            batch=args.batch,
            repeats=args.repeats if args.repeats else 1 if args.quick else 3,
            device=device,
            memory_budget_mb=args.memory_budget_mb,
            time_budget_s=args.time_budget_s,
            quick=args.quick,
            runtimes=args.runtimes,
            roofline=args.roofline,
            baseline=args.baseline,
        )
    finally:
        torch.set_num_threads(threads)
    for path in bench.save(result, out, args.name, args.title):
        print(f"wrote {path}")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples keep their lines; every argument with a default worth saying shows it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        return f"{action.help} (default: %(default)s)" if shown else action.help or ""


_OVERRIDES_HELP = (
    "key=value config overrides, anywhere on the line (YAML values), e.g. optim.lr=1e-3 iters=200"
)
_CONFIG_HELP = "YAML config file, or a preset shipped with the package (e.g. demo_gpvit, tiny_setr)"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``workbench`` parser and its subcommand parsers by name."""
    from workbench.inference.recipes import DATASET_OF_CLASS_COUNT
    from workbench.interop import FORMATS

    datasets = sorted(set(DATASET_OF_CLASS_COUNT.values()))

    parser = argparse.ArgumentParser(
        prog="workbench",
        description=__doc__,
        formatter_class=_HelpFormatter,
        epilog="Run 'workbench COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=f"example:\n  {example}",
            formatter_class=_HelpFormatter,
        )

    models = command(
        "models",
        "Table of every registered model: parameters and GFLOPs beside its paper's.",
        "workbench models 'gpvit_*'",
    )
    models.add_argument("pattern", nargs="?", default="*", help="glob on model names, e.g. 'setr_*_base'")

    train = command(
        "train",
        "Train a model on a config's data set; resumes a run of work_dir (torchrun for several GPUs).",
        "workbench train demo_gpvit optim.lr=5e-4 iters=600 work_dir=runs/lr5e-4",
    )
    train.add_argument("config", help=_CONFIG_HELP)
    train.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
    train.add_argument(
        "--resume",
        default="auto",
        metavar="{auto,none,CHECKPOINT}",
        help="auto: continue work_dir's newest checkpoint; none: a fresh run (refused if work_dir holds one); "
        "or a checkpoint folder to start from",
    )

    evaluate = command(
        "eval",
        "Evaluate a checkpoint on the config's validation split (per-class IoU, mIoU).",
        "workbench eval tiny_setr --checkpoint runs/tiny_setr eval.flip=true eval.scales=[0.75,1.0]",
    )
    evaluate.add_argument("config", help=_CONFIG_HELP)
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
    evaluate.add_argument(
        "--checkpoint", required=True, help="a checkpoint folder, or a run folder (its newest checkpoint)"
    )
    evaluate.add_argument("--ema", action="store_true", help="evaluate the EMA weights of the checkpoint")

    predict = command(
        "predict",
        "Segment or detect in every image of folders, globs or files: label PNGs (or COCO detection "
        "results), optional overlays, an index; resumable, sharded across torchrun processes.",
        "workbench predict photos/ --checkpoint runs/demo_gpvit --out predictions --batch 8 --workers 2",
    )
    predict.add_argument(
        "sources",
        nargs="+",
        metavar="DIR_OR_GLOB_OR_FILE",
        help="folders (searched recursively), quoted globs ('photos/**/*.jpg') or image files (any "
        "format and mode PIL reads; EXIF orientation applied)",
    )
    predict.add_argument(
        "--checkpoint", required=True, help="a checkpoint folder, or a run folder (its newest checkpoint)"
    )
    predict.add_argument(
        "--out",
        default="predictions",
        help="output folder: IMAGE_labels.png (or IMAGE_detections.json and one detections.json in COCO "
        "results format), index.json and index.csv; parent folders are added to names to tell apart "
        "images of the same name",
    )
    predict.add_argument(
        "--batch", type=int, default=1, help="images per forward (segmentors stack same-size test views)"
    )
    predict.add_argument("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)")
    predict.add_argument(
        "--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"], help="autocast precision"
    )
    predict.add_argument("--workers", type=int, default=0, help="processes decoding images (0: this one)")
    predict.add_argument(
        "--overlays",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write IMAGE_mask.png and IMAGE_overlay.png (a detection run: IMAGE_detections.png, "
        "the detections drawn); --no-overlays writes the labels (or detections) alone",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="redo images whose outputs exist (complete ones are skipped; files not written for an image "
        "by an earlier run are refused otherwise)",
    )

    convert = command(
        "convert",
        "Turn a released checkpoint (official, mmseg, timm) into a workbench checkpoint folder.",
        "workbench convert gpvit_l1_in1k runs/gpvit_l1_in1k --model gpvit_l1",
    )
    convert.add_argument("source", help="file, URL or catalogue name (e.g. gpvit_l1_in1k)")
    convert.add_argument("out", help="output folder (model.safetensors + config.yaml)")
    convert.add_argument(
        "--model", required=True, help="registered model name, e.g. gpvit_l1 (see workbench models)"
    )
    convert.add_argument(
        "--num-classes", type=int, default=0, help="classes of the model; 0: the paper's setting"
    )
    convert.add_argument(
        "--format", default="auto", choices=FORMATS, help="layout of the source; auto: detected from its keys"
    )
    convert.add_argument("--lenient", action="store_true", help="load what fits instead of refusing")
    convert.add_argument(
        "--pos-grid",
        metavar="HxW",
        help="position grid the source was saved at, in tokens (e.g. 24x32), when it cannot be read from it",
    )
    convert.add_argument(
        "--dataset",
        choices=datasets,
        help="data set whose test recipe (scale, inference mode, classes) config.yaml holds; "
        "default: the one of the class count (150: ade20k, 19: cityscapes, 59: pascal_context)",
    )
    convert.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model build argument (YAML value), repeatable, e.g. aux_convs=2",
    )

    study = command(
        "study",
        "Measure trained models: layer CKA, linear probes, head ablation, layer-wise decoding or "
        "attention statistics; a table and a figure per model in a run-style folder (resumable).",
        "workbench study probes --models runs/demo_setr runs/demo_gpvit --out studies/probes --count 32",
    )
    study.add_argument(
        "study",
        choices=["cka", "probes", "ablation", "lens", "statistics"],
        help="cka: layer x layer similarity; probes: a linear probe per layer; ablation: mIoU change per "
        "zeroed head or branch; lens: the head on each earlier layer; statistics: attention entropy and "
        "distance per head with bootstrap CIs",
    )
    study.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="run folders or checkpoints, or demo config names (demo_setr: the trained demo model)",
    )
    study.add_argument(
        "--out", required=True, help="the study's folder (study.yaml, MODEL/table.csv, figure.png)"
    )
    study.add_argument("--data", help="a config whose data set to use (default: each model's own, val split)")
    study.add_argument("--count", type=int, help="images to measure on (default: the whole split)")
    study.add_argument("--batch-size", type=int, help="images per forward (default: the study's)")
    study.add_argument("--steps", type=int, default=200, help="probes: training steps per probe")
    study.add_argument(
        "--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"], help="the models' forwards"
    )
    study.add_argument("--seed", type=int, default=0, help="token draws, probe batches, bootstrap")
    study.add_argument(
        "--overwrite", action="store_true", help="measure afresh into a folder that has a study"
    )

    export_ = command(
        "export",
        "Export a trained segmentor to torch.export (.pt2) and ONNX with its preprocessing and a parity "
        "report against eager (onnxruntime, torch.export.load) at three sizes.",
        "workbench export --checkpoint runs/demo_gpvit --out exported/demo_gpvit --size 512 512",
    )
    export_.add_argument("--checkpoint", required=True, help="a run folder or checkpoint")
    export_.add_argument("--out", required=True, help="folder for NAME.pt2, NAME.onnx and their JSON")
    export_.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="the trace's image size")
    export_.add_argument(
        "--formats", nargs="+", default=["pt2", "onnx"], choices=["pt2", "onnx"], help="files to write"
    )
    export_.add_argument("--static", action="store_true", help="fixed height and width (the trace's)")
    export_.add_argument("--max-side", type=int, default=2048, help="largest side of a dynamic file")
    export_.add_argument("--overwrite", action="store_true", help="replace files already in --out")

    demo = command(
        "demo",
        "Train the demo model on the generated demo set (once, cached) and evaluate it.",
        "workbench demo --config demo_setr",
    )
    demo.add_argument("--config", default="demo_gpvit", help=_CONFIG_HELP)
    demo.add_argument("--retrain", action="store_true", help="train again even if the cache holds the model")

    bench = command(
        "bench",
        "Latency, throughput and peak memory of inference and a training step against resolution, "
        "with the fitted exponent of time against tokens: CSV, Markdown and plots.",
        "workbench bench --sizes 256 512 1024 --precisions fp32 bf16 --out docs/",
    )
    bench.add_argument("--out", default="bench", help="output folder: benchmarks.{csv,md} and PNG plots")
    bench.add_argument(
        "--quick", action="store_true", help="tiny builds of the models at 32² and 64² (seconds; for tests)"
    )
    bench.add_argument(
        "--models", nargs="+", metavar="MODEL", help="a subset of: " + ", ".join(_bench_models())
    )
    bench.add_argument(
        "--sizes", nargs="+", type=int, metavar="PIXELS", help="resolutions (default 256 512 1024 2048)"
    )
    bench.add_argument(
        "--modes",
        nargs="+",
        default=["inference", "train"],
        choices=["inference", "train"],
        help="what to time",
    )
    bench.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="bf16: under torch.autocast",
    )
    bench.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    bench.add_argument(
        "--baseline",
        choices=["eager"],
        help="also time plain eager execution of every case and report each case's speed-up over it",
    )
    bench.add_argument(
        "--layouts",
        nargs="+",
        default=["contiguous"],
        choices=["contiguous", "channels_last"],
        help="memory layout of the convolution weights (channels_last: the Predictor's inference layout)",
    )
    bench.add_argument(
        "--name", default="benchmarks", help="file stem of the outputs: NAME.{csv,md}, NAME_*.png"
    )
    bench.add_argument("--title", default="Benchmarks", help="the Markdown report's title")
    bench.add_argument(
        "--batch", type=int, default=1, help="images per call (a training step takes at least 2)"
    )
    bench.add_argument("--repeats", type=int, default=0, help="timed calls per case; 0: 3, or 1 with --quick")
    bench.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available"
    )
    bench.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    bench.add_argument(
        "--memory-budget-mb",
        type=float,
        help="skip sizes predicted to need more (default: the GPU's memory, or the RAM available)",
    )
    bench.add_argument(
        "--runtimes",
        nargs="+",
        default=["eager"],
        choices=["eager", "onnxruntime"],
        help="onnxruntime: the model exported to ONNX once per size, timed in onnxruntime (fp32 CPU inference)",
    )
    bench.add_argument(
        "--roofline",
        action="store_true",
        help="also measure this machine's matmul and convolution GFLOP/s and each inference case's share",
    )
    bench.add_argument("--time-budget-s", type=float, help="skip sizes predicted to take longer per call")
    return parser, dict(commands.choices)


def _bench_models() -> list[str]:
    from workbench.engine.bench import BENCH_MODELS

    return list(BENCH_MODELS)


def _one_line(error: BaseException) -> str:
    """The library's message on one line (a multi-line message, e.g. a data-set layout, is joined)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The ``workbench`` command; returns the exit status (0, 2 for an error, 130 for Ctrl-C)."""
    parser, commands = build_parser()
    args, extras = parser.parse_known_args(argv)
    # Overrides may follow options (eval CFG --checkpoint RUN eval.flip=true): argparse leaves those over.
    if hasattr(args, "overrides"):
        args.overrides += [item for item in extras if "=" in item and not item.startswith("-")]
        extras = [item for item in extras if item not in args.overrides]
    if extras:
        commands[args.command].error(f"unrecognized arguments: {' '.join(extras)}")
    handlers = {
        "train": _train,
        "eval": _eval,
        "predict": _predict,
        "convert": _convert,
        "demo": _demo,
        "export": _export,
        "study": _study,
        "bench": _bench,
    }
    try:
        if args.command == "models":
            print(models_table(args.pattern))
        else:
            handlers[args.command](args)
    except BrokenPipeError:  # the reader stopped early (`workbench models | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt as interrupt:
        print(
            f"workbench: {_one_line(interrupt) if str(interrupt).strip() else 'interrupted'}", file=sys.stderr
        )
        return 130
    # A problem the user can fix: a bad value, a NaN loss, a file missing, unreadable or unwritable.
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"workbench: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0
