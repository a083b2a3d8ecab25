"""How far the bf16 fast path moves the demo models' predictions from fp32 (not a test; writes a table).

    python benchmarks/fidelity.py --out docs/fidelity.md demo_gpvit demo_setr demo_hlg

For each demo config: its cached demo model (trained first if the cache lacks it), evaluated on the
demo validation set in fp32 and in bf16 (``torch.autocast``), channels-last as the Predictor runs it:
the share of labelled pixels given the same class by both, and both mIoU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from workbench.build import build_datasets, build_model
from workbench.demo import demo_checkpoint
from workbench.engine.evaluate import precision_agreement
from workbench.interop import load_weights
from workbench.interop.checkpoint import checkpoint_config
from workbench.precision import use_channels_last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="demo configs, e.g. demo_gpvit demo_setr demo_hlg")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--out", help="write the Markdown table here as well")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [
        f"| demo model | pixels | agreement (%) | mIoU fp32 | mIoU {args.precision} | Δ mIoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config in args.configs:
        checkpoint = demo_checkpoint(config)
        cfg = checkpoint_config(checkpoint)
        model = build_model(cfg)
        load_weights(model, checkpoint)
        use_channels_last(model)
        _, val_set = build_datasets(cfg)
        result = precision_agreement(
            model, val_set, cfg.eval, model.num_classes, args.precision, progress=True
        )
        lines.append(
            f"| {config} ({cfg.model.name}) | {result['pixels']} | {result['agreement']:.3f} | "
            f"{result['mIoU_fp32']:.2f} | {result[f'mIoU_{args.precision}']:.2f} | {result['delta_mIoU']:+.2f} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        header = (
            "# Fidelity of the fast path\n\nRegenerate with `make bench` "
            "(`python benchmarks/fidelity.py`). The demo models on the demo validation set, "
            f"fp32 against {args.precision} under `torch.autocast`, channels-last.\n\n"
        )
        Path(args.out).write_text(header + table + "\n")


if __name__ == "__main__":
    main()
