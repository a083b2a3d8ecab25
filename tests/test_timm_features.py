"""timm's feature-extraction contract for every registered classifier, on its tiny settings, and the
segmentors' (their encoder's features).

``timm.create_model(name, features_only=True, out_indices=...)`` returns the maps ``feature_info``
describes; ``forward_intermediates`` keeps timm's semantics (indices as None / last n / list, ``norm``,
``stop_early``, ``intermediates_only``); ``prune_intermediate_layers`` keeps the maps of the indices it
keeps. GPViT's features are its layers at stride 8; HLG's its four stages at strides 4 to 32.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.models._features import feature_take_indices
from torch.testing import assert_close

from workbench.models import list_models, model_info

from .tiny import tiny

CLASSIFIERS = list_models(task="classification")
SIZE = 64


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _map_shapes(feature_info: list[dict], indices: list[int]) -> list[tuple[int, ...]]:
    """The (B, C, H, W) each feature of ``indices`` should have for a batch of two 64-px images."""
    return [
        (2, feature_info[i]["num_chs"], *(math.ceil(SIZE / feature_info[i]["reduction"]),) * 2)
        for i in indices
    ]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_features_only_returns_the_maps_feature_info_describes(name, images):
    info = model_info(name)
    classifier = tiny(name).eval()
    for out_indices in (None, (0, -1)):
        extra = {} if out_indices is None else {"out_indices": out_indices}
        features = timm.create_model(name, features_only=True, **info.tiny, **extra).eval()
        expected, _ = feature_take_indices(len(classifier.feature_info), out_indices or info.feature_indices)
        assert features.feature_info.out_indices == tuple(expected)
        channels, reductions = features.feature_info.channels(), features.feature_info.reduction()
        assert channels == [classifier.feature_info[i]["num_chs"] for i in expected]
        assert reductions == [classifier.feature_info[i]["reduction"] for i in expected]
        # The pruned extractor gives the full classifier's maps, with the classifier's weights.
        assert not features.model.load_state_dict(classifier.state_dict(), strict=False).missing_keys
        with torch.no_grad():
            maps = features(images)
            reference = classifier.forward_intermediates(images, indices=expected, intermediates_only=True)
        assert [tuple(m.shape) for m in maps] == _map_shapes(classifier.feature_info, expected)
        assert_close(maps, reference, rtol=0, atol=0)
    assert "num_classes" not in features.pretrained_cfg  # timm's features-only cfg


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_intermediates_selections_agree(name, images):
    model = tiny(name).eval()
    count = len(model.feature_info)
    with torch.no_grad():
        final, every = model.forward_intermediates(images)
        assert [tuple(m.shape) for m in every] == _map_shapes(model.feature_info, list(range(count)))
        assert_close(model.forward_intermediates(images, indices=2, intermediates_only=True), every[-2:])
        assert_close(
            model.forward_intermediates(images, indices=[0, -1], intermediates_only=True),
            [every[0], every[-1]],
        )
        _, early = model.forward_intermediates(images, indices=[1], stop_early=True)
        assert_close(early, [every[1]])

        # With norm, the final features are forward_features' and the last map is their map.
        features = model.forward_features(images)
        final_normed, normed = model.forward_intermediates(images, norm=True)
        assert_close(final, features)
        assert_close(final_normed, features)
        assert_close(model.forward_head(final), model(images))
        last_map = features if features.ndim == 4 else features.transpose(1, 2).reshape(normed[-1].shape)
        assert_close(normed[-1], last_map)
        assert not torch.allclose(every[-1], normed[-1])  # norm does something to the last map


def test_norm_of_earlier_maps_follows_timm_vit_and_swin(images):
    """GPViT (non-hierarchical, as timm's ViT): norm applies the final norm to every map. HLG (as Swin):
    only to the last stage's; stages 1-3 end in their own norm, which the next stage reads anyway."""
    gpvit, hlg = tiny("gpvit_l1").eval(), tiny("hlg_tiny").eval()
    with torch.no_grad():
        raw, normed = (
            gpvit.forward_intermediates(images, norm=n, intermediates_only=True) for n in (False, True)
        )
        tokens = [m.flatten(2).transpose(1, 2) for m in raw]
        assert_close([t.flatten(2).transpose(1, 2) for t in normed], [gpvit.norm(t) for t in tokens])
        raw, normed = (
            hlg.forward_intermediates(images, norm=n, intermediates_only=True) for n in (False, True)
        )
        assert_close(normed[:-1], raw[:-1])
        assert_close(normed, hlg.forward_dense(images))


def test_gpvit_tokens_out_and_refused_formats(images):
    gpvit = tiny("gpvit_l1").eval()
    with torch.no_grad():
        maps = gpvit.forward_intermediates(images, intermediates_only=True)
        tokens = gpvit.forward_intermediates(images, output_fmt="NLC", intermediates_only=True)
    assert_close(tokens, [m.flatten(2).transpose(1, 2) for m in maps])
    for name in ("gpvit_l1", "hlg_tiny"):
        with pytest.raises(ValueError, match="output_fmt"):
            tiny(name).forward_intermediates(images, output_fmt="NHWC")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_pruning_keeps_the_kept_maps(name, images):
    model = tiny(name).eval()
    with torch.no_grad():
        before = model.forward_intermediates(images, indices=[0, -2], intermediates_only=True)
        before_normed = model.forward_intermediates(
            images, indices=[0, -2], norm=True, intermediates_only=True
        )
        kept = model.prune_intermediate_layers([0, -2])
        assert kept == [0, len(model.feature_info) - 2]
        assert len(getattr(model, "blocks", getattr(model, "stages", None))) == kept[-1] + 1
        assert model.num_classes == 0 and isinstance(model.head, torch.nn.Identity)
        assert_close(model.forward_intermediates(images, indices=kept, intermediates_only=True), before)
        assert_close(
            model.forward_intermediates(images, indices=kept, norm=True, intermediates_only=True),
            before_normed,
        )


@pytest.mark.parametrize("name", ["gpvit_l1", "hlg_tiny"])
def test_pruning_the_norm_leaves_the_last_map_raw(name, images):
    model = tiny(name).eval()
    with torch.no_grad():
        raw = model.forward_intermediates(images, indices=1, intermediates_only=True)
        model.prune_intermediate_layers(1, prune_norm=True)
        assert_close(model.forward_intermediates(images, indices=1, norm=True, intermediates_only=True), raw)


@pytest.mark.parametrize(
    ("name", "reductions"),
    [
        ("setr_mla_vit_base", [16, 16, 16]),
        ("gpvit_l1_upernet", [8, 8, 8]),
        ("setr_hlg_small", [4, 8, 16, 32]),
    ],
)
def test_segmentors_extract_their_encoders_features(name, reductions, images):
    """A segmentor's features are its encoder's: SETR's blocks, GPViT's layers, HLG's stages."""
    features = timm.create_model(name, features_only=True, **model_info(name).tiny).eval()
    segmentor = tiny(name).eval()
    assert features.feature_info.reduction() == reductions
    assert features.feature_info.module_name()[0].startswith("backbone.")
    assert not features.model.load_state_dict(segmentor.state_dict(), strict=False).missing_keys
    indices = list(features.feature_info.out_indices)
    with torch.no_grad():
        reference = segmentor.backbone.forward_intermediates(images, indices=indices, intermediates_only=True)
        assert_close(features(images), reference, rtol=0, atol=0)
