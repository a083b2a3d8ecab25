"""timm's own expectations (its tests/test_models.py) over every registered model, on its tiny settings.

A complete ``pretrained_cfg`` whose ``first_conv`` and ``classifier`` name real modules; the classifier
methods timm's cfg test drives (``forward_head(pre_logits=True)``, ``reset_classifier``,
``num_classes=0``, ``global_pool=""``); ``features_only=True`` for every model, segmentors included,
with ``feature_info`` describing the maps; ``forward_intermediates`` selections that agree; pruning
that keeps the kept maps; and ``pretrained=True``: one-line refusals naming the file when it cannot be
had, a download from a server on 127.0.0.1, and ``pretrained_cfg_overlay=dict(file=...)``.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.models._features import feature_take_indices
from torch import nn
from torch.testing import assert_close

from workbench.interop import CATALOGUE, Release
from workbench.interop.release_file import save_release_file
from workbench.models import list_models, model_info, registry

from .test_interop import _Server
from .tiny import tiny

MODELS = list_models()
CLASSIFIERS = list_models(task="classification")
SEGMENTORS = list_models(task="segmentation")
SIZE = 64
LICENSES = {"SETR": "mit", "HLG": "mit", "GPViT": "apache-2.0"}  # the official repositories' LICENSE
PAPERS = {"SETR": "arXiv:2012.15840", "HLG": "arXiv:2207.09339", "GPViT": "arXiv:2212.06795"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _map_shape(info: dict) -> tuple[int, ...]:
    return (2, info["num_chs"], *(math.ceil(SIZE / info["reduction"]),) * 2)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_is_complete_and_names_real_modules(name):
    info = model_info(name)
    cfg = info.pretrained_cfg
    assert timm.models.get_pretrained_cfg(name).to_dict() == {**timm.models.PretrainedCfg().to_dict(), **cfg}
    assert len(cfg["input_size"]) == 3 and all(isinstance(side, int) for side in cfg["input_size"])
    assert cfg["input_size"][1:] == (info.paper.input_size,) * 2
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["fixed_input_size"] is False
    classifier = info.task == "classification"
    assert cfg["crop_pct"] == (0.875 if classifier else 1.0) and cfg["crop_mode"] == "center"
    assert cfg["interpolation"] == ("bicubic" if classifier else "bilinear")
    assert cfg["license"] == LICENSES[info.family] and cfg["paper_ids"] == PAPERS[info.family]
    assert cfg["paper_name"] and cfg["origin_url"].startswith("https://github.com/")
    assert ("pool_size" in cfg) == classifier

    # timm adapts in_chans at first_conv and num_classes at classifier: both must be those layers.
    model = tiny(name, num_classes=7, in_chans=1)
    assert model.pretrained_cfg == cfg
    modules = dict(model.named_modules())
    first_conv, head = modules[cfg["first_conv"]], modules[cfg["classifier"]]
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == 1
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 7


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_heads_reset_as_timm_expects(name, images):
    model = tiny(name).eval()
    pool = tuple(
        side * SIZE // model.pretrained_cfg["input_size"][1] for side in model.pretrained_cfg["pool_size"]
    )
    with torch.no_grad():
        features = model.forward_features(images)
        pre_logits = model.forward_head(features, pre_logits=True)
        if features.ndim == 4:  # HLG: a map (B, C, h, w)
            assert features.shape[1:] == (model.num_features, *pool)
        else:  # GPViT: tokens (B, h * w, C), as timm's ViT
            assert features.shape[1:] == (pool[0] * pool[1], model.num_features)
        assert pre_logits.shape == (2, model.head_hidden_size)
        assert model.get_classifier() is model.head

        model.reset_classifier(0)
        assert model.num_classes == 0 and model(images).shape == pre_logits.shape
        model.reset_classifier(3)
        assert model(images).shape == (2, 3) and model.get_classifier().out_features == 3
        model.reset_classifier(0, "")
        assert_close(model(images), features)  # unpooled, as the features
        assert tiny(name, num_classes=0).eval()(images).shape == (2, model.num_features)
        assert tiny(name, num_classes=0, global_pool="").eval()(images).shape == features.shape
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "max")


@pytest.mark.parametrize("name", MODELS)
def test_features_only_for_every_model(name, images):
    info = model_info(name)
    full = tiny(name).eval()
    features = timm.create_model(name, features_only=True, **info.tiny).eval()
    expected, _ = feature_take_indices(len(full.feature_info), info.feature_indices)
    assert features.feature_info.out_indices == tuple(expected)
    assert features.feature_info.channels() == [full.feature_info[i]["num_chs"] for i in expected]
    assert features.feature_info.reduction() == [full.feature_info[i]["reduction"] for i in expected]
    modules = dict(full.named_modules())
    assert all(full.feature_info[i]["module"] in modules for i in expected)
    assert "num_classes" not in features.pretrained_cfg
    assert not features.model.load_state_dict(full.state_dict(), strict=False).missing_keys
    with torch.no_grad():
        maps = features(images)
        reference = full.forward_intermediates(images, indices=expected, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [_map_shape(full.feature_info[i]) for i in expected]
    assert_close(maps, reference, rtol=0, atol=0)


@pytest.mark.parametrize("name", SEGMENTORS)
def test_segmentor_intermediates_are_the_backbones(name, images):
    model = tiny(name).eval()
    count = len(model.feature_info)
    assert count >= 3 and model.feature_info[0]["module"].startswith("backbone.")
    with torch.no_grad():
        final, every = model.forward_intermediates(images)
        assert [tuple(m.shape) for m in every] == [_map_shape(info) for info in model.feature_info]
        backbone_final, backbone_every = model.backbone.forward_intermediates(images)
        assert_close((final, every), (backbone_final, backbone_every))
        assert_close(model.forward_intermediates(images, indices=2, intermediates_only=True), every[-2:])
        assert_close(
            model.forward_intermediates(images, indices=[0, -1], intermediates_only=True),
            [every[0], every[-1]],
        )
        assert_close(model.forward_intermediates(images, indices=[1], stop_early=True)[1], [every[1]])
        normed = model.forward_intermediates(images, norm=True, intermediates_only=True)
        assert [m.shape for m in normed] == [m.shape for m in every]
        with pytest.raises(ValueError, match=r"^expected 3 input channels, got 1"):  # the segmentor's check
            model.forward_intermediates(images[:, :1])

        logits = model(images)
        kept = model.prune_intermediate_layers([0, -2])
        assert kept == [0, count - 2] and len(model.feature_info) == count  # the description stays
        assert model.num_classes == 0 and model.neck is None and not len(model.aux_heads)
        assert_close(
            model.forward_intermediates(images, indices=kept, intermediates_only=True), [every[0], every[-2]]
        )
    assert logits.shape == (2, 5, SIZE, SIZE)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty download cache, and every catalogue link pointing at a closed port on this machine."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    for key, release in CATALOGUE.items():
        if release.url is not None:
            file_name = release.url.rsplit("/", 1)[-1]
            monkeypatch.setitem(
                CATALOGUE, key, Release(f"http://127.0.0.1:9/{file_name}", release.model, release.format)
            )


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_refusals_are_one_line_naming_the_file(name, offline):
    releases = {key: r for key, r in CATALOGUE.items() if r.model == name}
    with pytest.raises(ValueError) as refusal:
        timm.create_model(name, pretrained=True, **model_info(name).tiny)
    message = str(refusal.value)
    assert "\n" not in message and message.startswith(f"{name}: pretrained=True")
    direct = [r for key, r in releases.items() if r.url and key.endswith(("in1k", "ade20k", "cityscapes"))]
    if direct:  # the file, where it is, why it failed, what to do
        file_name = direct[0].url.rsplit("/", 1)[-1]
        assert f"needs {file_name} from {direct[0].url}; it could not be downloaded (" in message
        assert f"pretrained_cfg_overlay=dict(file='/path/to/{file_name}')" in message
    elif releases:  # a Google Drive release, or only releases for another setting
        assert any(key in message for key in releases) and "pretrained_cfg_overlay=dict(file=PATH)" in message
    else:
        assert f"no weights are published for {name}" in message


def test_a_tag_picks_a_release_and_the_loader_must_be_installed(offline, monkeypatch):
    with pytest.raises(
        ValueError, match=r"needs jx_vit_base_p16_384-83fb41ba\.pth from http://127\.0\.0\.1:9/"
    ):
        timm.create_model("setr_pup_vit_base.jx_vit_base_p16_384", pretrained=True)
    with pytest.raises(
        ValueError,
        match=r"no release 'in21k' is published for gpvit_l1; the ones that fit it: gpvit_l1_in1k \(",
    ):
        timm.create_model("gpvit_l1.in21k", pretrained=True)
    monkeypatch.setattr(registry, "_PRETRAINED_LOADER", [])
    with pytest.raises(
        RuntimeError, match=r"^hlg_tiny: pretrained=True needs workbench\.interop, .* import workbench"
    ):
        timm.create_model("hlg_tiny", pretrained=True)


def _weights_equal(model: nn.Module, source: nn.Module) -> None:
    assert_close(model.state_dict(), source.state_dict(), rtol=0, atol=0)


def test_pretrained_downloads_the_catalogue_file_from_a_local_server(tmp_path, monkeypatch, images):
    source = tiny("gpvit_l1").eval()
    served = tmp_path / "served"
    save_release_file(source, "gpvit", served / "gpvit_l1_in1k_300e.pth")
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    server = _Server(served)
    try:
        monkeypatch.setitem(
            CATALOGUE, "gpvit_l1_in1k", Release(f"{server.url}/gpvit_l1_in1k_300e.pth", "gpvit_l1", "gpvit")
        )
        _weights_equal(tiny("gpvit_l1", pretrained=True), source)
        features = timm.create_model(
            "gpvit_l1", pretrained=True, features_only=True, **model_info("gpvit_l1").tiny
        )
        with torch.no_grad():
            assert_close(
                features.eval()(images),
                source.forward_intermediates(images, indices=3, intermediates_only=True),
            )
        assert server.requests == 1  # the second build read the cache
    finally:
        server.close()


def test_pretrained_cfg_overlay_file_loads_a_local_checkpoint(tmp_path):
    source = tiny("hlg_tiny")  # HLG's release has no direct link: the overlay is how to load it
    path = save_release_file(source, "hlg", tmp_path / "hlg_tiny_in1k.pth")
    model = tiny("hlg_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _weights_equal(model, source)
    assert model.pretrained_cfg["file"] == str(path)

    segmentor = tiny("setr_hlg_small")
    torch.save(segmentor.state_dict(), tmp_path / "setr_hlg_small.pth")
    loaded = tiny(
        "setr_hlg_small",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "setr_hlg_small.pth")),
    )
    _weights_equal(loaded, segmentor)
