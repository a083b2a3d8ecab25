"""GPViT: exact counts, released structure, official key layout, any input size, efficiency, recording."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import workbench
from workbench.interop.gpvit import from_official, to_official
from workbench.models import GPViT, model_info
from workbench.models.complexity import build_on_meta, count_gmacs, count_params
from workbench.models.explain import EXPLICIT_ATOL, EXPLICIT_RTOL
from workbench.models.gpvit import GPBlock, StripeAttention, StripeBlock, gpvit_l1
from workbench.viz import record

from .tiny import tiny_gpvit, tiny_gpvit_segmentor

VARIANTS = ("l1", "l2", "l3", "l4")
FULL = dict(l1=9_589_848, l2=24_162_680, l3=36_654_056, l4=75_484_456)
BACKBONE = dict(l1=9_325_544, l2=23_691_532, l3=36_221_056, l4=74_859_456)
SEGMENTORS = dict(  # official ADE20K configs, 150 classes, read off the official model code
    upernet=dict(l1=37_674_532, l2=53_426_784, l3=66_838_476, l4=107_493_260),
    segformer=dict(l1=9_851_278, l2=24_353_226, l3=36_969_270, l4=75_805_430),
)
PER_BLOCK = dict(  # LePE block, GP block with G=64, stem + projection
    l1=(566_784, 1_109_764, 230_936),
    l2=(1_464_384, 2_844_442, 403_228),
    l3=(2_253_312, 4_365_640, 489_328),
    l4=(4_692_480, 9_061_480, 723_120),
)


def test_every_variant_is_registered_with_timm():
    expected = {f"gpvit_{v}" for v in VARIANTS} | {f"gpvit_{v}_{d}" for v in VARIANTS for d in SEGMENTORS}
    assert set(workbench.list_models(family="GPViT")) == expected
    assert expected <= set(timm.list_models("gpvit_*"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_parameter_counts(variant):
    model = build_on_meta(f"gpvit_{variant}", num_classes=1000)
    assert count_params(model) == FULL[variant]
    assert (
        count_params(model) - count_params(model.head) - count_params(model.neck or torch.nn.Identity())
        == BACKBONE[variant]
    )
    stripe, gp, stem = PER_BLOCK[variant]
    assert count_params(model.blocks[0]) == stripe and count_params(model.blocks[1]) == gp
    assert count_params(model.patch_embed) == stem


@pytest.mark.parametrize("decoder", SEGMENTORS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_segmentor_counts_equal_the_official_builds(variant, decoder):
    model = build_on_meta(f"gpvit_{variant}_{decoder}", num_classes=150)
    assert count_params(model) == SEGMENTORS[decoder][variant]
    assert len(model.aux_heads) == (1 if decoder == "upernet" else 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gflops_within_five_percent_of_published(variant):
    paper = model_info(f"gpvit_{variant}").paper
    gmacs = count_gmacs(build_on_meta(f"gpvit_{variant}", num_classes=1000), 224)
    assert abs(gmacs / paper.gflops - 1) < 0.05


def test_released_structure_of_l1():
    model = build_on_meta("gpvit_l1", num_classes=1000)
    groups = {i: b.group_tokens.shape[1] for i, b in enumerate(model.blocks) if isinstance(b, GPBlock)}
    assert groups == {1: 64, 4: 32, 7: 32, 10: 16}
    assert all(isinstance(model.blocks[i], StripeBlock) for i in (0, 2, 3, 5, 6, 8, 9, 11))
    stripe, gp = model.blocks[0], model.blocks[1]
    assert stripe.norm1.eps == 1e-6 and model.norm.eps == 1e-6
    assert (
        gp.grouping.norm_query.eps == 1e-5
        and gp.propagation.norm1.eps == 1e-5
        and gp.ungrouping.norm2.eps == 1e-5
    )
    assert [s.num_heads for s in stripe.stripes] == [6, 6] and [s.width for s in stripe.stripes] == [2, 2]
    assert gp.grouping.num_heads == 6 and gp.ungrouping.num_heads == 6
    assert gp.propagation.token_mlp.fc1.out_features == 108  # C / 2, not a function of G
    assert gp.ungrouping.fuse.in_features == 2 * 216
    assert stripe.dwconv.bias is None and gp.dwconv[0].bias is None
    assert model.blocks[11].drop_path.drop_prob == pytest.approx(0.2)
    assert model.pos_embed.shape == (1, 784, 216)
    assert count_params(model.neck) == 47_304 and count_params(model.head) == 217_000


def _official_l1_keys() -> dict[str, tuple[int, ...]]:
    """The official L1 classification checkpoint's tensors, written out from the spec's key table."""
    c, half, hidden = 216, 108, 864
    keys: dict[str, tuple[int, ...]] = {"backbone.pos_embed": (1, 784, c)}

    def bn(prefix: str, n: int) -> None:
        keys.update({f"{prefix}.{n_}": (n,) for n_ in ("weight", "bias", "running_mean", "running_var")})
        keys[f"{prefix}.num_batches_tracked"] = ()

    def linear(prefix: str, n_out: int, n_in: int, bias: bool = True) -> None:
        keys[f"{prefix}.weight"] = (n_out, n_in)
        if bias:
            keys[f"{prefix}.bias"] = (n_out,)

    def norm(prefix: str) -> None:
        keys[f"{prefix}.weight"] = keys[f"{prefix}.bias"] = (c,)

    keys["backbone.patch_embed.stem.0.weight"] = (64, 3, 7, 7)
    bn("backbone.patch_embed.stem.1", 64)
    keys["backbone.patch_embed.projection.weight"] = (c, 64, 4, 4)
    keys["backbone.patch_embed.projection.bias"] = (c,)
    for i in (0, 2, 3, 5, 6, 8, 9, 11):
        p = f"backbone.layers.{i}"
        norm(f"{p}.norm1")
        linear(f"{p}.qkv", 3 * c, c)
        for branch in (0, 1):
            keys[f"{p}.attns.{branch}.get_v.weight"] = (half, 1, 3, 3)
            keys[f"{p}.attns.{branch}.get_v.bias"] = (half,)
        linear(f"{p}.proj", c, c)
        norm(f"{p}.norm2")
        linear(f"{p}.ffn.layers.0.0", hidden, c)
        linear(f"{p}.ffn.layers.1", c, hidden)
        keys[f"{p}.dw.weight"] = (c, 1, 3, 3)
    for j, g in {1: 64, 4: 32, 7: 32, 10: 16}.items():
        p = f"backbone.layers.{j}"
        keys[f"{p}.group_token"] = (1, g, c)
        norm(f"{p}.group_layer.norm_query")
        norm(f"{p}.group_layer.norm_key")
        linear(f"{p}.group_layer.attn.k_proj", c, c)
        m = f"{p}.mixer.layers.0"
        norm(f"{m}.norm1")
        linear(f"{m}.patch_mixer.0", half, g)
        linear(f"{m}.patch_mixer.3", g, half)
        norm(f"{m}.norm2")
        linear(f"{m}.channel_mixer.0", hidden, c)
        linear(f"{m}.channel_mixer.3", c, hidden)
        u = f"{p}.un_group_layer"
        norm(f"{u}.norm_query")
        norm(f"{u}.norm_key")
        for name in ("q_proj", "k_proj", "v_proj", "proj"):
            linear(f"{u}.attn.{name}", c, c)
        linear(f"{u}.proj", c, 2 * c)
        norm(f"{u}.norm2")
        linear(f"{u}.ffn.layers.0.0", hidden, c)
        linear(f"{u}.ffn.layers.1", c, hidden)
        keys[f"{p}.dwconv.0.weight"] = (c, 1, 3, 3)
        bn(f"{p}.dwconv.1", c)
    norm("backbone.ln1")
    keys["neck.group_token"] = (1, 1, c)
    norm("neck.norm_query")
    linear("neck.attn.k_proj", c, c, bias=False)
    linear("head.fc", 1000, c)
    return keys


def test_l1_state_dict_maps_onto_the_official_key_table():
    expected = _official_l1_keys()
    assert len(expected) == 333
    state = build_on_meta("gpvit_l1", num_classes=1000).state_dict()
    official = to_official(state)
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    assert from_official(official, segmentor=False).keys() == state.keys()


@pytest.mark.parametrize("decoder", SEGMENTORS)
def test_l1_segmentor_state_dict_maps_onto_the_official_layout(decoder):
    state = build_on_meta(f"gpvit_l1_{decoder}", num_classes=150).state_dict()
    official = to_official(state)
    outside = {k: tuple(v.shape) for k, v in official.items() if not k.startswith("backbone.layers.")}
    assert len(outside) == (99 if decoder == "upernet" else 49)
    assert {
        "backbone.norm2.weight",
        "backbone.norm5.weight",
        "backbone.norm8.weight",
        "backbone.ln1.weight",
    } <= outside.keys()
    if decoder == "upernet":
        assert outside["decode_head.bottleneck.conv.weight"] == (512, 2264, 3, 3)
        assert outside["decode_head.fpn_bottleneck.conv.weight"] == (512, 2048, 3, 3)
        assert outside["auxiliary_head.convs.0.conv.weight"] == (256, 216, 3, 3)
        assert outside["auxiliary_head.conv_seg.weight"] == (150, 256, 1, 1)
    else:
        assert outside["decode_head.fusion_conv.conv.weight"] == (256, 1024, 1, 1)
        assert outside["decode_head.conv_seg.weight"] == (150, 256, 1, 1)
    assert from_official(official, segmentor=True).keys() == state.keys()


def test_dense_outputs_are_four_normalised_stride_8_maps():
    model = build_on_meta("gpvit_l1_upernet", num_classes=150)
    features = model.backbone.forward_dense(torch.zeros(1, 3, 512, 512, device="meta"))
    assert [tuple(f.shape) for f in features] == [(1, 216, 64, 64)] * 4
    assert sorted(model.backbone.out_norms) == ["2", "5", "8"]


@pytest.mark.parametrize("decoder", SEGMENTORS)
def test_segmentor_forward_backward_every_parameter_gets_a_gradient(decoder):
    model = tiny_gpvit_segmentor(decoder)
    images, targets = torch.randn(2, 3, 64, 48), torch.randint(0, 5, (2, 64, 48))
    losses = model.losses(images, targets)
    losses["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
    model.eval()
    assert model(images).shape == (2, 5, 64, 48)


@pytest.mark.parametrize("pool", ["group", "avg"])
def test_classifier_forward_backward(pool):
    model = tiny_gpvit(num_classes=7, global_pool=pool)
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (2, 7)
    logits.logsumexp(-1).sum().backward()
    silent = {name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}
    if pool == "group":
        # As released, the neck's query token starts at zero: LN(0) = 0, so the first step cannot
        # move the query norm's scale or the key projection; a nonzero query reaches them too.
        assert silent == {"neck.pool.norm_query.weight", "neck.pool.k_proj.weight"}
        model.zero_grad()
        with torch.no_grad():
            model.neck.query_token.normal_()
        model(images).logsumexp(-1).sum().backward()
        silent = {name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}
    assert not silent
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 32, 32)), pre_logits=True).shape == (
        1,
        24,
    )
    assert (
        timm.create_model(
            "gpvit_l1", num_classes=3, embed_dim=24, depth=4, group_layers={1: 8, 3: 4}
        ).num_classes
        == 3
    )


@pytest.mark.parametrize("size", [(500, 375), (64, 56), (40, 72), (8, 8)])
def test_any_input_size(size):
    model = tiny_gpvit_segmentor("upernet").eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 5, *size) and torch.isfinite(logits).all()


def _reference_stripe_attention(module: StripeAttention, q, k, v, grid):
    """Attention inside each stripe, one stripe at a time, over the real tokens only."""
    height, width = grid
    rows, cols = module.window(grid)
    as_grid = [t.reshape(t.shape[0], height, width, -1) for t in (q, k, v)]
    out = torch.zeros_like(as_grid[0])
    for top in range(0, height, rows):
        for left in range(0, width, cols):
            qs, ks, vs = (t[:, top : top + rows, left : left + cols] for t in as_grid)
            h, w = qs.shape[1:3]
            heads = [t.reshape(t.shape[0], h * w, module.num_heads, -1).transpose(1, 2) for t in (qs, ks, vs)]
            probs = ((heads[0] @ heads[1].transpose(-1, -2)) * heads[0].shape[-1] ** -0.5).softmax(-1)
            attended = (probs @ heads[2]).transpose(1, 2).reshape(qs.shape[0], h, w, -1)
            lepe = module.lepe(vs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            out[:, top : top + rows, left : left + cols] = attended + lepe
    return out.reshape(q.shape)


@pytest.mark.parametrize("grid", [(6, 8), (7, 5), (5, 6), (1, 3)])
@pytest.mark.parametrize("vertical", [True, False])
def test_stripe_attention_equals_per_stripe_reference(grid, vertical):
    module = StripeAttention(12, 3, width=2, vertical=vertical)
    q, k, v = (torch.randn(2, grid[0] * grid[1], 12) for _ in range(3))
    tiled = (
        grid[1] if vertical else grid[0]
    ) % 2 == 0  # vertical stripes cut the width, horizontal the height
    assert (module.key_mask(grid, 2, q.device) is None) == tiled  # whole stripes never take the padding path
    torch.testing.assert_close(
        module(q, k, v, grid), _reference_stripe_attention(module, q, k, v, grid), rtol=1e-5, atol=1e-5
    )


def test_position_embedding_is_resampled_bicubically():
    small = tiny_gpvit(num_classes=3, img_size=32).eval()
    big = tiny_gpvit(num_classes=3, img_size=64).eval()
    state = small.state_dict()
    grid = state["pos_embed"].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    state["pos_embed"] = (
        F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    )
    big.load_state_dict(state)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(images), big(images), rtol=1e-5, atol=1e-5)


class _SoftmaxSpy(torch.overrides.TorchFunctionMode):
    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("softmax", "_softmax"):
            self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_no_attention_matrix_over_all_tokens_and_all_attention_is_fused(monkeypatch):
    """Every attention goes through scaled_dot_product_attention and none of them is N x N."""
    model = tiny_gpvit_segmentor("segformer").eval()
    calls = []
    fused = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((q.shape[-2], k.shape[-2]))
        return fused(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    softmaxes = []
    with torch.no_grad(), _SoftmaxSpy(softmaxes):
        model(torch.randn(1, 3, 64, 64))
    tokens = 8 * 8
    assert len(calls) == 2 * 2 + 2 * 2  # two stripe blocks (2 branches) and two GP blocks (group, ungroup)
    assert all(queries * keys < tokens * tokens for queries, keys in calls)
    assert not softmaxes


def test_recording_is_exact_and_keeps_outputs_within_tolerance():
    model = tiny_gpvit_segmentor("upernet").eval()
    images = torch.randn(2, 3, 64, 40)  # an 8 x 5 grid: odd, so the stripes are padded
    with torch.no_grad():
        plain = model(images)
        with record(model) as rec:
            recorded = model(images)
    torch.testing.assert_close(recorded, plain, atol=EXPLICIT_ATOL, rtol=EXPLICIT_RTOL)
    grouping, ungrouping = rec.attention["blocks.1.grouping"], rec.attention["blocks.1.ungrouping"]
    assert grouping.probs.shape == (2, 6, 8, 40) and ungrouping.probs.shape == (2, 6, 40, 8)
    torch.testing.assert_close(grouping.probs.sum(-1), torch.ones(2, 6, 8))
    torch.testing.assert_close(ungrouping.probs.sum(-1), torch.ones(2, 6, 40))
    assert grouping.grid == (8, 5) and grouping.group_maps().shape == (2, 6, 8, 8, 5)
    assert ungrouping.group_maps().shape == (2, 6, 8, 8, 5) and ungrouping.query_map(7, 4).shape == (2, 6, 8)
    vertical = rec.attention["blocks.0.vertical"]
    assert vertical.layout.size == (8, 2) and vertical.probs.shape == (2, 6, 3, 16, 16)
    where = vertical.query_map(3, 4)  # column 4 lies in the third stripe (columns 4-5, 5 is padding)
    torch.testing.assert_close(where.sum((-1, -2)), torch.ones(2, 6))
    assert where[..., :4].abs().sum() == 0


def test_grouping_record_matches_an_explicit_computation():
    model = tiny_gpvit(num_classes=3).eval()
    images = torch.randn(1, 3, 32, 32)
    block = model.blocks[1]
    captured = {}
    block.grouping.register_forward_pre_hook(lambda _m, args: captured.update(args=args))
    with torch.no_grad(), record(model, layers=["blocks.1.grouping"]) as rec:
        model(images)
    group_tokens, tokens, grid = captured["args"]
    assert grid == (4, 4)
    q = block.grouping.norm_query(group_tokens)
    v = block.grouping.norm_key(tokens)
    k = block.grouping.k_proj(v)
    heads = [t.reshape(1, t.shape[1], 6, 4).transpose(1, 2) for t in (q, k)]
    expected = ((heads[0] @ heads[1].transpose(-1, -2)) / 2.0).softmax(-1)  # head_dim 4
    torch.testing.assert_close(rec.attention["blocks.1.grouping"].probs, expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tiny_gpvit_segmentor("upernet")(torch.randn(1, 3, 6, 32)), "at least 8 pixels, got 6x32"),
        (
            lambda: tiny_gpvit(num_classes=3)(torch.randn(1, 4, 32, 32)),
            r"expected 3 input channels, got 4 \(shape \(1, 4, 32, 32\)\)",
        ),
        (
            lambda: tiny_gpvit(num_classes=3)(torch.randn(0, 3, 32, 32)),
            "at least one image, got a batch of 0",
        ),
        (
            lambda: tiny_gpvit_segmentor("upernet")(torch.randn(1, 3, 32, 32).half()),
            r"images are torch.float16 but the model's weights are torch.float32",
        ),
        (lambda: gpvit_l1(img_size=0), "img_size must be a positive multiple of 1"),
        (
            lambda: workbench.create_segmentor("gpvit_l5_upernet", num_classes=3),
            "unknown model 'gpvit_l5_upernet'",
        ),
        (lambda: workbench.create_segmentor("gpvit_l1", num_classes=3), "is a classification model"),
        (lambda: GPViT(embed_dim=100), "embed_dim must split evenly"),
        (lambda: gpvit_l1(global_pool="max"), "global_pool must be"),
        (
            lambda: workbench.create_segmentor("gpvit_l1_upernet", num_classes=0),
            "num_classes must be an integer >= 1",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
