"""HLG: released module shapes, the decisions D1-D17, any input size, recording."""

from __future__ import annotations

import pytest
import timm
import torch

import workbench
from workbench.models import hlg, model_info
from workbench.models.complexity import build_on_meta, count_gmacs, count_params
from workbench.models.explain import EXPLICIT_ATOL, EXPLICIT_RTOL
from workbench.models.hlg import GlobalLayer, Groups, HLGLayer
from workbench.models.position_bias import DynamicPositionBias, _grid_coords
from workbench.viz import record

from .tiny import tiny_hlg, tiny_setr_hlg

VARIANTS = ("tiny", "small", "medium", "large")
# Built from the released segmentation backbone definition (backbone, + 1000-class head), in millions.
RELEASED = dict(tiny=(10.52, 11.04), small=(23.51, 24.27), medium=(39.21, 39.98), large=(83.33, 84.36))


def test_every_variant_is_registered_with_timm():
    expected = {f"hlg_{v}" for v in VARIANTS} | {f"setr_hlg_{v}" for v in ("small", "medium", "large")}
    assert set(workbench.list_models(family="HLG")) == expected
    assert expected <= set(timm.list_models("*hlg*"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_equal_the_released_definition(variant):
    model = build_on_meta(f"hlg_{variant}", num_classes=1000)
    backbone, full = RELEASED[variant]
    assert round(count_params(model) / 1e6, 2) == full
    assert round((count_params(model) - count_params(model.head)) / 1e6, 2) == backbone
    readme = model_info(f"hlg_{variant}").paper.params_m
    if variant == "medium":  # D7: the README's 43M is out of reach of the released definition
        assert count_params(model) / 1e6 / readme - 1 < -0.05
    else:
        assert abs(count_params(model) / 1e6 / readme - 1) < 0.02


@pytest.mark.parametrize("variant", ["tiny", "small", "large"])
def test_readme_gflops_leave_out_the_second_stem_conv(variant):
    """The README's GFLOPs are our count without the stem's 3x3 conv at stride 2 (see the footnote)."""
    model = build_on_meta(f"hlg_{variant}", num_classes=1000)
    readme = model_info(f"hlg_{variant}").paper.gflops
    full = count_gmacs(model, 224)
    model.stem[1] = torch.nn.Identity()
    assert abs(count_gmacs(model, 224) / readme - 1) < 0.04
    assert full / readme - 1 > 0.10


def test_released_structure_and_decisions():
    model = build_on_meta("hlg_small", num_classes=1000)
    stages = model.stages
    assert [len(s) for s in stages] == [2, 2, 6, 2]
    assert [layer.dilated for layer in stages[2]] == [False, True] * 3  # D1
    assert all(isinstance(layer, GlobalLayer) for layer in stages[3])  # D2
    first = stages[1][0]
    assert isinstance(first, HLGLayer) and first.mlp_step.downsample is not None
    assert first.mlp_step.mlp[0].out_channels == 4 * 96  # D8: input width x 4
    assert first.local_attn.position_bias.pos_proj.out_features == 192 // 16
    assert first.local_norm.eps == 1e-6 and model.norms[0].eps == 1e-6
    assert not hasattr(first, "proj") and first.global_attn.proj.in_features == 192
    assert model.stem[0][0].stride == (2, 2) and model.stem[1][0].stride == (1, 1)


@pytest.mark.parametrize(
    ("grid", "dilated"), [((14, 21), False), ((14, 21), True), ((9, 16), True), ((10, 8), False)]
)
def test_groups_split_and_merge(grid, dilated):
    groups = Groups.for_grid(grid, dilated)
    assert groups.size == (7, 7) and groups.padded == (7 * -(-grid[0] // 7), 7 * -(-grid[1] // 7))  # D4
    x = torch.arange(grid[0] * grid[1], dtype=torch.float).reshape(1, *grid, 1)
    padded = groups.pad(x)
    split = groups.split(padded)
    assert split.shape == (groups.count[0] * groups.count[1], 49, 1)
    assert torch.equal(groups.merge(split, 1), padded)
    rows, cols = groups.count
    if dilated:  # group (r, s) takes every count-th token, starting at (r, s)
        assert torch.equal(split[1 * cols + 0, :, 0].reshape(7, 7), padded[0, 1::rows, 0::cols, 0])
    else:
        assert torch.equal(split[1, :, 0].reshape(7, 7), padded[0, 0:7, 7:14, 0])


@pytest.mark.parametrize("dilated", [False, True])
def test_global_bias_is_the_offset_to_each_window_centroid_in_window_units(dilated):
    """D17: token t's bias for window w is DPB((t - c_w) / 7), c_w the window's mean token position."""
    position_bias = DynamicPositionBias(4, 2)
    groups = Groups.for_grid((14, 21), dilated)
    rows, cols = groups.count
    tokens = _grid_coords(14, 21, "cpu")
    members = torch.stack([groups.split(tokens.reshape(1, 14, 21, 2).float())[w] for w in range(rows * cols)])
    centroids = members.mean(1).floor()  # (windows, 2): by hand from the windows' members
    direct = position_bias((tokens[:, None] - centroids[None]) / 7).permute(2, 0, 1)
    torch.testing.assert_close(hlg._global_bias(position_bias, groups, "cpu"), direct)


def test_position_bias_table_equals_direct_evaluation():
    bias = DynamicPositionBias(4, 3)
    key_rows, key_cols = torch.tensor([3, 10]), torch.tensor([3, 10, 17])
    table = bias.bias((5, 6), key_rows, key_cols, (14, 21), unit=7)
    queries = _grid_coords(5, 6, "cpu")
    keys = torch.stack(torch.meshgrid(key_rows, key_cols, indexing="ij"), -1).reshape(-1, 2)
    direct = bias((queries[:, None] - keys[None]).float() / 7).permute(2, 0, 1)
    assert table.shape == (3, 30, 6)
    torch.testing.assert_close(table, direct)


def test_segmentor_forward_backward_every_parameter_gets_a_gradient():
    model = tiny_setr_hlg()
    images, targets = torch.randn(2, 3, 128, 120), torch.randint(0, 5, (2, 128, 120))
    losses = model.losses(images, targets)
    assert set(losses) == {"loss", "loss_main", "loss_aux0"}
    losses["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, 5, 128, 120)


def test_classifier_forward_backward():
    model = tiny_hlg(num_classes=7)
    logits = model(torch.randn(2, 3, 128, 128))
    assert logits.shape == (2, 7)
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_feature_shapes_at_512_and_at_an_odd_size():
    features = build_on_meta("setr_hlg_small", num_classes=19).backbone.forward_dense(
        torch.zeros(1, 3, 512, 512, device="meta")
    )
    assert [tuple(f.shape) for f in features] == [
        (1, 96, 128, 128),
        (1, 192, 64, 64),
        (1, 384, 32, 32),
        (1, 768, 16, 16),
    ]
    model = tiny_setr_hlg().eval()
    with torch.no_grad():
        features = model.backbone.forward_dense(torch.randn(1, 3, 100, 75))
        assert [tuple(f.shape[-2:]) for f in features] == [(25, 19), (13, 10), (7, 5), (4, 3)]
        assert model(torch.randn(1, 3, 100, 75)).shape == (1, 5, 100, 75)


def test_padding_mask_is_a_choice_that_only_matters_when_there_is_padding():
    masked, released = tiny_setr_hlg(mask_padding=True).eval(), tiny_setr_hlg().eval()
    masked.load_state_dict(released.state_dict())
    with torch.no_grad():
        whole = torch.randn(1, 3, 112, 112)  # stage grids 28, 14, 7: whole windows, nothing padded
        torch.testing.assert_close(masked(whole), released(whole))
        odd = torch.randn(1, 3, 96, 80)
        assert not torch.allclose(masked(odd), released(odd))
        with record(masked, layers=["stages.0.0.local"]) as rec:
            masked(odd)
    local = rec.attention["stages.0.0.local"]  # 24 x 20 grid in 7x7 windows: the last column is padded
    assert local.query_map(0, 0).shape == (1, 1, 24, 20)
    assert local.probs[0, 0, 2, :, 6].sum() == 0  # window (0, 2) covers columns 14-20: column 20 is padding
    torch.testing.assert_close(local.probs.sum(-1), torch.ones_like(local.probs.sum(-1)))


def test_recording_keeps_outputs_within_tolerance_and_reads_on_the_grid():
    model = tiny_setr_hlg().eval()
    images = torch.randn(1, 3, 128, 120)
    with torch.no_grad():
        plain = model(images)
        with record(model) as rec:
            recorded = model(images)
    torch.testing.assert_close(recorded, plain, atol=EXPLICIT_ATOL, rtol=EXPLICIT_RTOL)
    assert len(rec.attention) == 3 * 2 * 2 + 2 + 2 * 2  # backbone stages 1-3, stage 4, HLG-UP head
    local, dilated, global_ = (rec.attention[f"stages.0.{k}"] for k in ("0.local", "1.local", "0.global"))
    assert local.kind == "window" and dilated.kind == "dilated" and global_.kind == "global"
    assert local.grid == (32, 30) and local.layout.count == (5, 5) and local.layout.size == (7, 7)
    assert [local.tokens.stride, rec.attention["stages.3.1.global"].tokens.stride] == [4, 32]
    head_global = rec.attention["decode_head.layers.1.global"]
    assert head_global.kind == "global" and head_global.tokens.stride == 4
    assert global_.probs.shape == (1, 1, 32 * 30, 25) and global_.query_map(31, 29).shape == (1, 1, 5, 5)
    spread = dilated.query_map(3, 4)  # the dilated group of (3, 4) is every 5th token from (3, 4)
    lattice = spread[..., 3::5, 4::5]
    assert lattice.min() > 0 and torch.isclose(lattice.sum(), spread.sum())  # (the rest went to padding)
    assert rec.attention["stages.3.1.global"].kind == "self"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tiny_setr_hlg()(torch.randn(1, 1, 64, 64)), "expected 3 input channels, got 1"),
        (lambda: tiny_hlg(dims=(32, 48, 128, 256)), "multiple of the previous one"),
        (lambda: tiny_hlg(img_size=224), "any input size works: drop img_size=224"),
        (lambda: tiny_setr_hlg()(torch.randn(0, 3, 64, 64)), "got a batch of 0"),
        (
            lambda: tiny_hlg(heads=(3, 2, 2, 4)),
            r"divide by its heads and by 16, got \(width, heads\) \[\(32, 3\)\]",
        ),
        (lambda: workbench.create_segmentor("setr_hlg_tiny", num_classes=3), "unknown model 'setr_hlg_tiny'"),
        (
            lambda: workbench.create_segmentor("setr_hlg_small", num_classes=0),
            "num_classes must be an integer >= 1",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_inference_keeps_the_position_bias_and_recomputes_it_when_the_weights_change(monkeypatch):
    """Without gradients the position biases (which depend on the grid and weights, not the image)
    are computed once per grid: the second forward computes none and gives the same outputs bit for
    bit; an in-place weight change (an optimizer step) or another grid computes them again; with
    gradients they are computed each time and train."""
    torch.manual_seed(0)
    model = tiny_setr_hlg().eval()
    computed = []
    original = DynamicPositionBias._bias
    monkeypatch.setattr(
        DynamicPositionBias,
        "_bias",
        lambda self, *args: computed.append(args[0]) or original(self, *args),
    )
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        first = model(images)
        per_forward = len(computed)
        assert per_forward > 0 and torch.equal(model(images), first) and len(computed) == per_forward
        model(torch.randn(1, 3, 96, 64))  # another grid: its global biases (7x7 local ones are shared)
        after_grid = len(computed)
        assert per_forward < after_grid < 2 * per_forward
        module = next(m for m in model.modules() if isinstance(m, DynamicPositionBias))
        module.pos3[-1].bias.add_(1.0)  # in place: its version counter moves
        changed = model(images)
    assert 1 <= len(computed) - after_grid < per_forward  # the changed module's bias only
    fresh = tiny_setr_hlg().eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(images), changed) and not torch.equal(changed, first)
    model.train()
    model.losses(torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64)))["loss"].backward()
    assert module.pos3[-1].weight.grad is not None and module.pos3[-1].weight.grad.abs().sum() > 0
