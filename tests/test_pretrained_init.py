"""Runs start from released ImageNet weights (``model.pretrained``): segmentors and detectors take a
classifier release into their backbone as a fresh run starts, a resumed run never reads it again,
and a file that cannot be read or does not fit stops the run before it writes anything."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.build import build_datasets, build_model
from workbench.cli import main
from workbench.config import Config, list_presets, load_config
from workbench.engine import train
from workbench.engine.train import load_initial_weights
from workbench.interop import CATALOGUE, load_pretrained
from workbench.interop.checkpoint import weights_file
from workbench.interop.release_file import save_release_file
from workbench.models.detection import detector_info
from workbench.models.registry import model_info

TINY_GPVIT = dict(embed_dim=48, depth=4, group_layers={1: 16, 3: 8})  # tiny_gpvit.yaml's backbone
BATCH_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
_BACKBONE_KEYS = ("embed_dim", "depth", "group_layers", "dims", "heads", "depths")


def _release(
    tmp_path: Path, classifier: str, format: str, **backbone
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file in the official ImageNet layout of ``format``, from a tiny classifier whose tensors are
    far from any initialisation; and the classifier's own tensors."""
    model = model_info(classifier).entrypoint(num_classes=10, **backbone)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    path = save_release_file(model, format, tmp_path / f"{classifier}_in1k.pth")
    return path, model.state_dict()


def _detection(tmp_path: Path, name: str, pretrained: Path) -> Config:
    cfg = load_config(
        "demo_detection",
        [
            f"work_dir={tmp_path / 'run'}",
            f"model.pretrained={pretrained}",
            f"model.name={name}",
            *("data.demo_size=64", "data.demo_train=4", "data.demo_val=2", "data.batch_size=2"),
            *("data.num_workers=0", "schedule.warmup_iters=0", "eval.interval=0"),
        ],
    )
    cfg.model.kwargs = dict(detector_info(name).tiny)
    return cfg


def _backbone(detector: str) -> dict:
    """The backbone arguments of a detector's tiny build."""
    return {k: v for k, v in detector_info(detector).tiny.items() if k in _BACKBONE_KEYS}


# model: (classifier release, its format, the classifier's arguments, where its tensors land, what
# the dense model has no place for)
CASES = {
    "gpvit_l1_segformer": ("gpvit_l1", "gpvit", TINY_GPVIT, "backbone.", ("neck.", "head.")),
    "gpvit_l1_maskrcnn": (
        "gpvit_l1",
        "gpvit",
        _backbone("gpvit_l1_maskrcnn"),
        "backbone.body.vit.",
        ("neck.", "head.", "norm."),  # the adapter's GPViT has no final norm
    ),
    "hlg_small_maskrcnn": ("hlg_small", "hlg", _backbone("hlg_small_maskrcnn"), "backbone.body.", ("head.",)),
}


def _config(tmp_path: Path, name: str) -> tuple[Config, str, tuple[str, ...], dict[str, torch.Tensor]]:
    classifier, format, backbone, prefix, dropped = CASES[name]
    path, source = _release(tmp_path, classifier, format, **backbone)
    if name == "gpvit_l1_segformer":
        overrides = [f"work_dir={tmp_path / 'run'}", f"model.pretrained={path}", "data.demo_train=8"]
        cfg = load_config("tiny_gpvit", overrides)
    else:
        cfg = _detection(tmp_path, name, path)
    return cfg, prefix, dropped, source


@pytest.mark.parametrize("name", list(CASES))
def test_a_fresh_run_starts_from_the_imagenet_release_and_a_resumed_one_keeps_its_own(name, tmp_path, capsys):
    cfg, prefix, dropped, source = _config(tmp_path, name)
    cfg.iters, cfg.optim.lr = 1, 1e-9  # one step that leaves the weights where they started
    kept = {k: v for k, v in source.items() if not k.startswith(dropped)}

    # What the engine calls: the classifier's tensors land in the backbone, the rest is initialised.
    model = build_model(cfg)
    report = load_initial_weights(model, cfg)
    state = model.state_dict()
    assert all(torch.equal(state[prefix + k], v) for k, v in kept.items())
    assert report.clean and sorted(report.loaded) == sorted(prefix + k for k in kept)
    assert report.kept and all(not k.startswith(prefix) or ".out_norms." in k for k in report.kept)
    assert any("dropped" in note and "head" in note for note in report.notes)

    train_set, _ = build_datasets(cfg)
    train(cfg, datasets=(train_set, None), progress=False)
    assert f"initial weights from {cfg.model.pretrained}" in capsys.readouterr().out
    trained = load_file(str(weights_file(cfg.work_dir)))
    learned = {k: v for k, v in kept.items() if not k.endswith(BATCH_STATISTICS)}  # those follow the batch
    assert all(torch.allclose(trained[prefix + k], v, atol=1e-5) for k, v in learned.items())

    # Resuming reads the run's checkpoint only: a vanished release file is never looked for.
    cfg.iters, cfg.model.pretrained = 2, str(tmp_path / "moved_away.pth")
    assert train(cfg, datasets=(train_set, None), progress=False)["step"] == 2
    assert "initial weights" not in capsys.readouterr().out


def test_a_missing_or_ill_fitting_file_stops_the_run_before_it_writes(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    cfg = load_config("tiny_gpvit", [f"work_dir={tmp_path / 'run'}", f"model.pretrained={missing}"])
    where = re.escape(str(missing))
    with pytest.raises(ValueError, match=rf"^model\.pretrained={where}: {where} is neither a file"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()

    # A GPViT of another width: one line through the CLI, naming the field; no run folder.
    narrow, _ = _release(tmp_path, "gpvit_l1", "gpvit", embed_dim=24, depth=4, group_layers={1: 8, 3: 4})
    argv = ["train", "tiny_gpvit", f"work_dir={tmp_path / 'run'}", f"model.pretrained={narrow}"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(
        f"workbench: model.pretrained={narrow}: checkpoint does not fit GPViTSegmentor; nothing was loaded. "
    )
    assert "mismatched" in error
    assert not (tmp_path / "run").exists()


def test_real_misfits_in_a_detector_still_raise_and_nothing_is_loaded(tmp_path):
    name = "gpvit_l1_maskrcnn"
    wide, _ = _release(tmp_path, "gpvit_l1", "gpvit", embed_dim=48, depth=4, group_layers={1: 8, 3: 4})
    cfg = _detection(tmp_path, name, wide)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"(?s)^model\.pretrained=.*does not fit WorkbenchMaskRCNN.*mismatched"
    ):
        load_initial_weights(model, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    hlg, _ = _release(tmp_path, "hlg_small", "hlg", **_backbone("hlg_small_maskrcnn"))
    with pytest.raises(ValueError, match="a hlg checkpoint loads into HLG models, not WorkbenchMaskRCNN"):
        load_pretrained(model, hlg)


# The weights each paper started from (gpvit_l1_imagenet trains them; demo and tiny runs start from scratch).
PAPER_STARTS = {
    "gpvit_l1_upernet_ade20k": "gpvit_l1_in1k",
    "gpvit_l1_segformer_ade20k": "gpvit_l1_in1k",
    "gpvit_l1_maskrcnn_coco_1x": "gpvit_l1_in1k",
    "gpvit_l1_retinanet_coco_1x": "gpvit_l1_in1k",
    "setr_naive_vit_large_pascal_context": "jx_vit_large_p16_384",
    "setr_pup_vit_large_cityscapes": "jx_vit_large_p16_384",
    "setr_mla_vit_large_ade20k": "jx_vit_large_p16_384",
    "setr_hlg_small_cityscapes": "hlg_small_in1k",
    "setr_hlg_medium_ade20k": "hlg_medium_in1k",
}


def test_paper_presets_start_from_their_catalogue_release_and_the_others_from_scratch():
    starts = {name: load_config(name).model.pretrained for name in list_presets()}
    assert {name: source for name, source in starts.items() if source} == PAPER_STARTS
    assert set(PAPER_STARTS.values()) <= set(CATALOGUE)
