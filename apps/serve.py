"""Serving the app: the queue, the launch settings, who may use it and what it may load, the command
line."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from apps.handlers import Workbench
from apps.layout import build_app
from apps.settings import Settings
from apps.store import TIMM
from workbench.cache import cache_dir
from workbench.data.examples import EXAMPLES_DIR

STARTED = time.perf_counter()  # set when the app's modules are first imported
LOCAL = "127.0.0.1"
AUTH_VARIABLE = "WORKBENCH_AUTH"  # "user:password": a password never goes on the command line


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 now (``--port 0``, tests, benchmarks)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load_folders(
    host: str, checkpoint: str | Path | None, allow_load: Sequence[str] | None
) -> tuple[str, ...]:
    """The folders the load box may load from: ``allow_load`` where given (empty: none, loading off);
    else on 127.0.0.1 the folder holding ``checkpoint`` (a run folder's parent: its sibling runs; none
    for a timm ViT with random weights) and the workbench cache, and nowhere on any other address."""
    if allow_load is not None:
        return tuple(str(Path(folder).expanduser().resolve()) for folder in allow_load)
    if host != LOCAL:
        return ()
    beside = [str(Path(checkpoint).expanduser().resolve().parent)] if checkpoint else []
    return (*beside, str(cache_dir().resolve()))


def timm_options(text: str | None) -> dict:
    """``--timm-kwargs``: a JSON object of ``load_vit_predictor`` keywords (timm's ``create_model``
    kwargs such as ``depth``, plus ``size`` and ``num_classes``); the weights come from --checkpoint."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--timm-kwargs is not JSON: {error}") from None
    if not isinstance(options, dict):
        raise ValueError('--timm-kwargs must be a JSON object, e.g. {"depth": 2, "embed_dim": 48}')
    taken = sorted({"checkpoint", "device", "precision", "name"} & set(options))
    if taken:
        raise ValueError(f"--timm-kwargs: give {', '.join(taken)} with its own flag")
    return options


def read_auth(auth_file: str | Path | None = None) -> list[tuple[str, str]] | None:
    """Users and passwords from ``auth_file`` (``user:password`` lines; blank and ``#`` lines skipped),
    else from ``$WORKBENCH_AUTH`` (one ``user:password``); None where neither is given (no login)."""
    if auth_file is not None:
        lines = Path(auth_file).expanduser().read_text().splitlines()
        where = str(auth_file)
    elif os.environ.get(AUTH_VARIABLE):
        lines, where = [os.environ[AUTH_VARIABLE]], f"${AUTH_VARIABLE}"
    else:
        return None
    pairs = [
        line.strip().split(":", 1) for line in lines if line.strip() and not line.lstrip().startswith("#")
    ]
    if not pairs or any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise ValueError(f"{where}: expected user:password lines")
    return [(user, password) for user, password in pairs]


def exposure(host: str, settings: Settings, auth: list | None) -> str | None:
    """One line on what listening on ``host`` exposes, for any address but 127.0.0.1."""
    if host == LOCAL:
        return None
    loading = (
        f"loading models from the page ON (from {', '.join(settings.allow_load)})"
        if settings.allow_load
        else "loading models from the page off"
    )
    login = "login required" if auth else f"NO login (--auth-file or ${AUTH_VARIABLE})"
    return f"warning: listening on {host} exposes the app to the network: {loading}, {login}"


def launch(
    app: gr.Blocks,
    host: str,
    port: int | None,
    concurrency: int,
    block: bool = True,
    max_upload_mb: int = Settings.max_upload_mb,
    auth: list[tuple[str, str]] | None = None,
    **kwargs,
):
    """Queue (``concurrency`` requests at once), then serve on ``host``: no share link, no analytics,
    uploads over ``max_upload_mb`` refused, a login where ``auth`` gives users and passwords."""
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    folders = [str(EXAMPLES_DIR), str(cache_dir() / "app-examples")]
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        allowed_paths=folders,
        max_file_size=f"{max_upload_mb}mb",
        auth=auth,
        ssr_mode=False,
        mcp_server=False,
        quiet=True,
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["monospace"]),
        **kwargs,
    )
    return url


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 2,
    model: str = "",
    num_classes: int | None = None,
    allow_load: Sequence[str] | None = None,
    auth: list[tuple[str, str]] | None = None,
    timm_kwargs: dict | None = None,
    **settings,
) -> tuple[gr.Blocks, str]:
    """The app on ``checkpoint`` (with ``model="timm:NAME"``: a timm ViT, ``checkpoint`` its weights
    file or "" for random ones, ``timm_kwargs`` as ``timm_options``), served in the background at
    ``host``:``port`` (0: a free port): the Blocks (``close()`` stops it) and its URL. ``allow_load``:
    as ``load_folders``; ``auth``: users and passwords; ``settings``: other ``Settings`` fields."""
    settings = Settings(**settings, allow_load=load_folders(host, checkpoint or None, allow_load))
    workbench = Workbench(settings, str(checkpoint or ""), model, num_classes, timm_kwargs)
    app = build_app(workbench)
    return app, launch(
        app, host, port or free_port(), concurrency, max_upload_mb=settings.max_upload_mb, auth=auth
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--checkpoint",
        help="run folder, checkpoint or released file (default: the demo model); with --timm-model "
        "the ViT's weights file (none: random weights)",
    )
    parser.add_argument("--model", default="", help="segmentor name, for a released checkpoint file")
    parser.add_argument(
        "--timm-model",
        default="",
        metavar="NAME",
        help="serve timm plain ViT NAME (e.g. vit_small_patch16_224.dino, vit_small_patch14_reg4_dinov2)",
    )
    parser.add_argument(
        "--timm-kwargs",
        default=None,
        metavar="JSON",
        help='with --timm-model: load_vit_predictor keywords as a JSON object (timm kwargs and "size"), '
        'e.g. \'{"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 56, "size": 56}\' for a tiny '
        "test model",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="class count, for a released file")
    parser.add_argument("--config", default="demo_gpvit", help="demo config when no --checkpoint is given")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="0: a free port")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if any)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--pixel-budget", type=int, default=Settings.pixel_budget, help="downscale above")
    parser.add_argument("--max-pixels", type=int, default=Settings.max_pixels, help="refuse above")
    parser.add_argument("--concurrency", type=int, default=2, help="requests the queue runs at once")
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=Settings.memory_budget_mb,
        help="models and sessions kept in memory (least recently used out; the default model stays)",
    )
    parser.add_argument(
        "--allow-load",
        nargs="*",
        metavar="DIR",
        default=None,
        help="folders the page's model box may load from; none given: loading off (default on "
        "127.0.0.1: the checkpoint's folder and the workbench cache; elsewhere off)",
    )
    parser.add_argument(
        "--auth-file",
        default=None,
        help=f"user:password lines: a login for the page and API (else ${AUTH_VARIABLE}=user:password)",
    )
    parser.add_argument("--max-upload-mb", type=int, default=Settings.max_upload_mb, help="refuse above")
    args = parser.parse_args(argv)
    if args.timm_kwargs is not None and not args.timm_model:
        parser.error("--timm-kwargs needs --timm-model")
    if args.timm_model and args.model:
        parser.error("give --timm-model NAME or --model NAME, not both")
    return args


def workbench_from_args(args: argparse.Namespace) -> Workbench:
    """The handlers on the command line's model (the demo model when none is named) and settings."""
    checkpoint = args.checkpoint
    if checkpoint is None and not args.timm_model:
        from workbench.demo import demo_checkpoint

        checkpoint = str(demo_checkpoint(args.config))
    settings = Settings(
        args.pixel_budget,
        args.max_pixels,
        device=args.device,
        precision=args.precision,
        memory_budget_mb=args.memory_budget_mb,
        allow_load=load_folders(args.host, checkpoint, args.allow_load),
        max_upload_mb=args.max_upload_mb,
    )
    if args.timm_model:
        options = timm_options(args.timm_kwargs)
        model = TIMM + args.timm_model.removeprefix(TIMM)
        return Workbench(settings, checkpoint or "", model, args.num_classes, options)
    return Workbench(settings, checkpoint, args.model, args.num_classes)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        auth = read_auth(args.auth_file)
        workbench = workbench_from_args(args)
    except (ValueError, OSError) as error:
        sys.exit(f"app: {error}")
    settings = workbench.settings
    print(workbench.default.report)
    folders = ", ".join(settings.allow_load) or "off (--allow-load DIR ... turns it on)"
    print(f"the model box loads from: {folders}")
    warning = exposure(args.host, settings, auth)
    if warning:
        print(warning, flush=True)
    app = build_app(workbench)
    url = launch(
        app,
        args.host,
        args.port or free_port(),
        args.concurrency,
        max_upload_mb=settings.max_upload_mb,
        auth=auth,
    )
    print(
        f"the app is serving at {url} (ready {time.perf_counter() - STARTED:.1f} s after start; Ctrl-C stops it)",
        flush=True,
    )
    try:
        app.block_thread()
    except KeyboardInterrupt:
        app.close()
