"""Any timm ViT, explained: tiny random instances of every supported family, built from timm's own
classes (no downloads), through the probes, the pixel <-> token rule, the ViT predictor and timm's
checkpoint layout."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import timm
import torch
from torch.testing import assert_close

from workbench.inference import ViTPredictor, load_vit_predictor
from workbench.models.any_vit import FAMILIES, ExplainedViT
from workbench.models.explain import EXPLICIT_ATOL, EXPLICIT_RTOL
from workbench.viz.features import pca_rgb, principal_components
from workbench.viz.record import capture, record

SUPPORTED = [family for family in FAMILIES if family.supported]
TINY = dict(depth=2, embed_dim=32, num_heads=2)


def tiny_vit(example: str, **extra) -> torch.nn.Module:
    """A two-block, 32-wide instance of ``example``'s architecture at four patches a side."""
    patch = 14 if "patch14" in example else 16
    options = dict(TINY, img_size=4 * patch, **extra)
    try:
        vit = timm.create_model(example, pretrained=False, dynamic_img_size=True, **options)
    except TypeError:  # BEiT takes its own size only
        vit = timm.create_model(example, pretrained=False, **options)
    return vit.eval()


def _input(model: ExplainedViT, generator_seed: int = 0) -> torch.Tensor:
    """A non-square input (4 x 3 patches) where the model takes any size; its own size otherwise."""
    p = model.patch_size
    size = (4 * p, 3 * p) if model.dynamic_img_size else model.fixed_input_size
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(generator_seed))


@pytest.fixture(scope="module", params=SUPPORTED, ids=lambda family: family.example)
def explained(request) -> ExplainedViT:
    return ExplainedViT(tiny_vit(request.param.example))


def test_recorded_attention_is_the_forward_path(explained):
    images = _input(explained)
    with torch.no_grad():
        fast = explained(images)
        with record(explained) as recording:
            probed = explained(images)
    assert_close(probed, fast, atol=EXPLICIT_ATOL, rtol=EXPLICIT_RTOL)
    assert list(recording.attention) == [f"blocks.{i}" for i in range(len(explained.vit.blocks))]
    rows, cols = (images.shape[-2] // explained.patch_size, images.shape[-1] // explained.patch_size)
    tokens = explained.num_prefix_tokens + rows * cols
    for attention in recording.attention.values():
        assert attention.probs.shape == (2, 2, tokens, tokens)
        assert attention.layout.grid == (rows, cols)
        assert_close(attention.probs.sum(-1), torch.ones(2, 2, tokens))


def test_click_rows_equal_the_full_maps_rows(explained):
    images = _input(explained, 1)
    with torch.no_grad():
        with record(explained) as recording:
            explained(images)
        with capture(explained) as cached:
            explained(images)
    rows, cols = recording.attention["blocks.1"].grid
    for name, full in recording.attention.items():
        for row, col in ((0, 0), (rows - 1, cols - 1), (1, cols // 2)):
            clicked = cached[name].query_map(row, col, sample=1)  # (heads, rows, cols): grid keys only
            assert clicked.shape == (2, rows, cols)
            assert_close(clicked, full.query_map(row, col)[1], atol=1e-6, rtol=1e-5)


def test_prefix_tokens_are_off_the_spatial_maps():
    """Registers (and the class token) are keys the grid's maps leave out: a click's map over the grid
    plus its weight on the prefix tokens is the whole row."""
    model = ExplainedViT(tiny_vit("vit_small_patch14_reg4_dinov2"))
    assert model.num_prefix_tokens == 5  # class token + 4 registers
    images = _input(model)
    with torch.no_grad(), record(model) as recording:
        model(images)
    attention = recording.attention["blocks.0"]
    clicked = attention.query_map(2, 1)[0]  # (heads, rows, cols)
    position = 5 + 2 * attention.grid[1] + 1
    prefix_weight = attention.probs[0, :, position, :5].sum(-1)
    assert_close(clicked.sum((-2, -1)) + prefix_weight, torch.ones(2))
    # The class token's maps are its row over the grid, registers and itself left out.
    with torch.no_grad(), capture(model) as cached:
        model(images)
    class_maps = cached["blocks.0"].prefix_map(0, sample=0)
    assert_close(class_maps, attention.probs[0, :, 0, 5:].reshape(2, *attention.grid), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="prefix token 5 does not exist"):
        cached["blocks.0"].prefix_map(5)


def test_another_threads_forward_runs_timms_own_code():
    """A recording belongs to its context: a forward of the same model in another thread during it
    is neither probed nor slowed onto the explicit path (its output is the plain forward's, bit for bit)."""
    model = ExplainedViT(tiny_vit("vit_small_patch16_224.dino"))
    images = _input(model)
    with torch.no_grad():
        plain = model.vit.forward_features(images)
        outputs = []
        with record(model) as recording:
            worker = threading.Thread(target=lambda: outputs.append(model.vit.forward_features(images)))
            worker.start()
            worker.join()
            model(images)
    assert torch.equal(outputs[0], plain)
    assert len(recording.forwards) == 1


def test_refusals_name_what_is_expected():
    with pytest.raises(ValueError, match="not a plain timm ViT"):
        ExplainedViT(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(1, 1, 1, 1)))
    vit = tiny_vit("vit_small_patch16_224.dino")
    vit.blocks[1].attn.fused_attn = False
    with pytest.raises(ValueError, match=r"blocks \[1\] runs without scaled_dot_product_attention"):
        ExplainedViT(vit)


@pytest.mark.parametrize("family", SUPPORTED, ids=lambda family: family.example)
def test_every_family_answers_in_the_predictor_and_the_explorer(family):
    """A 375x500 photo through the ViT predictor and the attention explorer, for every family."""
    from workbench.viz.explorers import AttentionExplorer

    vit = tiny_vit(family.example)
    predictor = ViTPredictor(vit, size=4 * vit.patch_embed.patch_size[0])
    image = (np.random.default_rng(0).random((375, 500, 3)) * 255).astype(np.uint8)
    session = predictor.open(image)
    if predictor.model.dynamic_img_size:
        assert session.view.size[0] < session.view.size[1]  # the photo's aspect kept
    assert predictor.model.vit is vit  # used as given
    assert session.attention_at(100, 400, "blocks.1").shape == (375, 500)
    assert session.rollout_at(10, 10).shape == (375, 500)
    assert session.pca_rgb().shape == (375, 500, 3) and session.pca_rgb().dtype == np.uint8
    assert set(session.attention_distances()) == {"blocks.0", "blocks.1"}
    if predictor.model.num_prefix_tokens:
        # Class-token maps painted with the click rule: each pixel shows its token's value.
        assert session.class_attention().shape == (2, 375, 500)
        grid_maps = session.cached["blocks.1"].prefix_map(0)
        token = session._token(session.cached["blocks.1"], 374, 499)
        assert_close(session.class_attention()[:, 374, 499], grid_maps[:, token[0], token[1]])
    else:
        with pytest.raises(ValueError, match="prefix token 0 does not exist"):
            session.class_attention()
    explorer = AttentionExplorer(predictor, image)
    assert list(explorer.sites) == ["blocks.0", "blocks.1"] and not explorer.rollout.disabled
    assert_close(explorer.click(30, 70), predictor.session.attention_at(30, 70, "blocks.0"))


def test_relevance_needs_a_classifier_and_class_token():
    with_head = ViTPredictor(tiny_vit("vit_small_patch16_224.dino", num_classes=10), size=64)
    session = with_head.open(np.zeros((64, 96, 3), np.uint8) + 100)
    relevance = session.relevance()
    assert relevance.shape == (64, 96) and torch.isfinite(relevance).all() and (relevance >= 0).all()
    assert len(session.prediction.top) == 5
    backbone = ViTPredictor(tiny_vit("vit_small_patch16_224.dino"), size=64)
    with pytest.raises(ValueError, match="needs a class token and a classifier"):
        backbone.open(np.zeros((64, 64, 3), np.uint8)).relevance()


def test_timm_save_checkpoint_layout_round_trips(tmp_path):
    from timm.utils import CheckpointSaver

    kwargs = dict(TINY, img_size=56)
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, **kwargs)
    optimizer = torch.optim.SGD(vit.parameters(), lr=0.1)
    saver = CheckpointSaver(vit, optimizer, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=1.0)
    loaded = load_vit_predictor("vit_small_patch14_reg4_dinov2", tmp_path / "checkpoint-0.pth.tar", **kwargs)
    assert loaded.note == "" and loaded.model.dynamic_img_size
    for (name, value), mine in zip(
        vit.state_dict().items(), loaded.model.vit.state_dict().values(), strict=True
    ):
        assert torch.equal(value, mine), name
    random = load_vit_predictor("vit_small_patch14_reg4_dinov2", **kwargs)
    assert "random weights" in random.note
    with pytest.raises(ValueError, match="could not build vit_small_patch16_224 from"):
        load_vit_predictor("vit_small_patch16_224", tmp_path / "checkpoint-0.pth.tar", **kwargs)
    with pytest.raises(ValueError, match="unknown timm model"):
        load_vit_predictor("not_a_vit")


def test_pca_is_the_principal_components():
    """Two clusters of patch features: the first component separates them, and the foreground
    threshold keeps exactly one cluster; projections equal numpy's SVD up to sign."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, 6, 8, generator=generator) * 0.1
    features[:, :3] += torch.linspace(1, 2, 16)[:, None, None]  # rows 0-2: one cluster
    tokens = features.reshape(16, -1).T
    projected = principal_components(tokens, 3)
    centred = (tokens - tokens.mean(0)).numpy()
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = torch.from_numpy(centred @ vt[:3].T)
    assert_close(projected.abs(), reference.abs(), atol=1e-4, rtol=1e-4)
    colours, foreground = pca_rgb(features, foreground=0.5)
    assert foreground[:3].all() != foreground[3:].any()  # one cluster kept, the other dropped
    assert (colours[~foreground] == 0).all() and colours.max() == 1


def test_a_vit_on_another_device_answers_on_the_callers_side():
    """The predictor reads the model's device and moves nothing; every answer comes back to the CPU."""
    from .elsewhere import ELSEWHERE, Elsewhere, is_elsewhere

    vit = tiny_vit("vit_small_patch14_reg4_dinov2", num_classes=4)
    photo = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    with Elsewhere() as elsewhere:
        vit.to(ELSEWHERE)
        predictor = ViTPredictor(vit, size=56)
        session = predictor.open(photo)
        answers = [
            session.class_attention(),
            session.attention_at(40, 60, "blocks.1"),
            session.rollout_at(40, 60),
            session.relevance(),
            *session.attention_distances().values(),
        ]
        pca = session.pca_rgb(foreground=0.2)
    assert not elsewhere.mixes
    assert pca.shape == (90, 120, 3)
    for answer in answers:
        assert not is_elsewhere(answer) and answer.device.type == "cpu" and torch.isfinite(answer).all()
