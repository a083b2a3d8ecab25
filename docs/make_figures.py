"""The README's pictures and the group-purity figures, made by the library from the demo models.

    make docs        # = python docs/make_figures.py

Trains the demo models once if the cache lacks them (``workbench.demo.demo_checkpoint``), then writes
``docs/attention_click.png`` (where one clicked pixel looks, in the three families) and
``docs/gpvit_groups.png`` (the demo GPViT's group assignments over its four GP blocks),
``docs/hlg_local_global.png`` (one pixel's window, dilated and global attention at each stage of the
demo HLG, as in ``05_hlg_local_global``) and ``docs/erf_trained.png`` / ``docs/erf_at_initialisation.png`` (the
effective receptive fields of the three demo models, trained and freshly initialised, as in
``07_compare_families``), ``docs/studies_{cka,probes,ablation,lens,statistics}.png`` (the five studies of
``workbench.studies`` on the three trained demo models, as in ``10_studies``), and prints the group
purity of the trained demo GPViT against an untrained one on the demo validation set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from workbench import Predictor
from workbench.build import build_datasets, build_model, classes_of, eval_transform
from workbench.data.image import read_image
from workbench.demo import demo_checkpoint, demo_predictor
from workbench.interop.checkpoint import checkpoint_config
from workbench.models.layers import pad_for
from workbench.studies import (
    attention_statistics,
    cka_figure,
    head_importance,
    importance_figure,
    layer_cka,
    layer_decoding,
    layer_probes,
    lens_figure,
    probe_figure,
    statistics_figure,
)
from workbench.studies.analysis import dataset_group_purity
from workbench.viz import click_figure, effective_receptive_field, group_assignment_figure
from workbench.viz.measures import object_pixel
from workbench.viz.panels import panels_figure

DOCS = Path(__file__).parent
FAMILY_TITLES = {"setr": "SETR", "gpvit": "GPViT", "hlg": "HLG"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=int, default=3, help="index of the demo validation image shown")
    parser.add_argument("--purity-images", type=int, default=96, help="validation images for the purity")
    parser.add_argument(
        "--erf-images", type=int, default=16, help="validation images for the receptive fields"
    )
    parser.add_argument("--study-images", type=int, default=16, help="validation images for the studies")
    parser.add_argument("--probe-steps", type=int, default=100, help="training steps of the linear probes")
    args = parser.parse_args()

    checkpoints = {family: demo_checkpoint(f"demo_{family}") for family in ("setr", "gpvit", "hlg")}
    gpvit_cfg = checkpoint_config(checkpoints["gpvit"])
    _, val_set = build_datasets(gpvit_cfg)
    image_path, _ = val_set.pairs[args.image]
    image, labels = read_image(image_path), val_set.load_labels(args.image)
    y, x = object_pixel(labels)

    # One clicked pixel in each family: the last self-attention layer of SETR, GPViT's last GP block
    # read through its groups, HLG's last global (token-to-window) attention of stage 3.
    maps = {}
    for family, title, query in (
        ("setr", "SETR (last layer)", lambda p: p.attention_at(y, x, layer=-1)),
        ("gpvit", "GPViT (through its groups)", lambda p: p.effective_attention_at(y, x, block=-1)),
        ("hlg", "HLG (stage 3, global)", lambda p: p.attention_at(y, x, layer="stages.2.1.global")),
    ):
        predictor = Predictor.from_checkpoint(checkpoints[family], device="cpu")
        predictor.set_image(image)
        maps[title] = query(predictor)
    click_figure(image, maps, (y, x)).savefig(DOCS / "attention_click.png", dpi=110)

    predictor = Predictor.from_checkpoint(checkpoints["gpvit"], device="cpu")
    predictor.set_image(image)
    blocks = [name.removesuffix(".grouping") for name in predictor.sites() if name.endswith(".grouping")]
    assignments = [predictor.group_assignment(block) for block in blocks]
    titles = [f"GP block {block.split('.')[1]}" for block in blocks]
    group_assignment_figure(image, assignments, titles=titles).savefig(DOCS / "gpvit_groups.png", dpi=110)
    print(f"wrote {DOCS / 'attention_click.png'} and {DOCS / 'gpvit_groups.png'} (click at {y}, {x})")

    # 05_hlg_local_global's panels: the pixel's attention at every HLG stage's window, dilated and
    # global sites; 07_compare_families's effective receptive fields of the three trained demo models.
    predictor_hlg = Predictor.from_checkpoint(checkpoints["hlg"], device="cpu")
    predictor_hlg.set_image(image)
    maps = {
        f"{site} ({cached.layout.kind})": predictor_hlg.attention_at(y, x, site)
        for site, cached in predictor_hlg.session.cached.items()
        if site.startswith("stages.")
    }
    panels_figure(maps, image, columns=4, point=(y, x), panel_size=2.4).savefig(
        DOCS / "hlg_local_global.png", dpi=100
    )
    for trained, name in ((True, "erf_trained.png"), (False, "erf_at_initialisation.png")):
        fields = {}
        for family, checkpoint in checkpoints.items():
            config = f"demo_{family}"
            family_val = build_datasets(checkpoint_config(checkpoint))[1]
            model = demo_predictor(config, trained=trained, device="cpu").model.eval()
            images = torch.stack([family_val[i][0] for i in range(min(args.erf_images, len(family_val)))])
            fields[FAMILY_TITLES[family]] = effective_receptive_field(model, pad_for(model, images))
        state = "trained" if trained else "at initialisation"
        panels_figure(fields, cmap="magma", title=f"effective receptive field, demo models {state}").savefig(
            DOCS / name, dpi=100
        )
    print(
        f"wrote {DOCS / 'hlg_local_global.png'}, {DOCS / 'erf_trained.png'} and {DOCS / 'erf_at_initialisation.png'}"
    )

    study_figures(checkpoints, args.study_images, args.probe_steps)

    torch.manual_seed(0)
    untrained = Predictor(
        build_model(gpvit_cfg), gpvit_cfg.eval, classes_of(gpvit_cfg), eval_transform(gpvit_cfg), "cpu"
    )
    print(f"group purity / NMI on {min(args.purity_images, len(val_set))} demo validation images:")
    trained_scores = dataset_group_purity(predictor, val_set, args.purity_images)
    untrained_scores = dataset_group_purity(untrained, val_set, args.purity_images)
    for block in blocks:
        (purity, nmi), (purity0, nmi0) = trained_scores[block], untrained_scores[block]
        print(f"  {block}: trained {purity:.3f} / {nmi:.3f}   untrained {purity0:.3f} / {nmi0:.3f}")


def _save_grid(rows: list[list[Figure]], path: Path) -> None:
    """Rows of figures rendered at 100 dpi and pasted into one PNG, each row left-aligned."""
    rendered = []
    for row in rows:
        images = []
        for figure in row:
            canvas = FigureCanvasAgg(figure)
            figure.set_dpi(100)
            canvas.draw()
            images.append(np.asarray(canvas.buffer_rgba())[..., :3])
        rendered.append(images)
    width = max(sum(image.shape[1] for image in row) for row in rendered)
    height = sum(max(image.shape[0] for image in row) for row in rendered)
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    top = 0
    for row in rendered:
        left = 0
        for image in row:
            sheet[top : top + image.shape[0], left : left + image.shape[1]] = image
            left += image.shape[1]
        top += max(image.shape[0] for image in row)
    Image.fromarray(sheet).save(path)


def study_figures(checkpoints: dict[str, Path], count: int, steps: int) -> None:
    """The five studies of ``workbench.studies`` on the trained demo models, on the first ``count``
    validation images (probes: ``steps`` steps), one PNG per study with the families side by side."""
    models, data = {}, {}
    for family, checkpoint in checkpoints.items():
        title = FAMILY_TITLES[family]
        models[title] = demo_predictor(f"demo_{family}", device="cpu").model.eval()
        data[title] = build_datasets(checkpoint_config(checkpoint))
    cka = [
        cka_figure(layer_cka(m, data[t][1], count=count), f"{t}: CKA of its layers")
        for t, m in models.items()
    ]
    cka.append(
        cka_figure(
            layer_cka(models["SETR"], data["SETR"][1], other=models["GPViT"], count=count),
            "CKA: SETR vs GPViT",
            "SETR",
            "GPViT",
        )
    )
    probes = [
        probe_figure(layer_probes(m, *data[t], steps=steps, val_count=count), f"{t}: linear probes")
        for t, m in models.items()
    ]
    ablation = [
        importance_figure(
            head_importance(m, data[t][1], count=count), title=f"{t}: head ablation, delta mIoU"
        )
        for t, m in models.items()
    ]
    lens = [  # HLG's stages differ in width and stride: layer-wise decoding does not apply
        lens_figure(layer_decoding(models[t], data[t][1], count=count), f"{t}: layer-wise decoding")
        for t in ("SETR", "GPViT")
    ]
    statistics = {t: attention_statistics(m, data[t][1], count=count) for t, m in models.items()}
    attention = [
        [statistics_figure(table, measure, f"{t}: attention {measure}") for t, table in statistics.items()]
        for measure in ("entropy", "distance")
    ]
    for name, rows in (
        ("cka", [cka]),
        ("probes", [probes]),
        ("ablation", [ablation]),
        ("lens", [lens]),
        ("statistics", attention),
    ):
        _save_grid(rows, DOCS / f"studies_{name}.png")
    print(f"wrote {DOCS}/studies_{{cka,probes,ablation,lens,statistics}}.png on {count} validation images")


if __name__ == "__main__":
    main()
