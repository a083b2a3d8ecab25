"""How fast a click is answered once ``Predictor.set_image`` has run (not a test; prints timings).

    python benchmarks/click_latency.py --model setr_naive_vit_base --size 512

Times one plain forward pass, ``set_image`` (the forward with q/k kept) and one click query on every
attention site (only the clicked pixel's row is computed), on this machine's CPU threads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import workbench


def _seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="setr_naive_vit_base")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = workbench.create_segmentor(args.model, num_classes=args.num_classes, img_size=args.size).eval()
    predictor = workbench.Predictor(model, device="cpu")
    photo = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    _, tensor = predictor.preprocess(photo)
    with torch.inference_mode():
        forward = _seconds(lambda: model(tensor), args.repeats)
    set_image = _seconds(lambda: predictor.set_image(photo), args.repeats)
    sites = predictor.sites()
    y, x = args.size // 3, args.size // 2

    def click() -> None:
        for site in sites:
            predictor.attention_at(y, x, layer=site)

    with torch.inference_mode():
        query = _seconds(click, args.repeats)
    print(
        f"{args.model} at {args.size}x{args.size}, {torch.get_num_threads()} threads (best of {args.repeats}):"
    )
    print(f"  forward pass           {forward * 1e3:8.1f} ms")
    print(f"  set_image              {set_image * 1e3:8.1f} ms")
    print(
        f"  click, {len(sites):2d} sites        {query * 1e3:8.1f} ms  ({query / forward:.1%} of a forward)"
    )


if __name__ == "__main__":
    main()
