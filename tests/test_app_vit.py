"""The app on a timm plain ViT, without a server: the features' PCA as the main picture, the top five of
a classifier, clicks equal to the session's (registers and class token left out of the maps), the
class token's maps, relevance in place of region attribution, the label-map refusal, the store's key
round trip, the load box's refusals and the command line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from apps.handlers import Workbench
from apps.serve import LOCAL, load_folders, parse_args, timm_options, workbench_from_args
from apps.settings import MEAN, Settings
from apps.store import LOADING_OFF, REFUSED, TIMM_RANDOM_FROM_PAGE, parse_timm_key, timm_key
from apps.vit_handlers import NO_LABELS, RANDOM_NOTICE, class_attention
from workbench.cache import cache_dir

pytestmark = pytest.mark.timeout(300)

DINOV2_REG = "vit_small_patch14_reg4_dinov2"  # a class token and four registers
TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 56, "size": 56}
PREFIX = 5


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def dinov2():
    return Workbench(Settings(precision="fp32"), "", f"timm:{DINOV2_REG}", timm_options=TINY)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """test_vit's (timm's 0.4 M-parameter ViT with an ImageNet head) random weights as a plain file."""
    folder = tmp_path_factory.mktemp("allowed")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit").state_dict(), folder / "test_vit.pth")
    return folder / "test_vit.pth"


@pytest.fixture(scope="module")
def classifier(weights):
    return Workbench(
        Settings(precision="fp32", allow_load=(str(weights.parent),)), str(weights), "timm:test_vit"
    )


def test_segment_shows_the_features_pca_and_the_attention_choices(dinov2, photo):
    key = dinov2.default.key
    view = dinov2.segment(key, photo, 1.0, 0.3)
    session = dinov2.sessions.get(dinov2.default, photo).session
    assert view.vit and view.class_token and not view.detects and view.can_roll
    assert np.array_equal(view.picture, session.pca_rgb())  # opacity 1: the DINOv2 figure itself
    assert view.areas is None  # a backbone: no classifier, no table
    assert view.sites == ["blocks.0", "blocks.1"] and view.heads == [MEAN, "0", "1"]
    assert view.notice.startswith("120x90 pixels — PCA of the 4x5 patch features")
    half = dinov2.segment(key, photo, 0.5, 0.3, foreground=0.5).picture
    assert (session.pca_rgb(0.5) == 0).all(-1).any()  # background patches black...
    assert not np.array_equal(half, view.picture)  # ...and the threshold reaches the picture


def test_a_click_is_the_sessions_attention_with_the_prefix_tokens_left_out(dinov2, photo):
    key, (y, x) = dinov2.default.key, (40, 70)
    session = dinov2.sessions.get(dinov2.default, photo).session
    answer = dinov2.attention(key, photo, y, x, "blocks.1", "1")
    assert torch.equal(answer, session.attention_at(y, x, "blocks.1", 1))
    site = session.cached["blocks.1"]
    row_index, col_index = site.tokens.token_at(*session.view.from_image(y, x, session.size))
    token = PREFIX + row_index * site.layout.grid[1] + col_index
    row = ((site.q[0, 1, token] @ site.k[0, 1].T) * site.q.shape[-1] ** -0.5).softmax(-1)
    assert row[:PREFIX].sum() > 0.01  # the class token and registers take weight the map leaves out
    assert np.allclose(np.unique(answer.numpy()), np.sort(row[PREFIX:].numpy()), atol=1e-6)
    click = dinov2.click(key, photo, y, x, "blocks.1", "1")
    assert click.heat.shape == (90, 120, 3) and click.text == "pixel (y=40, x=70): blocks.1, head 1"
    assert dinov2.click(key, photo, y, x, "", MEAN, rollout=True).text.endswith("rollout")


def test_the_class_tokens_maps_per_head_and_their_mean(dinov2, photo):
    key, loaded = dinov2.default.key, dinov2.default
    entry = dinov2.sessions.get(loaded, photo)
    maps = entry.session.class_attention("blocks.0")
    assert torch.equal(class_attention(entry, loaded, "blocks.0", MEAN), maps.mean(0))
    assert torch.equal(class_attention(entry, loaded, "blocks.0", "1"), maps[1])
    heat, text = dinov2.class_attention(key, photo, "blocks.0", "1")
    assert heat.shape == (90, 120, 3) and text == "class token: blocks.0, head 1"
    assert (
        dinov2.click(key, photo, 1, 1, "", MEAN, class_token=True).text == "class token: blocks.1, head mean"
    )
    with pytest.raises(ValueError, match=r"head must be in \[0, 2\)"):
        dinov2.class_attention(key, photo, "blocks.0", "7")


def test_the_api_answers_attention_and_refuses_label_maps_and_region_attribution(dinov2, photo):
    key = dinov2.default.key
    floats = np.array(dinov2.attention_json(key, photo, 10, 20, "blocks.1", MEAN)["attention"])
    png, frame = dinov2.attention_png(key, photo, 10, 20, "blocks.1", MEAN)
    levels = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64)
    assert floats.shape == (90, 120) and abs(floats.sum() - 1) < 1e-5
    assert np.abs(levels / 65535 * frame["scale"] - floats).max() <= frame["scale"] / 65535
    for refused in (dinov2.label_map, dinov2.label_png):
        with pytest.raises(ValueError) as error:
            refused(key, photo)
        assert str(error.value) == NO_LABELS and "\n" not in NO_LABELS
    with pytest.raises(ValueError, match=r"no region attribution.*no classifier"):
        dinov2.attribution(key, photo, (3, 3), "occlusion")


def test_a_classifier_gives_its_top_five_and_the_top_class_relevance(classifier, weights, photo):
    key = classifier.default.key
    assert key == f"timm:test_vit@{weights.resolve()}"
    view = classifier.segment(key, photo, 0.5, 0.3)
    top = classifier.sessions.get(classifier.default, photo).session.prediction.top
    assert len(view.areas) == 5 and [row[:2] for row in view.areas] == [[name, i] for i, name, _ in top]
    assert view.areas[0][2] == round(100 * top[0][2], 2) and f"top class {top[0][1]!r}" in view.notice
    heat, text = classifier.attribution(key, photo, None, "occlusion")  # no click needed
    assert heat.shape == (90, 120, 3) and text.startswith(
        f"relevance (Chefer et al.) of the top class {top[0][1]!r}"
    )
    card = classifier.model_card(key)
    assert "test_vit" in card and str(weights.resolve()) in card and "a classifier of 1000 classes" in card
    assert RANDOM_NOTICE not in card


def test_the_store_key_names_the_model_and_a_dropped_one_is_loaded_again(classifier, weights):
    options = {"num_classes": 10, "depth": 2}
    for path in (weights, weights.parent / "a|b.pth"):
        key = timm_key("test_vit", path, options)
        assert parse_timm_key(key) == ("test_vit", str(path.resolve()), options)
        assert parse_timm_key(timm_key("test_vit", path)) == ("test_vit", str(path.resolve()), {})
    assert parse_timm_key("timm:vit_small_patch16_224.dino") == ("vit_small_patch16_224.dino", None, {})

    loaded = classifier.load(f"timm:test_vit@{weights}", "", None)
    assert classifier.load(str(weights), "timm:test_vit", None) is loaded  # the two spellings: one model
    assert classifier.load(str(weights), "timm:test_vit", 10).key == timm_key(
        "test_vit", weights, {"num_classes": 10}
    )
    page_key = classifier.load(str(weights), "timm:test_vit", 10).key
    classifier.models.memory.drop(page_key)
    again = classifier.models.find(page_key)
    assert again.key == page_key and again.predictor.num_classes == 10 and again.vit
    blocks = again.predictor.model.vit.blocks[0].attn.qkv.weight
    assert torch.equal(blocks, torch.load(weights, weights_only=True)["blocks.0.attn.qkv.weight"])


def test_the_load_box_loads_timm_files_only_from_its_folders(classifier, weights, tmp_path):
    outside = tmp_path / "elsewhere.pth"
    outside.write_bytes(weights.read_bytes())
    for path in (outside, tmp_path / "missing.pth", weights.parent / ".." / outside.name):
        for spelling in ((f"timm:test_vit@{path}", ""), (str(path), "timm:test_vit")):
            with pytest.raises(ValueError) as refused:
                classifier.load(*spelling)
            assert str(refused.value) == REFUSED
    for spelling in (("", "timm:test_vit"), ("timm:test_vit", "")):  # random weights: command line only
        with pytest.raises(ValueError) as refused:
            classifier.load(*spelling)
        assert str(refused.value) == TIMM_RANDOM_FROM_PAGE
    with pytest.raises(ValueError, match="unknown model"):  # timm kwargs only from the command line
        classifier.models.find(timm_key("test_vit", weights, {"depth": 1}))
    off = Workbench(Settings(precision="fp32"), "", "timm:test_vit")
    with pytest.raises(ValueError) as refused:
        off.load(f"timm:test_vit@{weights}")
    assert str(refused.value) == LOADING_OFF


def test_the_command_line_serves_a_timm_vit_random_or_from_its_file(weights):
    tiny = json.dumps(TINY)
    args = parse_args(["--timm-model", DINOV2_REG, "--timm-kwargs", tiny, "--precision", "fp32"])
    workbench = workbench_from_args(args)
    assert (
        workbench.default.vit
        and workbench.default.key == f"timm:{DINOV2_REG}|{json.dumps(TINY, sort_keys=True)}"
    )
    assert workbench.model_card(workbench.default.key).startswith(RANDOM_NOTICE)
    assert "random weights" in workbench.default.report
    assert workbench.settings.allow_load == (str(cache_dir().resolve()),)  # no checkpoint: no folder beside
    args = parse_args(["--timm-model", "timm:test_vit", "--checkpoint", str(weights), "--allow-load"])
    workbench = workbench_from_args(args)
    assert (
        workbench.default.key == f"timm:test_vit@{weights.resolve()}" and workbench.settings.allow_load == ()
    )
    assert f"weights from {weights.resolve()}" in workbench.default.report
    assert load_folders(LOCAL, weights, None)[0] == str(weights.parent.resolve())
    for argv in (["--timm-kwargs", tiny], ["--timm-model", "test_vit", "--model", "setr_naive"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    with pytest.raises(ValueError, match="not JSON"):
        timm_options("{depth: 2}")
    with pytest.raises(ValueError, match="give device with its own flag"):
        timm_options('{"device": "cpu"}')
    with pytest.raises(ValueError, match="unknown timm model"):
        workbench_from_args(parse_args(["--timm-model", "no_such_vit"]))
