"""Predictor: one preprocessing path with evaluation, and a session that answers clicks in image pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench import Predictor
from workbench.config import EvalConfig
from workbench.data.transforms import EvalTransform
from workbench.engine.evaluate import forward_padded
from workbench.viz import record

from .tiny import tiny_gpvit_segmentor, tiny_setr, tiny_setr_hlg


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_prediction_is_at_image_size_and_reads_every_source(tmp_path):
    predictor = Predictor(tiny_setr("setr_naive_vit_base"), device="cpu")
    photo = _photo(40, 56)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    from_array = predictor(photo)
    assert from_array.labels.shape == (40, 56) and from_array.probs.shape == (5, 40, 56)
    assert from_array.colorize().shape == (40, 56, 3) and from_array.overlay(photo).shape == (40, 56, 3)
    for source in (tmp_path / "photo.png", str(tmp_path / "photo.png"), Image.fromarray(photo)):
        np.testing.assert_array_equal(predictor(source).labels, from_array.labels)


def test_the_predictor_resizes_to_the_test_scale_as_evaluation_does():
    """A 4000x3000 photo is run at the recipe's test scale, not at full size."""
    model = tiny_setr("setr_naive_vit_base")
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    predictor = Predictor(model, transform=EvalTransform((64, 32)), device="cpu")
    prediction = predictor(_photo(400, 300))
    assert prediction.labels.shape == (400, 300)
    assert seen == [(48, 32)]  # long side 64 -> 43x32 for 400x300, padded to multiples of 16


def test_the_predictor_normalises_with_the_models_pretrained_cfg():
    model = tiny_setr("setr_naive_vit_base")
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    predictor = Predictor(model, device="cpu")
    _, tensor = predictor.preprocess(np.full((16, 16, 3), 255, dtype=np.uint8))
    torch.testing.assert_close(tensor, torch.full((1, 3, 16, 16), 2.0))


@pytest.mark.parametrize(
    ("build", "size"),
    [
        (lambda: tiny_setr("setr_naive_vit_base"), (48, 64)),
        (lambda: tiny_gpvit_segmentor("segformer"), (44, 60)),
        (lambda: tiny_setr_hlg(), (52, 76)),
    ],
)
def test_a_click_reads_the_recorded_row_of_the_token_under_the_pixel(build, size):
    model = build().eval()
    predictor = Predictor(model, device="cpu")
    photo = _photo(*size)
    predictor.set_image(photo)
    _, tensor = predictor.preprocess(photo)
    with torch.no_grad(), record(model) as rec:
        forward_padded(model, tensor)
    for name, attention in rec.attention.items():
        if attention.kind in ("grouping", "ungrouping"):
            continue
        stride = attention.tokens.stride
        y, x = size[0] - 1, size[1] // 2  # the last row: a padded token for GPViT and HLG
        row = attention.layout.on_grid(attention.query_map(y // stride, x // stride))[0]  # (heads, r, c)
        clicked = predictor.attention_at(y, x, layer=name, head=1 % row.shape[0])
        assert clicked.shape == size
        # Pixel (i, j) of the answer carries the weight of the token that holds it.
        expected = row[1 % row.shape[0]].repeat_interleave(stride, 0).repeat_interleave(stride, 1)
        torch.testing.assert_close(clicked, expected[: size[0], : size[1]], msg=name)
        averaged = predictor.attention_at(y, x, layer=name)
        torch.testing.assert_close(averaged[0, 0], row.mean(0)[0, 0])


def test_a_click_on_a_resized_image_maps_pixels_through_the_view():
    model = tiny_setr("setr_mla_vit_base").eval()
    predictor = Predictor(model, transform=EvalTransform((32, 32)), device="cpu")
    predictor.set_image(_photo(128, 64))  # seen at 32x16: one token per 64x64 block of the photo
    top = predictor.attention_at(10, 10, layer=-1)
    assert top.shape == (128, 64)
    torch.testing.assert_close(top, predictor.attention_at(60, 50, layer=-1))  # the same token
    assert not torch.allclose(top, predictor.attention_at(70, 10, layer=-1))  # the token below


def test_group_maps_are_each_group_tokens_distribution_over_the_image():
    model = tiny_gpvit_segmentor("upernet").eval()
    predictor = Predictor(model, device="cpu")
    predictor.set_image(_photo(64, 48))
    maps = predictor.group_maps("blocks.1.grouping")
    assert maps.shape == (6, 8, 64, 48)
    torch.testing.assert_close(maps.sum((-1, -2)) / 64, torch.ones(6, 8))  # 8x8 pixels a token


def test_set_image_answers_with_the_canonical_view_under_flip_and_scales():
    model = tiny_setr("setr_naive_vit_base").eval()
    photo = _photo(32, 48)
    plain = Predictor(model, device="cpu")
    plain.set_image(photo)
    tta = Predictor(model, eval_cfg=EvalConfig(scales=(0.5, 1.0), flip=True), device="cpu")
    prediction = tta.set_image(photo)
    assert prediction.labels.shape == (32, 48)
    torch.testing.assert_close(tta.attention_at(5, 40, layer=2), plain.attention_at(5, 40, layer=2))


def test_gp_sites_answer_a_click_through_their_groups():
    model = tiny_gpvit_segmentor("upernet").eval()
    predictor = Predictor(model, device="cpu")
    predictor.set_image(_photo(40, 48))
    through_groups = predictor.attention_at(13, 21, layer="blocks.1.ungrouping", head=2)
    torch.testing.assert_close(through_groups, predictor.effective_attention_at(13, 21, "blocks.1", head=2))
    torch.testing.assert_close(through_groups.sum() / 64, torch.tensor(1.0))  # a distribution over tokens
    own_group = predictor.group_assignment("blocks.1")[13, 21]
    soft = predictor.attention_at(13, 21, layer="blocks.1.grouping")
    torch.testing.assert_close(soft, predictor.group_maps("blocks.1.grouping").mean(0)[own_group])


def test_bad_queries_and_settings_are_refused():
    model = tiny_gpvit_segmentor("upernet").eval()
    predictor = Predictor(model, device="cpu")
    with pytest.raises(ValueError, match="no image is set"):
        predictor.attention_at(0, 0, layer=0)
    with pytest.raises(ValueError, match="has no pixels"):
        predictor(np.zeros((0, 5, 3), dtype=np.uint8))
    predictor.set_image(_photo(32, 32))
    with pytest.raises(ValueError, match="outside the 32x32 image"):
        predictor.attention_at(32, 0, layer=0)
    with pytest.raises(ValueError, match=r"head must be in \[0, 6\)"):
        predictor.attention_at(0, 0, layer="blocks.0.vertical", head=6)
    with pytest.raises(ValueError, match="group maps come from a grouping site"):
        predictor.group_maps("blocks.0.vertical")
    with pytest.raises(ValueError, match=r"unknown layer 'blocks\.9'"):
        predictor.attention_at(0, 0, layer="blocks.9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            Predictor(model, device="cuda")


@pytest.mark.parametrize(
    ("build", "size"),
    [
        (lambda: tiny_gpvit_segmentor("upernet"), (40, 56)),  # head at 1/8
        (lambda: tiny_gpvit_segmentor("segformer"), (37, 61)),  # padded
        (lambda: tiny_setr("setr_naive_vit_base"), (45, 70)),  # 1/16, padded
        (lambda: tiny_setr("setr_pup_vit_base"), (48, 64)),  # 1/1
        (lambda: tiny_setr("setr_mla_vit_base"), (50, 33)),  # 1/4, padded
        (lambda: tiny_setr_hlg(), (52, 76)),  # 1/4, padded
    ],
)
def test_labels_of_one_view_need_no_softmax_and_probs_come_on_request(build, size):
    """At the image's own size the labels are the arg-max of the forward's logits, taken from the
    head's logits without resizing all classes; ``probs`` is their softmax when asked for, equal to
    evaluation's ``predict_probs``."""
    from workbench.engine.evaluate import predict_probs

    model = build().eval()
    predictor = Predictor(model)
    image = np.random.default_rng(3).integers(0, 256, (*size, 3), dtype=np.uint8)
    prediction = predictor(image)
    _, tensor = predictor.preprocess(image)
    with torch.no_grad():
        reference = predict_probs(model, tensor, EvalConfig(), model.num_classes)[0]
    with torch.no_grad():
        forward = forward_padded(model, tensor)[0]
    assert np.array_equal(prediction.labels, forward.argmax(0).numpy())
    assert np.array_equal(prediction.labels, reference.argmax(0).numpy())
    torch.testing.assert_close(prediction.probs, reference, rtol=0, atol=0)
    session = predictor.open(image, probs=False)
    assert session.prediction.probs is None and np.array_equal(session.prediction.labels, prediction.labels)
