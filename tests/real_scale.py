"""Photos of real sizes through the Predictor and the app's handlers, for each family, in this process:
prints one JSON line per case (the model input's size, the labels' size, the peak RSS so far).

Run by ``tests/test_real_scale.py`` in a subprocess, so the peak resident memory is this run's own.
The models are tiny in width and depth but have ADE20K's 150 classes and its test recipe (short
side 512), so the memory that scales with the photo is the real one.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from apps.handlers import Workbench
from apps.settings import Settings
from workbench.build import build_model
from workbench.config import load_config
from workbench.inference import load_predictor
from workbench.interop.checkpoint import save_weights

SIZES = ((375, 500), (1080, 1920), (3000, 4000))
FAMILIES = {"SETR": "tiny_setr", "GPViT": "tiny_gpvit", "HLG": "tiny_hlg"}
ADE20K = ["data.dataset=ade20k", "data.scale=[2048,512]", "data.num_classes=150"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def photo(size: tuple[int, int]) -> np.ndarray:
    """A smooth colour gradient (quick to encode and decode, unlike noise)."""
    rows, cols = np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1])
    red = np.broadcast_to(rows[:, None], size)
    green = np.broadcast_to(cols[None, :], size)
    return np.stack([red, green, (red + green) / 2], -1).astype(np.uint8)


def run(folder: Path) -> None:
    torch.manual_seed(0)
    files = {}
    for size in SIZES:
        files[size] = folder / f"photo_{size[0]}x{size[1]}.jpg"
        Image.fromarray(photo(size)).save(files[size], quality=90)
    for family, config in FAMILIES.items():
        cfg = load_config(config, ADE20K)
        run_folder = folder / family
        run_folder.mkdir()
        save_weights(run_folder, build_model(cfg), cfg)
        predictor = load_predictor(run_folder, device="cpu")
        workbench = Workbench(Settings(precision="fp32", device="cpu"), str(run_folder))
        for size, path in files.items():
            start = time.perf_counter()
            prediction = predictor(path)
            app = workbench.label_map(workbench.default.key, str(path))
            line = {
                "seconds": round(time.perf_counter() - start, 2),
                "family": family,
                "photo": list(size),
                "model_input": list(prediction.probs.shape[-2:]),
                "labels": list(prediction.labels.shape),
                "app_labels": [app["height"], app["width"]],
                "peak_rss_mb": round(peak_rss_mb()),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        run(Path(scratch))
    sys.exit(0)
