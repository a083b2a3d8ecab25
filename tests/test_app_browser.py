"""The app in a real browser: Debian's chromium driven by playwright (never a downloaded browser).

Upload a picture, see the overlay, click on it and see the attention panel change, open the groups tab;
screenshots must not be blank. Fails, never skips, when chromium or playwright is missing: `.ci/run`
installs chromium with apt-get.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from workbench.data.demo import render_scene

from .app_server import serving, tiny_checkpoint

pytestmark = pytest.mark.timeout(600)

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
WAIT_MS = 120_000


def _not_blank(path) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"


def _picture(page, selector: str) -> bytes:
    """The bytes of the picture an image component shows now (its src, fetched from the app)."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    return page.request.get(src).body()


def test_upload_click_and_groups_in_chromium(tmp_path):
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright  # a test dependency: ImportError fails the test

    image, _ = render_scene(np.random.default_rng(5), 128)
    photo = tmp_path / "scene.png"
    Image.fromarray(image).save(photo)
    with serving(tiny_checkpoint(tmp_path / "model")) as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#segmentation img", timeout=WAIT_MS)
            assert "128x128 pixels" in page.locator("#notice").inner_text()
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
        finally:
            browser.close()
