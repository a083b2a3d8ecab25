"""Load on the Gradio app through gradio_client (not a test; prints latencies and throughput).

    python benchmarks/app_load.py --checkpoint ~/.cache/workbench/demo-model-demo_gpvit-.../checkpoints/latest
    python benchmarks/app_load.py --clients 10 --requests 20 --size 512

Serves the app in this process on a free 127.0.0.1 port, then runs twice: with 1 client, then with
``--clients`` threads, each with its own ``gradio_client.Client``. Each client sends ``--requests``
segmentations of a new ``--size`` demo scene (``/label_png``: the labels as an inline PNG), then asks
the same image's labels as JSON lists (``/label_map``, from the kept session), then a click on it
answered as floats in JSON (``/attention``) and compactly (``/attention_png``: an inline 16-bit grey
PNG). Prints p50 / p95 latency per endpoint, end to end as a client sees them (upload, queue,
answer), and the answers' sizes.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

# The repository root instead of this folder on the import path: `apps` imports from there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from apps.handlers import Workbench  # noqa: E402
from apps.layout import build_app  # noqa: E402
from apps.serve import free_port, launch  # noqa: E402
from apps.settings import Settings  # noqa: E402
from workbench.data.demo import render_scene  # noqa: E402

ENDPOINTS = ("label_png", "label_map", "attention", "attention_png")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load(url: str, clients: int, requests: int, size: int, folder: str) -> tuple[dict, list[str], float]:
    """Latencies (s) per endpoint, failures and the wall time of ``clients`` clients sending
    ``requests`` segmentations each, every one followed by the same click as JSON and as a PNG."""
    latencies: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    failures: list[str] = []
    lock = threading.Lock()

    def user(index: int) -> None:
        client = Client(url, verbose=False)
        rng = np.random.default_rng(1000 * clients + index)
        for request in range(requests):
            path = Path(folder) / f"{clients}-clients-{index}-{request}.png"
            Image.fromarray(render_scene(rng, size)[0]).save(path)
            y, x = (int(v) for v in rng.integers(0, size, 2))
            calls = {  # /label_png segments the new image; the others answer from its kept session
                "label_png": (handle_file(path),),
                "label_map": (handle_file(path),),
                "attention": (handle_file(path), y, x, "", "mean"),
                "attention_png": (handle_file(path), y, x, "", "mean"),
            }
            for name, inputs in calls.items():
                try:
                    start = time.perf_counter()
                    client.predict(*inputs, api_name=f"/{name}")
                    took = time.perf_counter() - start
                except Exception as error:  # counted and reported, the run goes on
                    with lock:
                        failures.append(f"client {index} request {request} /{name}: {error}")
                    continue
                with lock:
                    latencies[name].append(took)

    start = time.perf_counter()
    threads = [threading.Thread(target=user, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures, time.perf_counter() - start


def answer_sizes(url: str, size: int, folder: str) -> dict[str, int]:
    """Bytes of one click's answer: the JSON of ``/attention``, the PNG file of ``/attention_png``."""
    path = Path(folder) / "sizes.png"
    Image.fromarray(render_scene(np.random.default_rng(0), size)[0]).save(path)
    client = Client(url, verbose=False)
    floats = client.predict(handle_file(path), size // 2, size // 3, "", "mean", api_name="/attention")
    compact = client.predict(handle_file(path), size // 2, size // 3, "", "mean", api_name="/attention_png")
    return {"attention": len(repr(floats["attention"])), "attention_png": len(compact["png"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the demo model (trained if absent)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        from workbench.demo import demo_checkpoint

        checkpoint = str(demo_checkpoint("demo_gpvit"))
    workbench = Workbench(Settings(precision=args.precision, sessions=2 * args.clients), checkpoint)
    app = build_app(workbench)
    url = launch(app, "127.0.0.1", free_port(), args.concurrency)
    predictor = workbench.default.predictor
    print(
        f"{args.size}x{args.size} demo scenes, {predictor.device} ({torch.get_num_threads()} threads), "
        f"precision {predictor.precision.name}, queue concurrency {args.concurrency}; {checkpoint}"
    )
    try:
        with TemporaryDirectory() as folder:
            sizes = answer_sizes(url, args.size, folder)
            print(
                f"  one click's answer: /attention {sizes['attention'] / 1e6:.2f} MB of JSON, "
                f"/attention_png {sizes['attention_png'] / 1e3:.1f} kB of PNG"
            )
            for clients in sorted({1, args.clients}):
                latencies, failures, wall = load(url, clients, args.requests, args.size, folder)
                print(f"{clients} client(s) x {args.requests} requests:")
                for name, values in latencies.items():
                    print(
                        f"  /{name:14s} n={len(values):4d}  p50 {percentile(values, 50) * 1e3:8.1f} ms  "
                        f"p95 {percentile(values, 95) * 1e3:8.1f} ms"
                    )
                answered = sum(len(values) for values in latencies.values())
                print(
                    f"  throughput {answered / wall:.2f} requests/s over {wall:.1f} s; failures {len(failures)}"
                )
                for failure in failures[:5]:
                    print("  ", failure)
    finally:
        app.close()


if __name__ == "__main__":
    main()
