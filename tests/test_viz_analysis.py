"""Analyses on top of the explain probes: GPViT through its groups, rollout, relevance, attention
distance and effective receptive fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from workbench.inference.predictor import Predictor
from workbench.models.explain import (
    AttentionMap,
    CrossLayout,
    GroupingLayout,
    SelfLayout,
    TokenGrid,
    WindowLayout,
)
from workbench.viz import capture, record
from workbench.viz.distance import (
    attention_distances,
    gp_attention_distance,
    mean_attention_distance,
)
from workbench.viz.groups import (
    assignment_on_input,
    effective_attention,
    effective_attention_at,
    gp_assignments,
    gp_blocks,
    gp_sites,
    group_assignment,
    group_purity,
    mixing_matrices,
    normalized_mutual_information,
    propagation_inputs,
    soft_group_maps,
    token_mixing,
)
from workbench.viz.rollout import (
    attention_relevance,
    attention_rollout,
    class_token_rollout,
    effective_receptive_field,
    rollout_at,
    segment_relevance,
)

from .tiny import tiny_gpvit_segmentor, tiny_setr, tiny_setr_hlg

STRIDE = 16


def _self_map(probs: torch.Tensor, grid: tuple[int, int], prefix: int = 0) -> AttentionMap:
    tokens = TokenGrid(*grid, STRIDE, (grid[0] * STRIDE, grid[1] * STRIDE))
    return AttentionMap(probs, SelfLayout(grid, prefix), tokens)


def _random_rows(*shape: int) -> torch.Tensor:
    return torch.rand(*shape).softmax(-1)


@pytest.fixture(scope="module")
def setr():
    torch.manual_seed(0)
    model = tiny_setr("setr_naive_vit_base").eval()
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad(), record(model) as recording:
        model(images)
    with torch.no_grad(), capture(model) as cached:
        model(images)
    return model, images, recording.attention, cached


@pytest.fixture(scope="module")
def gpvit():
    torch.manual_seed(0)
    model = tiny_gpvit_segmentor("segformer").eval()
    for block in gp_blocks(model).values():  # zero group tokens give uniform groups: make them distinct
        nn.init.normal_(block.group_tokens, std=1.0)
    images = torch.randn(2, 3, 44, 60)  # a 6x8 grid, overhanging the input
    with torch.no_grad(), record(model) as recording:
        model(images)
    return model, images, recording.attention


# --------------------------------------------------------------------------- rollout


@pytest.mark.parametrize("class_token", [True, False])
def test_rollout_of_identity_attention_is_the_identity(class_token):
    n = 1 + 6
    maps = [_self_map(torch.eye(n).expand(2, 3, n, n), (2, 3), prefix=1) for _ in range(4)]
    rollout = attention_rollout(maps, class_token=class_token)
    size = n if class_token else n - 1
    torch.testing.assert_close(rollout, torch.eye(size).expand(2, size, size))
    row = rollout_at(maps, 1, 2, class_token=class_token)
    expected = torch.zeros(2, 3)
    expected[1, 2] = 1
    torch.testing.assert_close(row, expected)


def test_rollout_folds_the_residual_in_and_multiplies_later_layers_on_the_left():
    first, second = _random_rows(1, 2, 4, 4), _random_rows(1, 2, 4, 4)

    def residual(probs):
        mixed = 0.5 * probs.mean(1) + 0.5 * torch.eye(4)
        return mixed / mixed.sum(-1, keepdim=True)

    rollout = attention_rollout([_self_map(first, (2, 2)), _self_map(second, (2, 2))])
    torch.testing.assert_close(rollout, residual(second) @ residual(first))


@pytest.mark.parametrize("class_token", [True, False])
def test_one_query_rollout_equals_the_row_of_the_full_rollout(setr, class_token):
    _, _, maps, cached = setr
    full = attention_rollout(maps, class_token=class_token)  # (2, N', N')
    prefix = 1
    for sample, (row, col) in [(0, (0, 0)), (1, (2, 3)), (1, (1, 2))]:
        index = row * 4 + col + (prefix if class_token else 0)
        expected = full[sample, index, prefix if class_token else 0 :].reshape(3, 4)
        from_maps = rollout_at(maps, row, col, class_token=class_token, sample=sample)
        from_cache = rollout_at(cached, row, col, class_token=class_token, sample=sample, chunk=5)
        torch.testing.assert_close(from_maps, expected)
        torch.testing.assert_close(from_cache, expected, atol=1e-5, rtol=1e-4)


def test_class_token_rollout_is_the_class_tokens_row(setr):
    _, _, maps, _ = setr
    full = attention_rollout(maps)
    torch.testing.assert_close(class_token_rollout(maps, sample=1), full[1, 0, 1:].reshape(3, 4))
    with pytest.raises(ValueError, match="sample must be in"):
        rollout_at(maps, 0, 0, sample=2)


def test_rollout_refuses_layouts_other_than_self_attention(gpvit):
    _, _, maps = gpvit
    with pytest.raises(ValueError, match="self-attention"):
        attention_rollout([maps["blocks.0.vertical"]])


# --------------------------------------------------------------------------- relevance


def test_relevance_adds_the_positive_part_of_gradient_times_attention():
    probs = _random_rows(1, 2, 3, 3)
    grad = torch.randn(1, 2, 3, 3)
    relevance = attention_relevance([_self_map(probs, (1, 3))], [grad])
    weighted = (grad * probs).clamp(min=0).mean(1)
    torch.testing.assert_close(relevance, torch.eye(3) + weighted)
    # two layers: the later layer's term multiplies the relevance so far on the left
    later_probs, later_grad = _random_rows(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    two = attention_relevance([_self_map(probs, (1, 3)), _self_map(later_probs, (1, 3))], [grad, later_grad])
    later = (later_grad * later_probs).clamp(min=0).mean(1)
    torch.testing.assert_close(two, (torch.eye(3) + later) @ (torch.eye(3) + weighted))
    zero = attention_relevance([_self_map(probs, (1, 3))] * 3, [torch.zeros_like(grad)] * 3)
    torch.testing.assert_close(zero, torch.eye(3).expand(1, 3, 3))
    with pytest.raises(ValueError, match="keep_grad"):
        attention_relevance([_self_map(probs, (1, 3))])


def test_segment_relevance_reads_gradients_on_the_autograd_path_without_touching_parameters(setr):
    model, images, _, _ = setr
    region = torch.zeros(48, 64, dtype=torch.bool)
    region[16:32, 32:48] = True  # token (1, 2)
    relevance = segment_relevance(model, images, target_class=1, region=region)
    assert relevance.shape == (2, 48, 64)
    assert torch.isfinite(relevance).all() and (relevance >= 0).all()
    # R = I + positive terms: the region's own token keeps at least its identity share
    assert (relevance[:, 16, 32] >= 1).all()
    assert all(parameter.grad is None for parameter in model.parameters())


# --------------------------------------------------------------------------- attention distance


def test_uniform_self_attention_distance_is_its_analytic_value():
    # a 2x2 grid: from any token the keys lie at 0, s, s and s*sqrt(2); the class token is ignored
    uniform = torch.full((3, 2, 5, 5), 1 / 5)
    distance = mean_attention_distance(_self_map(uniform, (2, 2), prefix=1))
    torch.testing.assert_close(distance, torch.full((2,), STRIDE * (2 + math.sqrt(2)) / 4))


def test_uniform_window_attention_distance_leaves_padding_out():
    # a 1x3 grid in windows of 1x2: the second window is half padding, whose weight is dropped
    layout = WindowLayout((1, 3), size=(1, 2), count=(1, 2))
    uniform = torch.full((1, 4, 2, 2, 2), 0.5)
    attention = AttentionMap(uniform, layout, TokenGrid(1, 3, STRIDE, (16, 48)))
    torch.testing.assert_close(mean_attention_distance(attention), torch.full((4,), STRIDE / 3))


def test_uniform_global_attention_distance_goes_to_the_window_centroids():
    # one 2x2 window: its token sits at the grid's centre, s / sqrt(2) from every token centre
    layout = CrossLayout((2, 2), key_shape=(1, 1), windows=WindowLayout((2, 2), size=(2, 2), count=(1, 1)))
    attention = AttentionMap(torch.ones(1, 2, 4, 1), layout, TokenGrid(2, 2, STRIDE, (32, 32)))
    torch.testing.assert_close(mean_attention_distance(attention), torch.full((2,), STRIDE / math.sqrt(2)))


def test_uniform_grouping_has_the_grid_radius_and_uniform_groups_the_self_attention_distance():
    tokens = TokenGrid(2, 2, STRIDE, (32, 32))
    grouping = AttentionMap(torch.full((1, 2, 3, 4), 0.25), GroupingLayout((2, 2)), tokens)
    torch.testing.assert_close(mean_attention_distance(grouping), torch.full((2,), STRIDE / math.sqrt(2)))
    ungrouping = AttentionMap(torch.full((1, 5, 4, 3), 1 / 3), CrossLayout((2, 2), key_shape=(3,)), tokens)
    torch.testing.assert_close(
        gp_attention_distance(grouping, ungrouping, chunk=3),
        torch.full((5,), STRIDE * (2 + math.sqrt(2)) / 4),
    )
    with pytest.raises(ValueError, match="gp_attention_distance"):
        mean_attention_distance(ungrouping)


@pytest.mark.parametrize(
    "build, size",
    [
        (lambda: tiny_setr("setr_naive_vit_base"), (48, 64)),
        (lambda: tiny_gpvit_segmentor("segformer"), (44, 60)),
        (tiny_setr_hlg, (36, 44)),
    ],
    ids=["setr", "gpvit", "hlg"],
)
def test_attention_distances_cover_every_site_of_every_family(build, size):
    torch.manual_seed(0)
    model = build().eval()
    distances = attention_distances(model, torch.randn(1, 3, *size))
    assert list(distances) == list(model.attention_sites())
    for name, distance in distances.items():
        assert distance.ndim == 1 and (distance > 0).all(), name
        assert (distance < math.hypot(*size) + 32).all(), name  # within the padded input


def test_attention_distances_average_over_the_batch(setr):
    model, images, _, _ = setr
    together = attention_distances(model, images, batch_size=2)
    first, second = (attention_distances(model, images[i : i + 1]) for i in range(2))
    for name, distance in together.items():
        torch.testing.assert_close(distance, (first[name] + second[name]) / 2, msg=name)


# --------------------------------------------------------------------------- GPViT through its groups


def test_effective_attention_through_groups_rows_sum_to_one_and_queries_are_its_rows(gpvit):
    _, _, maps = gpvit
    pairs = gp_sites(maps)
    assert list(pairs) == ["blocks.1", "blocks.3"]
    for grouping, ungrouping in pairs.values():
        for head in (None, 1):
            full = effective_attention(grouping, ungrouping, head=head)  # (2, 48, 48)
            assert full.shape == (2, 48, 48)
            torch.testing.assert_close(full.sum(-1), torch.ones(2, 48))
            row = effective_attention_at(grouping, ungrouping, 5, 7, head=head, sample=1)
            torch.testing.assert_close(row, full[1, 5 * 8 + 7].reshape(6, 8))
        expected = ungrouping.probs.mean(1) @ grouping.probs.mean(1)
        torch.testing.assert_close(effective_attention(grouping, ungrouping), expected)


def test_effective_attention_from_cached_q_and_k_equals_the_recorded_one(gpvit):
    model, images, maps = gpvit
    with torch.no_grad(), capture(model) as cached:
        model(images)
    for block, (grouping, ungrouping) in gp_sites(cached).items():
        recorded = gp_sites(maps)[block]
        torch.testing.assert_close(
            effective_attention_at(grouping, ungrouping, 2, 3, sample=1),
            effective_attention_at(*recorded, 2, 3, sample=1),
            atol=1e-6,
            rtol=1e-5,
        )


def test_hard_assignments_follow_the_argmax_and_partition_the_pixels(gpvit):
    _, _, maps = gpvit
    for grouping, _ in gp_sites(maps).values():
        groups = grouping.probs.shape[2]
        assignment = group_assignment(grouping)
        assert assignment.shape == (2, 6, 8)
        torch.testing.assert_close(assignment, grouping.probs.mean(1).argmax(1).reshape(2, 6, 8))
        pixels = assignment_on_input(assignment, grouping)
        assert pixels.shape == (2, 44, 60) and pixels.dtype == torch.int64
        one_hot = nn.functional.one_hot(pixels, groups)
        assert (one_hot.sum(-1) == 1).all()  # every pixel in exactly one group
        assert pixels[0, 43, 59] == assignment[0, 5, 7]  # the overhanging corner token, cropped
        soft = soft_group_maps(grouping, over="groups")
        torch.testing.assert_close(soft.sum(1), torch.ones(2, 6, 8))
        assert (soft.argmax(1) == assignment).all()
        torch.testing.assert_close(soft_group_maps(grouping).flatten(2).sum(-1), torch.ones(2, groups))


def test_assignments_of_every_gp_block_on_the_input(gpvit):
    _, _, maps = gpvit
    assignments = gp_assignments(maps)
    assert list(assignments) == ["blocks.1", "blocks.3"]
    assert all(a.shape == (2, 44, 60) for a in assignments.values())
    assert assignments["blocks.3"].max() < 4
    with pytest.raises(ValueError, match="no GP blocks"):
        gp_blocks(tiny_setr("setr_naive_vit_base"))


def test_a_planted_grouping_is_recovered():
    planted = torch.tensor([[0, 0, 1], [2, 2, 1]])
    probs = torch.full((1, 2, 3, 6), 0.1)
    probs[0, :, planted.flatten(), torch.arange(6)] = 0.9
    grouping = AttentionMap(probs, GroupingLayout((2, 3)), TokenGrid(2, 3, 8, (16, 24)))
    assert (group_assignment(grouping)[0] == planted).all()


def test_purity_and_nmi():
    assignment = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 3]])
    assert group_purity(assignment, assignment) == 1.0
    assert normalized_mutual_information(assignment, assignment) == pytest.approx(1.0)
    relabelled = (assignment + 7) % 5  # the same partition, other class ids
    assert group_purity(assignment, relabelled) == 1.0
    assert normalized_mutual_information(relabelled, assignment) == pytest.approx(1.0)

    groups, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    assert group_purity(groups, labels) == pytest.approx(3 / 4)
    ignored = torch.tensor([255, 1, 1, 1])  # the ignored pixel neither counts nor votes
    assert group_purity(groups, ignored) == 1.0
    # NMI by hand: joint [[1/4, 1/4], [0, 1/2]]
    joint = np.array([[0.25, 0.25], [0.0, 0.5]])
    pg, pl = joint.sum(1), joint.sum(0)
    mutual = sum(
        joint[i, j] * np.log(joint[i, j] / (pg[i] * pl[j])) for i in range(2) for j in range(2) if joint[i, j]
    )
    entropy = lambda p: -(p * np.log(p)).sum()  # noqa: E731
    assert normalized_mutual_information(groups, labels) == pytest.approx(
        mutual / ((entropy(pg) + entropy(pl)) / 2)
    )
    assert normalized_mutual_information(
        torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    ) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="one shape"):
        group_purity(groups, labels[:3])
    with pytest.raises(ValueError, match="ignored"):
        group_purity(groups, torch.full((4,), 255))


def test_token_mixing_is_the_mean_jacobian_of_the_mixer_at_the_groups(gpvit):
    model, images, _ = gpvit
    inputs = propagation_inputs(model, images)
    block = model.backbone.blocks[1]
    mlp = block.propagation.token_mlp
    torch.testing.assert_close(token_mixing(block), mlp.fc2.weight @ mlp.fc1.weight)
    groups = inputs["blocks.1"]
    assert groups.shape == (2, 8, 24)
    columns = block.propagation.norm1(groups).transpose(1, 2).reshape(-1, 8)  # every channel's G-vector
    jacobians = torch.func.vmap(torch.func.jacrev(mlp))(columns)  # (channels, G, G)
    torch.testing.assert_close(token_mixing(block, groups), jacobians.mean(0), atol=1e-6, rtol=1e-4)
    per_block = mixing_matrices(model, images)
    shapes = {name: matrix.shape for name, matrix in per_block.items()}
    assert shapes == {"blocks.1": (8, 8), "blocks.3": (4, 4)}
    torch.testing.assert_close(per_block["blocks.1"], token_mixing(block, groups))


# --------------------------------------------------------------------------- effective receptive field


class _ConvSegmentor(nn.Module):
    """A 3x3 convolution: logit (y, x) reads only pixels within one of (y, x)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, images):
        return self.conv(images)


def test_effective_receptive_field_is_zero_outside_what_the_logit_reads():
    torch.manual_seed(0)
    field = effective_receptive_field(_ConvSegmentor(), torch.randn(2, 3, 9, 11), target_class=1)
    assert field.shape == (9, 11) and field.max() == 1
    reads = torch.zeros(9, 11, dtype=torch.bool)
    reads[3:6, 4:7] = True  # around the centre (4, 5)
    assert (field[~reads] == 0).all() and (field[reads] > 0).all()


@pytest.mark.parametrize(
    "build, size",
    [(lambda: tiny_gpvit_segmentor("segformer"), (44, 60)), (tiny_setr_hlg, (32, 32))],
    ids=["gpvit", "hlg"],
)
def test_effective_receptive_field_works_for_every_family(build, size):
    torch.manual_seed(0)
    field = effective_receptive_field(build().eval(), torch.randn(1, 3, *size), target_class=0)
    assert field.shape == size and torch.isfinite(field).all() and field.max() == 1


def test_effective_receptive_field_of_a_vit_covers_the_image(setr):
    model, images, _, _ = setr
    field = effective_receptive_field(model, images)
    assert field.shape == (48, 64) and field.max() == 1
    assert (field > 0).float().mean() > 0.9  # global attention: every pixel reaches the centre
    assert all(parameter.grad is None for parameter in model.parameters())


# --------------------------------------------------------------------------- the Predictor


def test_predictor_answers_group_queries_on_the_image(gpvit):
    model, _, _ = gpvit
    predictor = Predictor(model, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (44, 60, 3), dtype=np.uint8)
    predictor.set_image(image)
    assignment = predictor.group_assignment("blocks.1")
    assert assignment.shape == (44, 60) and assignment.dtype == torch.int64
    assert assignment.min() >= 0 and assignment.max() < 8
    torch.testing.assert_close(predictor.group_assignment(0), assignment)
    looks = predictor.effective_attention_at(43, 59, block=1)  # the overhanging corner pixel
    assert looks.shape == (44, 60)
    cached = predictor.session.cached
    expected = effective_attention_at(cached["blocks.3.grouping"], cached["blocks.3.ungrouping"], 5, 7)
    torch.testing.assert_close(looks[::8, ::8], expected)  # one pixel per 8x8 token
    with pytest.raises(ValueError, match="unknown GP block"):
        predictor.group_assignment("blocks.0")


def test_predictor_rollout_of_a_pixel_is_its_tokens_rollout(setr):
    model, _, _, _ = setr
    predictor = Predictor(model, device="cpu")
    predictor.set_image(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    looks = predictor.rollout_at(20, 40)  # token (1, 2)
    assert looks.shape == (48, 64)
    expected = rollout_at(predictor.session.cached, 1, 2)
    torch.testing.assert_close(looks[::16, ::16], expected)
    without = predictor.rollout_at(20, 40, class_token=False)
    torch.testing.assert_close(without[::16, ::16].sum(), torch.tensor(1.0))
