"""The Gradio app through gradio_client on 127.0.0.1: the same labels as a Predictor, a click's map that
sums to one (as floats, or as a compact 16-bit PNG), a clear message for every bad file (and the next
good request still answered), and 8 concurrent clients x 5 requests each answered for its own image.
Every family's clicks, without a server: tests/test_app_handlers.py. The app runs on a tiny checkpoint
made here."""

from __future__ import annotations

import base64
import io
import re
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from workbench import Predictor
from workbench.data.demo import render_scene
from workbench.data.examples import example_path
from workbench.viz.summary import attention_distribution

from .app_server import serving
from .tiny import tiny_checkpoint

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-gpvit"))


@pytest.fixture(scope="module")
def server(checkpoint):
    with serving(checkpoint, pixel_budget=256 * 256) as (url, workbench):
        yield url, workbench


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    image, _ = render_scene(np.random.default_rng(3), 96)
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(image).save(path)
    return path


def test_segmentation_gives_the_predictors_labels(client, checkpoint, scene):
    result = client.predict(handle_file(scene), api_name="/label_map")
    direct = Predictor.from_checkpoint(checkpoint, precision="fp32")(scene)
    np.testing.assert_array_equal(np.array(result["labels"]), direct.labels)
    assert (result["height"], result["width"]) == (96, 96) and result["notes"] == []
    assert result["classes"] == list(direct.classes.names)


def test_a_click_gives_a_map_of_image_size_that_sums_to_one(client, checkpoint, scene):
    result = client.predict(handle_file(scene), 40, 17, "", "mean", api_name="/attention")
    weights = np.array(result["attention"])
    assert weights.shape == (96, 96) and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    predictor = Predictor.from_checkpoint(checkpoint, precision="fp32")
    predictor.set_image(scene)
    last = [name for name in predictor.sites() if not name.endswith(".grouping")][-1]
    expected = attention_distribution(predictor.attention_at(40, 17, last))  # heads averaged
    np.testing.assert_allclose(weights, expected.numpy(), atol=1e-6)
    with pytest.raises(AppError, match=r"pixel \(500, 17\) is outside the 96x96 image"):
        client.predict(handle_file(scene), 500, 17, "", "mean", api_name="/attention")


def test_the_compact_click_answer_is_the_same_map_as_a_16_bit_png(client, scene):
    """``/attention_png``: the distribution as a 16-bit grey PNG scaled to its largest weight, inline."""
    floats = np.array(
        client.predict(handle_file(scene), 40, 17, "", "mean", api_name="/attention")["attention"]
    )
    frame = client.predict(handle_file(scene), 40, 17, "", "mean", api_name="/attention_png")
    levels = np.asarray(Image.open(io.BytesIO(base64.b64decode(frame["png"]))))
    assert levels.dtype == np.uint16 and levels.shape == (96, 96) == (frame["height"], frame["width"])
    np.testing.assert_allclose(levels / 65535 * frame["scale"], floats, rtol=0, atol=frame["scale"] / 65535)
    with pytest.raises(AppError, match=r"pixel \(500, 17\) is outside the 96x96 image"):
        client.predict(handle_file(scene), 500, 17, "", "mean", api_name="/attention_png")


def test_the_compact_label_answer_is_the_label_map_as_a_png(client, scene):
    listed = client.predict(handle_file(scene), api_name="/label_map")
    compact = client.predict(handle_file(scene), api_name="/label_png")
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(compact["png"]))))
    assert labels.dtype == np.uint8 and compact["classes"] == listed["classes"]
    np.testing.assert_array_equal(labels, np.array(listed["labels"]))
    assert (compact["height"], compact["width"]) == (listed["height"], listed["width"])


def test_a_click_runs_no_forward_pass(server, scene):
    """After a segmentation, queries on the same image read the kept session: the model is not called."""
    _, workbench = server
    key = workbench.default.key
    workbench.label_map(key, str(scene))
    calls = []
    hook = workbench.default.predictor.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for layer in ("blocks.0.vertical", "blocks.1.ungrouping", "blocks.3.ungrouping"):
            weights = workbench.attention(key, str(scene), 5, 90, layer, "0")
            assert weights.shape == (96, 96)
    finally:
        hook.remove()
    assert calls == []


# --------------------------------------------------------------------------------------- bad files


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)


def _animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((40, 48, 3), value, np.uint8)) for value in (30, 200, 90)]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])


REFUSED = {  # file name -> (its bytes, what the message must say)
    "empty.png": (lambda: b"", r"empty.png: the file is empty \(0 bytes\); expected an image file"),
    "truncated.jpg": (
        lambda: _encoded(Image.fromarray(_noise(64, 64)), "JPEG")[:-400],
        r"cannot read image truncated.jpg: image file is truncated",
    ),
    "truncated.png": (
        lambda: _encoded(Image.fromarray(_noise(64, 64)), "PNG")[:-400],
        r"cannot read image truncated.png: .*(truncated|broken|Truncated)",
    ),
    "notes.png": (lambda: b"these are notes, not a picture\n" * 10, r"notes.png: not a format PIL decodes"),
    "bomb.png": (
        lambda: _png_header(30000, 30000),
        r"bomb.png: Image size \(900000000 pixels\) exceeds limit of 178956970 pixels",
    ),
    "dot.png": (
        lambda: _encoded(Image.new("RGB", (1, 1)), "PNG"),
        r"dot.png: the image is 1x1 pixels; expected at least 8x8",
    ),
}

ANSWERED = {  # file name -> (its bytes, the shape answered, a note the answer carries)
    "rgba.png": (
        lambda: _encoded(
            Image.fromarray(np.dstack([_noise(40, 56), np.full((40, 56), 128, np.uint8)])), "PNG"
        ),
        (40, 56),
        "RGBA: transparency composited on black",
    ),
    "grey16.png": (
        lambda: _encoded(
            Image.fromarray(np.linspace(0, 65535, 40 * 56).reshape(40, 56).astype(np.uint16)), "PNG"
        ),
        (40, 56),
        "16-bit (I;16) scaled to 8 bits",
    ),
    "cmyk.jpg": (lambda: _encoded(Image.fromarray(_noise(40, 56)).convert("CMYK"), "JPEG"), (40, 56), "CMYK"),
    "animated.gif": (_animated_gif, (40, 48), "first frame of 3"),
    "photo-12mp.jpg": (
        lambda: _encoded(Image.open(example_path("astronaut")).resize((4000, 3000)), "JPEG", quality=90),
        (221, 295),
        "downscaled from 4000x3000 to 295x221 (pixel budget 0.065536 MP)",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_bad_file_gets_a_clear_message_and_the_app_keeps_serving(client, tmp_path, scene, name):
    content, message = REFUSED[name]
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(AppError) as error:
        client.predict(handle_file(path), api_name="/label_map")
    assert re.search(message, str(error.value)), str(error.value)
    assert "\n" not in str(error.value) and str(tmp_path) not in str(error.value)
    assert np.array(client.predict(handle_file(scene), api_name="/label_map")["labels"]).shape == (96, 96)


@pytest.mark.parametrize("name", sorted(ANSWERED))
def test_unusual_images_are_converted_and_answered(client, tmp_path, name):
    content, shape, note = ANSWERED[name]
    path = tmp_path / name
    path.write_bytes(content())
    result = client.predict(handle_file(path), api_name="/label_map")
    assert np.array(result["labels"]).shape == shape
    assert any(note in text for text in result["notes"]), result["notes"]


# --------------------------------------------------------------------------------------- load


def test_eight_clients_each_get_the_predictors_answers_for_their_own_image(server, checkpoint, tmp_path):
    """Distinct images (no session shared between clients), segmentations and clicks interleaved: every
    answer is the Predictor's for that client's own image, so a mix-up between sessions fails."""
    url, _ = server
    predictor = Predictor.from_checkpoint(checkpoint, precision="fp32")
    last = [name for name in predictor.sites() if not name.endswith(".grouping")][-1]
    paths, labels, maps = [], [], []
    for index in range(8):
        paths.append(tmp_path / f"client{index}.png")
        Image.fromarray(render_scene(np.random.default_rng(100 + index), 128)[0]).save(paths[-1])
        labels.append(predictor.set_image(paths[-1]).labels)
        maps.append(attention_distribution(predictor.attention_at(64, 64, last)).numpy())
    for index in range(1, 8):  # a mix-up would show
        assert not np.array_equal(labels[0], labels[index]) and not np.allclose(maps[0], maps[index])
    failures, latencies, lock = [], [], threading.Lock()

    def user(index: int) -> None:
        try:
            client = Client(url, verbose=False)
            for request in range(5):
                start = time.perf_counter()
                if request % 2 == 0:
                    result = client.predict(handle_file(paths[index]), api_name="/label_map")
                    np.testing.assert_array_equal(np.array(result["labels"]), labels[index])
                else:
                    result = client.predict(
                        handle_file(paths[index]), 64, 64, "", "mean", api_name="/attention"
                    )
                    np.testing.assert_allclose(np.array(result["attention"]), maps[index], atol=1e-6)
                with lock:
                    latencies.append(time.perf_counter() - start)
        except Exception as error:  # every failure is counted and reported
            with lock:
                failures.append(f"client {index}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=user, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "clients still waiting after 300 s"
    assert failures == [] and len(latencies) == 40, failures
