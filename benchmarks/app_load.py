"""Load on the Gradio app through gradio_client (not a test; prints latencies and throughput).

    python benchmarks/app_load.py --checkpoint ~/.cache/workbench/demo-model-demo_gpvit-.../checkpoints/latest
    python benchmarks/app_load.py --clients 10 --requests 20 --size 512

Serves the app in this process on a free 127.0.0.1 port, then ``--clients`` threads, each with its own
``gradio_client.Client``, send ``--requests`` segmentations (``/label_map``) of a new ``--size`` demo
scene each, every one followed by a click on it (``/attention``, heads averaged). Prints p50 / p95
latency and throughput per endpoint, end to end as a client sees them (upload, queue, JSON).
"""

from __future__ import annotations

import argparse
import statistics
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


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


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
    latencies: dict[str, list[float]] = {"segment": [], "click": []}
    failures: list[str] = []
    lock = threading.Lock()
    with TemporaryDirectory() as folder:

        def user(index: int) -> None:
            client = Client(url, verbose=False)
            rng = np.random.default_rng(index)
            for request in range(args.requests):
                path = Path(folder) / f"client{index}-{request}.png"
                Image.fromarray(render_scene(rng, args.size)[0]).save(path)
                try:
                    start = time.perf_counter()
                    client.predict(handle_file(path), api_name="/label_map")
                    middle = time.perf_counter()
                    y, x = (int(v) for v in rng.integers(0, args.size, 2))
                    client.predict(handle_file(path), y, x, "", "mean", api_name="/attention")
                    end = time.perf_counter()
                except Exception as error:  # counted and reported, the run goes on
                    with lock:
                        failures.append(f"client {index} request {request}: {error}")
                    continue
                with lock:
                    latencies["segment"].append(middle - start)
                    latencies["click"].append(end - middle)

        start = time.perf_counter()
        threads = [threading.Thread(target=user, args=(index,)) for index in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    app.close()
    predictor = workbench.default.predictor
    print(
        f"{args.clients} clients x {args.requests} requests, {args.size}x{args.size} demo scenes, "
        f"{predictor.device} ({torch.get_num_threads()} threads), precision {predictor.precision.name}, "
        f"queue concurrency {args.concurrency}; {checkpoint}"
    )
    for kind, values in latencies.items():
        print(
            f"  {kind:8s} n={len(values):4d}  p50 {percentile(values, 50) * 1e3:8.1f} ms  "
            f"p95 {percentile(values, 95) * 1e3:8.1f} ms  mean {statistics.fmean(values) * 1e3:8.1f} ms"
            if values
            else f"  {kind}: no answers"
        )
    answered = sum(len(values) for values in latencies.values())
    print(f"  throughput {answered / wall:.2f} requests/s over {wall:.1f} s; failures {len(failures)}")
    for failure in failures[:5]:
        print("  ", failure)


if __name__ == "__main__":
    main()
