"""The app on a timm ViT in a real browser: Debian's chromium driven by playwright (never a downloaded
browser), as in ``test_app_browser``.

A tiny random DINOv2-with-registers: the page says its weights are random, an uploaded picture becomes
the PCA of its patch features (the pixels the session computes), a click shows the pixel's attention
and the class-token box the class token's map. Bounded: about 15 s on 2 cores. Fails, never skips,
when chromium or playwright is missing: `.ci/run` installs chromium with apt-get.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from workbench.data.demo import render_scene

from .app_server import serving
from .test_app_browser import CHROMIUM, FLAGS, WAIT_MS, _not_blank, _picture

pytestmark = pytest.mark.timeout(120)

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 56, "size": 56}


def test_a_timm_vit_shows_its_features_pca_and_attention_in_chromium(tmp_path):
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright  # a test dependency: ImportError fails the test

    photo = tmp_path / "scene.png"
    Image.fromarray(render_scene(np.random.default_rng(5), 128)[0]).save(photo)
    serve = serving("", model="timm:vit_small_patch14_reg4_dinov2", timm_kwargs=TINY)
    with serve as (url, workbench), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url)
            card = page.locator("#model-card").inner_text()
            assert "Random weights: no checkpoint was given" in card
            assert "vit_small_patch14_reg4_dinov2" in card and "4 other prefix tokens" in card
            page.locator("#upload input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#segmentation img", timeout=WAIT_MS)
            assert "PCA of the 4x4 patch features" in page.locator("#notice").inner_text()
            assert page.locator("#foreground").is_visible() and not page.locator("#areas").is_visible()
            shown = np.asarray(Image.open(io.BytesIO(_picture(page, "#segmentation"))).convert("RGB"))
            session = workbench.sessions.get(workbench.default, str(photo)).session
            assert np.array_equal(shown, session.pca_rgb())  # opacity 1 for a ViT: the features' PCA

            picture = page.locator("#segmentation img")
            box = picture.bounding_box()
            picture.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.75})
            page.wait_for_selector("#attention-map img", timeout=WAIT_MS)
            text = page.locator("#click-text").inner_text()
            assert "pixel (y=" in text and "blocks.1, head mean" in text
            y, x = (int(v.split("=")[1]) for v in text.split("(")[1].split(")")[0].split(", "))
            assert abs(y - 96) <= 2 and abs(x - 32) <= 2  # the click lands on the image pixel under it
            (tmp_path / "attention.png").write_bytes(_picture(page, "#attention-map"))
            _not_blank(tmp_path / "attention.png")

            first_src = page.locator("#attention-map img").get_attribute("src")
            page.locator("#class-token input").check()
            page.wait_for_function(
                "src => document.querySelector('#attention-map img').src !== src",
                arg=first_src,
                timeout=WAIT_MS,
            )
            assert page.locator("#click-text").inner_text() == "class token: blocks.1, head mean"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            _not_blank(tmp_path / "page.png")
        finally:
            browser.close()
