"""Serving the app: the queue, the launch settings, the command line."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import gradio as gr

from apps.handlers import Workbench
from apps.layout import build_app
from apps.settings import Settings
from workbench.cache import cache_dir
from workbench.data.examples import EXAMPLES_DIR

STARTED = time.perf_counter()  # set when the app's modules are first imported


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 now (``--port 0``, tests, benchmarks)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(app: gr.Blocks, host: str, port: int | None, concurrency: int, block: bool = True, **kwargs):
    """Queue (``concurrency`` requests at once), then serve on ``host``: no share link, no analytics."""
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    folders = [str(EXAMPLES_DIR), str(cache_dir() / "app-examples")]
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        allowed_paths=folders,
        max_file_size="64mb",
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
    **settings,
) -> tuple[gr.Blocks, str]:
    """The app on ``checkpoint``, served in the background at ``host``:``port`` (0: a free port):
    the Blocks (``close()`` stops it) and its URL. ``settings``: ``Settings`` fields."""
    workbench = Workbench(Settings(**settings), str(checkpoint), model, num_classes)
    app = build_app(workbench)
    return app, launch(app, host, port or free_port(), concurrency)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="run folder, checkpoint or released file (default: the demo model)"
    )
    parser.add_argument("--model", default="", help="segmentor name, for a released checkpoint file")
    parser.add_argument("--num-classes", type=int, default=None, help="class count, for a released file")
    parser.add_argument("--config", default="demo_gpvit", help="demo config when no --checkpoint is given")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="0: a free port")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if any)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--pixel-budget", type=int, default=Settings.pixel_budget, help="downscale above")
    parser.add_argument("--max-pixels", type=int, default=Settings.max_pixels, help="refuse above")
    parser.add_argument("--concurrency", type=int, default=2, help="requests the queue runs at once")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from workbench.demo import demo_checkpoint

        checkpoint = str(demo_checkpoint(args.config))
    settings = Settings(args.pixel_budget, args.max_pixels, device=args.device, precision=args.precision)
    try:
        workbench = Workbench(settings, checkpoint, args.model, args.num_classes)
    except ValueError as error:
        sys.exit(f"app: {error}")
    print(workbench.default.report)
    app = build_app(workbench)
    url = launch(app, args.host, args.port or free_port(), args.concurrency)
    print(
        f"the app is serving at {url} (ready {time.perf_counter() - STARTED:.1f} s after start; Ctrl-C stops it)",
        flush=True,
    )
    try:
        app.block_thread()
    except KeyboardInterrupt:
        app.close()
