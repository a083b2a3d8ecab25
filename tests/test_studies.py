"""The attention researchers' studies (workbench.studies): CKA against its definition, minibatch CKA,
linear probes, head and branch ablation, layer-wise decoding and attention statistics, on tiny models
and the 64-pixel demo set."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from tests.tiny import tiny
from workbench.build import build_datasets
from workbench.config import EvalConfig, load_config
from workbench.engine.evaluate import evaluate
from workbench.studies import (
    LinearProbe,
    MinibatchCKA,
    ablated,
    attention_statistics,
    cka,
    cka_figure,
    component_means,
    components,
    fit_probes,
    head_importance,
    hsic,
    importance_figure,
    layer_cka,
    layer_decoding,
    layer_features,
    layer_probes,
    lens_figure,
    lens_logits,
    pixel_effect,
    probe_figure,
    probe_metrics,
    statistics_figure,
)
from workbench.studies.batches import Batch
from workbench.viz.distance import attention_distances


@pytest.fixture(scope="module")
def val_set():
    cfg = load_config("tiny_setr", ["data.demo_train=4", "data.demo_val=8"])
    return build_datasets(cfg)[1]


def _model(name: str, val_set):
    torch.manual_seed(0)
    return tiny(name, len(val_set.classes.names)).eval()


@pytest.fixture(scope="module")
def setr(val_set):
    return _model("setr_naive_vit_base", val_set)


@pytest.fixture(scope="module")
def gpvit(val_set):
    return _model("gpvit_l1_segformer", val_set)


def _features(seed: int, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 7, generator=generator)
    y = x @ torch.randn(7, 5, generator=generator) + torch.randn(n, 5, generator=generator)
    return x.double(), y.double()


def test_cka_is_its_gram_matrix_definition_and_has_the_invariances_of_linear_cka():
    x, y = _features(0)
    by_definition = hsic(x @ x.T, y @ y.T) / torch.sqrt(hsic(x @ x.T, x @ x.T) * hsic(y @ y.T, y @ y.T))
    assert float(cka(x, y)) == pytest.approx(float(by_definition), abs=1e-12)
    assert float(cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    rotation, _ = torch.linalg.qr(
        torch.randn(7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    assert float(cka(3.5 * x @ rotation, y)) == pytest.approx(float(cka(x, y)), abs=1e-10)
    assert float(cka(x + 4.0, y)) == pytest.approx(float(cka(x, y)), abs=1e-10)  # centred
    stretched = x * torch.tensor([10.0, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64)  # not orthogonal: CKA moves
    assert abs(float(cka(stretched, y)) - float(cka(x, y))) > 1e-3
    independent = torch.randn(2000, 5, generator=torch.Generator().manual_seed(2))
    assert float(cka(_features(3, 2000)[0], independent)) < 0.02
    with pytest.raises(ValueError, match="same n"):
        cka(x, y[:-1])


def test_minibatch_cka_converges_to_the_full_cka_as_minibatches_are_added():
    x, y = _features(4, 8192)
    full = float(cka(x, y))

    def minibatch(batches: int) -> float:
        accumulator = MinibatchCKA(["x"], ["y"])
        for i in range(batches):
            rows = slice(64 * i, 64 * (i + 1))
            accumulator.update({"x": x[rows]}, {"y": y[rows]})
        return float(accumulator.compute()[0, 0])

    errors = [abs(minibatch(batches) - full) for batches in (2, 128)]
    assert errors[1] < 0.005 and errors[1] < errors[0]
    accumulator = MinibatchCKA(["x"], ["x"])
    accumulator.update({"x": x[:8]}, {"x": x[:8]})
    assert float(accumulator.compute()[0, 0]) == pytest.approx(1.0)


def test_layer_features_name_every_layer_of_each_family():
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        setr = layer_features(tiny("setr_mla_vit_base").eval(), images)
        gpvit = layer_features(tiny("gpvit_l1_upernet").eval(), images)
        hlg = layer_features(tiny("setr_hlg_small").eval(), images)
    assert {name: tuple(f.shape) for name, f in setr.items()} == {
        f"blocks.{i}": (1, 32, 4, 4) for i in range(4)
    }
    assert {name: tuple(f.shape) for name, f in gpvit.items()} == {
        f"blocks.{i}": (1, 24, 8, 8) for i in range(4)
    }
    assert list(hlg) == [f"stages.{s}.{i}" for s in range(4) for i in range(2)]
    assert [tuple(hlg[f"stages.{s}.1"].shape) for s in range(4)] == [
        (1, 32 * 2**s, 16 // 2**s, 16 // 2**s) for s in range(4)
    ]


def test_layer_cka_of_a_model_with_itself_and_with_another(setr, gpvit, val_set, tmp_path):
    table = layer_cka(setr, val_set, batch_size=4, progress=False)
    matrix = torch.tensor(table.column("cka")).reshape(4, 4)
    assert torch.allclose(matrix.diagonal(), torch.ones(4)) and torch.allclose(matrix, matrix.T)
    exact = layer_cka(setr, val_set, minibatch=False, progress=False)
    assert torch.allclose(
        torch.tensor(exact.column("cka")).reshape(4, 4).diagonal(), torch.ones(4, dtype=torch.float32)
    )
    across = layer_cka(setr, val_set, gpvit, features="tokens", tokens_per_image=8, seed=3, progress=False)
    assert across == layer_cka(
        setr, val_set, gpvit, features="tokens", tokens_per_image=8, seed=3, progress=False
    )
    assert len(across) == 16 and all(0 <= value <= 1 + 1e-6 for value in across.column("cka"))
    with open(across.to_csv(tmp_path / "cka.csv")) as file:
        rows = list(csv.DictReader(file))
    assert rows[1]["layer_x"] == "blocks.0" and rows[1]["layer_y"] == "blocks.1"
    assert float(rows[1]["cka"]) == pytest.approx(across[1].cka)
    assert isinstance(cka_figure(across), Figure)


def _labelled_maps(seed: int, classes: int = 4) -> list[tuple[dict, Batch]]:
    """Two batches of feature maps at the labels' resolution: 'separable' a fixed linear image of the
    one-hot labels plus a little noise, 'noise' unrelated to them; the top row ignored (255)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(6, classes, generator=generator)
    batches = []
    for _ in range(2):
        labels = torch.randint(classes, (4, 16, 16), generator=generator)
        one_hot = F.one_hot(labels, classes).permute(0, 3, 1, 2).float()
        separable = torch.einsum("ck,bkhw->bchw", mixing, one_hot) + 0.05 * torch.randn(
            4, 6, 16, 16, generator=generator
        )
        noise = torch.randn(4, 6, 16, 16, generator=generator)
        labels[:, 0] = 255
        batches.append(
            ({"separable": separable, "noise": noise}, Batch(torch.zeros(4, 3, 16, 16), (16, 16), labels))
        )
    return batches


@pytest.mark.parametrize("batch_norm", [False, True])
def test_a_probe_separates_linearly_separable_dense_features_and_not_noise(batch_norm):
    data = _labelled_maps(0)
    probes = {name: LinearProbe(6, 4, batch_norm) for name in ("separable", "noise")}
    fit_probes(probes, lambda: iter(data), steps=80, lr=0.1, progress=False)
    metrics = probe_metrics(probes, lambda: iter(data), 4)
    assert metrics["separable"]["mIoU"] == pytest.approx(100.0)
    assert metrics["noise"]["aAcc"] < 40  # chance is 25%


def test_layer_probes_give_one_seeded_row_per_layer(setr, val_set):
    def run():
        return layer_probes(setr, val_set, val_set, steps=4, batch_size=4, seed=1, progress=False)

    table = run()
    assert table.column("layer") == [f"blocks.{i}" for i in range(4)] and table.column("channels") == [32] * 4
    assert all(0 <= value <= 100 for value in table.column("mIoU"))
    assert table == run()
    assert isinstance(probe_figure(table), Figure)


def test_ablating_a_head_whose_projection_weights_are_zero_changes_nothing(val_set):
    model = _model("setr_naive_vit_base", val_set)
    images = torch.stack([val_set[i][0] for i in range(2)])
    with torch.no_grad():
        model.backbone.blocks[1].attn.proj.weight[:, 16:] = 0  # head 1 of block 1 writes nothing
        intact = model(images)
    parts = {part.name: part for part in components(model)}
    silent, real = parts["blocks.1.head1"], parts["blocks.1.head0"]
    means = component_means(model, val_set, [silent, real], count=4, progress=False)
    for mode in ("zero", "mean"):
        with torch.no_grad(), ablated(model, [silent], mode, means):
            assert torch.equal(model(images), intact)
        with torch.no_grad(), ablated(model, [real], mode, means):
            assert not torch.allclose(model(images), intact)
    with torch.no_grad():
        assert torch.equal(model(images), intact)  # the hooks are gone
    table = head_importance(model, val_set, [silent, real], count=4, progress=False)
    assert table[0].delta_mIoU == 0.0 and table[0].component == "blocks.1.head1"
    pixel = pixel_effect(model, val_set[0][0], (20, 40), [silent])
    assert pixel[0].prob_after == pixel[0].prob_before and pixel[0].label_after == pixel[0].label
    assert isinstance(importance_figure(table), Figure)
    with pytest.raises(ValueError, match="means"), ablated(model, [real], "mean"):
        pass


def test_every_family_names_its_heads_and_branches(gpvit, val_set):
    names = [part.name for part in components(gpvit)]
    assert "blocks.1.grouping" in names and "blocks.1.ungrouping.head5" in names
    assert "blocks.0.vertical" in names and "blocks.0.horizontal.head0" in names
    hlg = [part.name for part in components(tiny("setr_hlg_small"), heads=False)]
    assert hlg[:4] == ["stages.0.0.local", "stages.0.0.global", "stages.0.1.dilated", "stages.0.1.global"]
    assert hlg[-1] == "stages.3.1.global"
    images = torch.stack([val_set[i][0] for i in range(2)])
    with torch.no_grad():
        intact = gpvit(images)
        with ablated(gpvit, [components(gpvit, heads=False)[2]]):  # blocks.1.grouping
            assert not torch.allclose(gpvit(images), intact)


@pytest.mark.parametrize("name", ["setr_naive_vit_base", "setr_mla_vit_base", "gpvit_l1_upernet"])
def test_decoding_the_deepest_layer_is_the_model_itself(name, val_set):
    model = _model(name, val_set)
    images = torch.stack([val_set[i][0] for i in range(2)])
    with torch.no_grad():
        decoded = lens_logits(model, images)
        assert list(decoded) == [f"blocks.{i}" for i in range(4)]
        assert torch.allclose(decoded["blocks.3"], model(images), atol=1e-6)
        assert not torch.allclose(decoded["blocks.0"], model(images), atol=1e-4)


def test_layer_decoding_scores_each_layer_as_the_evaluation_does(setr, val_set):
    table = layer_decoding(setr, val_set, batch_size=4, progress=False)
    assert table.column("layer") == [f"blocks.{i}" for i in range(4)]
    expected = evaluate(setr, val_set, EvalConfig(mode="whole"), setr.num_classes, progress=False)
    assert table[-1].mIoU == pytest.approx(expected["mIoU"]) and table[-1].agreement == pytest.approx(100.0)
    assert isinstance(lens_figure(table), Figure)
    with pytest.raises(ValueError, match="HLG"):
        lens_logits(tiny("setr_hlg_small"), torch.randn(1, 3, 32, 32))


def test_attention_statistics_with_bootstrap_intervals(gpvit, val_set):
    table = attention_statistics(gpvit, val_set, count=6, batch_size=3, resamples=200, progress=False)
    sites = list(dict.fromkeys(table.column("site")))
    assert sites[:4] == [
        "blocks.0.vertical",
        "blocks.0.horizontal",
        "blocks.1.grouping",
        "blocks.1.ungrouping",
    ]
    assert all(row.low <= row.mean <= row.high and row.images == 6 for row in table)
    assert any(row.low < row.high for row in table)
    entropy = [row for row in table if row.measure == "entropy"]
    assert all(0 <= row.mean <= torch.log(torch.tensor(64.0)) for row in entropy)  # <= log(keys)
    images = torch.stack([val_set[i][0] for i in range(6)])
    distances = attention_distances(gpvit, images)
    for row in table:
        if row.measure == "distance":
            assert row.mean == pytest.approx(float(distances[row.site][row.head]), rel=1e-5)
    assert table == attention_statistics(gpvit, val_set, count=6, batch_size=3, resamples=200, progress=False)
    assert isinstance(statistics_figure(table, "entropy"), Figure)


def test_a_timm_vit_takes_the_studies_that_read_layers_and_refuses_the_lens(val_set):
    """An ExplainedViT (any timm ViT): CKA and statistics read its blocks, probes take the data set's
    classes (DINOv2's linear protocol), a last minibatch too small for the unbiased HSIC is left out,
    and the lens says in one line why it does not apply."""
    from workbench.inference import load_vit_predictor

    vit = load_vit_predictor("vit_small_patch16_224.dino", depth=2, embed_dim=32, num_heads=2).model
    table = layer_cka(vit, val_set, count=9, batch_size=4, progress=False)  # batches of 4, 4 and 1
    assert [row.layer_x for row in table] == ["blocks.0", "blocks.0", "blocks.1", "blocks.1"]
    assert table[0].cka == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"no classes of its own .*: pass num_classes"):
        layer_probes(vit, val_set, val_set, steps=1, progress=False)
    probes = layer_probes(
        vit,
        val_set,
        val_set,
        num_classes=6,
        steps=2,
        batch_size=2,
        train_count=2,
        val_count=2,
        progress=False,
    )
    assert probes.column("layer") == ["blocks.0", "blocks.1"]
    assert len(attention_statistics(vit, val_set, count=2, resamples=20, progress=False)) == 2 * 2 * 2
    with pytest.raises(ValueError, match="has no head to apply"):
        layer_decoding(vit, val_set, count=1, progress=False)
