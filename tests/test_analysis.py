"""Per-image review, group purity over a data set, the family summary, the untrained demo predictor and
release stand-ins: what the notebooks compute through the library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny import tiny
from workbench import load_pretrained
from workbench.build import build_datasets, classes_of
from workbench.config import load_config
from workbench.demo import demo_predictor
from workbench.engine.evaluate import evaluate
from workbench.interop.release_file import save_release_file
from workbench.models.complexity import count_params
from workbench.studies.analysis import dataset_group_purity, family_summary, review, summary_markdown
from workbench.viz.groups import group_purity


@pytest.fixture(scope="module")
def val_set():
    cfg = load_config("tiny_gpvit", ["data.demo_train=4", "data.demo_val=4"])
    return build_datasets(cfg)[1]


@pytest.fixture(scope="module")
def gpvit():
    return demo_predictor("tiny_gpvit", trained=False)


def test_review_matches_evaluate_and_keeps_the_worst_images(gpvit, val_set):
    model = gpvit.model.train()
    result = review(model, val_set, gpvit.eval_cfg, worst=2)
    assert model.training  # the mode is restored
    expected = evaluate(model, val_set, gpvit.eval_cfg, model.num_classes, progress=False)
    assert result.metrics["mIoU"] == pytest.approx(expected["mIoU"])
    assert result.metrics["IoU"].keys() == expected["IoU"].keys()
    labelled = sum(int((val_set.load_labels(i) != 255).sum()) for i in range(len(val_set)))
    assert int(result.matrix.sum()) == labelled
    scores = sorted(score.miou for score in result.scores)
    assert [score.miou for score in result.worst] == scores[:2]
    worst = result.worst[0]
    image, labels = val_set.load(worst.index)
    assert np.array_equal(worst.image, image.permute(1, 2, 0).numpy()) and np.array_equal(
        worst.labels, labels
    )
    assert worst.prediction.shape == labels.shape
    assert len(review(model, val_set, gpvit.eval_cfg, worst=0, count=2).scores) == 2


def test_dataset_group_purity_averages_each_block_over_the_images(gpvit, val_set):
    scores = dataset_group_purity(gpvit, val_set, count=2)
    assert list(scores) == ["blocks.1", "blocks.3"]
    by_hand = []
    for index in range(2):
        image, labels = val_set.load(index)
        gpvit.set_image(image.permute(1, 2, 0).numpy())
        by_hand.append(group_purity(gpvit.group_assignment("blocks.1"), labels))
    assert scores["blocks.1"][0] == pytest.approx(np.mean(by_hand))
    assert all(0 <= value <= 1 for pair in scores.values() for value in pair)
    with pytest.raises(ValueError, match="no GP blocks"):
        dataset_group_purity(demo_predictor("tiny_setr", trained=False), val_set, count=1)


def test_family_summary_reports_the_models_own_figures(gpvit, val_set):
    summary = family_summary(gpvit, val_set, count=2)
    assert summary["params_M"] == pytest.approx(count_params(gpvit.model) / 1e6)
    assert summary["GFLOPs"] > 0 and summary["attention_distance_px"] > 0
    assert 0 <= summary["erf_radius_px"] <= 64 * 2**0.5
    assert summary["mIoU"] == pytest.approx(
        review(gpvit.model, val_set, gpvit.eval_cfg, 0, 2).metrics["mIoU"]
    )
    table = summary_markdown({"GPViT": summary})
    assert table.splitlines()[0].startswith("| model | params_M") and "| GPViT |" in table


def test_untrained_demo_predictor_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = demo_predictor("tiny_setr", trained=False), demo_predictor("tiny_setr", trained=False)
    assert torch.equal(torch.get_rng_state(), before)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert first.classes.names == classes_of(load_config("tiny_setr")).names


@pytest.mark.parametrize("name, format", [("gpvit_l1", "gpvit"), ("hlg_tiny", "hlg")])
def test_release_file_stand_in_loads_back_through_load_pretrained(tmp_path, name, format):
    source = tiny(name, num_classes=10)
    path = save_release_file(source, format, tmp_path / "release" / f"{name}.pth")
    target = tiny(name, num_classes=10)
    report = load_pretrained(target, path)
    assert report.format == format and report.clean
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(ValueError, match="format must be one of"):
        save_release_file(source, "timm", tmp_path / "x.pth")
