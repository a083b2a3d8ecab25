"""Peak memory at the user's scale (not a test; prints a small Markdown table).

    python benchmarks/real_scale_memory.py                  # both measurements
    python benchmarks/real_scale_memory.py --only predict   # or --only app

1. ``workbench predict`` with a 150-class GPViT-L1 UperNet (the ADE20K preset: test scale short side
   512, whole image; random weights, as memory does not depend on them) on a 12 MP (3000x4000) photo,
   in a fresh process: its peak resident set (``ru_maxrss`` of the child).
2. The app's handlers (``apps.handlers.Workbench``) holding 16 sessions of 1 MP (1000x1000) images with the
   demo GPViT (the demo preset; ``make demo``'s model, random weights): the resident set after each
   session is opened, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository root, for apps

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a little noise: a photo's size, quick to encode."""
    rng = np.random.default_rng(seed)
    rows, cols = np.linspace(0, 255, height)[:, None], np.linspace(0, 255, width)[None, :]
    base = np.stack(np.broadcast_arrays(rows, cols, (rows + cols) / 2), -1)
    return (base + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def predict_peak(folder: Path) -> dict:
    """Peak RSS (MB) and wall time of ``workbench predict`` on a 12 MP photo, in a child process."""
    from workbench.build import build_model
    from workbench.config import load_config
    from workbench.interop.checkpoint import save_weights

    cfg = load_config("gpvit_l1_upernet_ade20k", ["model.pretrained="])
    run = folder / "gpvit_l1_upernet"
    run.mkdir()
    save_weights(run, build_model(cfg), cfg)
    image = folder / "photo_3000x4000.jpg"
    Image.fromarray(photo(3000, 4000)).save(image, quality=92)
    command = [sys.executable, "-m", "workbench", "predict", str(image), "--checkpoint", str(run)]
    start = time.perf_counter()
    subprocess.run([*command, "--out", str(folder / "out")], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "case": "workbench predict, GPViT-L1 UperNet, 150 classes, 3000x4000 photo",
        "peak_mb": peak,
        "seconds": seconds,
    }


def app_sessions(folder: Path, count: int = 16) -> dict:
    """RSS (MB) of the app's handlers before and after ``count`` sessions of 1 MP images."""
    from apps.handlers import Workbench
    from apps.settings import Settings
    from workbench.build import build_model
    from workbench.config import load_config
    from workbench.interop.checkpoint import save_weights

    cfg = load_config("demo_gpvit")
    run = folder / "demo_gpvit"
    run.mkdir()
    save_weights(run, build_model(cfg), cfg)
    workbench = Workbench(Settings(precision="auto", device="cpu", sessions=count), str(run))
    before = rss_mb()
    for index in range(count):
        path = folder / f"photo_{index}.png"
        Image.fromarray(photo(1000, 1000, seed=index)).save(path)
        workbench.label_map(workbench.default.key, str(path))
    after = rss_mb()
    return {
        "case": f"app handlers, demo GPViT, {count} sessions of 1000x1000",
        "rss_before_mb": before,
        "rss_after_mb": after,
        "per_session_mb": (after - before) / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("predict", "app"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows = []
        if args.only in (None, "predict"):
            rows.append(predict_peak(Path(scratch)))
        if args.only in (None, "app"):
            rows.append(app_sessions(Path(scratch)))
    for row in rows:
        print(
            json.dumps(
                {key: round(value, 1) if isinstance(value, float) else value for key, value in row.items()}
            )
        )


if __name__ == "__main__":
    main()
