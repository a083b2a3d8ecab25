"""The app in a real browser: Debian's chromium driven by playwright (never a downloaded browser).

Upload a picture, see the overlay and what the model knows (the demo notice), click on it and see the
attention panel change (rollout off for GPViT), open the groups tab, attribute the clicked pixel's
class, and see the load box refuse a path in one line; screenshots must not be blank. Bounded: about
half a minute on 2 cores. Fails, never skips, when chromium or playwright is missing: `.ci/run`
installs chromium with apt-get.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from workbench.data.demo import render_scene

from .app_server import serving
from .tiny import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)  # about 15 s on 2 cores; a hang fails, not waits

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000


def _not_blank(path) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"


def _picture(page, selector: str) -> bytes:
    """The bytes of the picture an image component shows now (its src, fetched from the app)."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    return page.request.get(src).body()


def test_upload_click_groups_attribution_and_load_box_in_chromium(tmp_path):
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright  # a test dependency: ImportError fails the test

    image, _ = render_scene(np.random.default_rng(5), 128)
    photo = tmp_path / "scene.png"
    Image.fromarray(image).save(photo)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    checkpoint = tiny_checkpoint(tmp_path / "model")
    serve = serving(checkpoint, allow_load=(str(allowed),))
    with serve as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#segmentation img", timeout=WAIT_MS)
            assert "128x128 pixels" in page.locator("#notice").inner_text()
            card = page.locator("#model-card").inner_text()
            assert "gpvit_l1_segformer" in card and "trained on generated shapes only" in card
            assert str(checkpoint) in card and "--checkpoint FILE --model NAME --num-classes K" in card
            assert page.locator("#rollout input").is_disabled()  # GPViT: no self-attention to roll out
            page.screenshot(path=str(tmp_path / "overlay.png"), full_page=True)
            _not_blank(tmp_path / "overlay.png")

            picture = page.locator("#segmentation img")
            box = picture.bounding_box()
            picture.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.75})
            page.wait_for_selector("#attention-map img", timeout=WAIT_MS)
            first_text = page.locator("#click-text").inner_text()
            first = _picture(page, "#attention-map")
            assert "pixel (y=" in first_text
            y, x = (int(v.split("=")[1]) for v in first_text.split("(")[1].split(")")[0].split(", "))
            assert abs(y - 96) <= 2 and abs(x - 32) <= 2  # the click lands on the image pixel under it

            first_src = page.locator("#attention-map img").get_attribute("src")
            picture.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.2})
            page.wait_for_function(
                "src => document.querySelector('#attention-map img').src !== src",
                arg=first_src,
                timeout=WAIT_MS,
            )
            assert page.locator("#click-text").inner_text() != first_text
            assert _picture(page, "#attention-map") != first  # the attention panel changed

            page.get_by_role("tab", name="groups (GPViT)").click()
            page.wait_for_selector("#group-map img", timeout=WAIT_MS)
            page.wait_for_selector("#effective-map img", timeout=WAIT_MS)
            assert "groups hold pixels" in page.locator("#groups-tab").inner_text()
            page.screenshot(path=str(tmp_path / "groups.png"), full_page=True)
            _not_blank(tmp_path / "groups.png")

            page.get_by_role("tab", name="attribution").click()
            page.locator("#attribute").click()
            page.wait_for_selector("#attribution-map img", timeout=WAIT_MS)
            assert "occlusion: class '" in page.locator("#attribution-text").inner_text()
            (tmp_path / "attribution.png").write_bytes(_picture(page, "#attribution-map"))
            _not_blank(tmp_path / "attribution.png")

            page.locator("#model-box").get_by_text("model", exact=True).first.click()
            page.locator("#checkpoint textarea, #checkpoint input").first.fill(str(tmp_path / "model"))
            page.locator("#load").click()
            toast = page.locator(".toast-body").first
            toast.wait_for(timeout=WAIT_MS)
            message = toast.inner_text()
            assert "refused: this app loads models only from the folders" in message, message
            assert str(tmp_path) not in message  # one line naming no server path
        finally:
            browser.close()
