"""docs/app.png: the app on the demo model in Debian's chromium, a demo scene segmented and one pixel clicked.

python docs/app_screenshot.py [--checkpoint RUN_OR_CHECKPOINT] [--out docs/app.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository root: apps/ and tests/

from playwright.sync_api import sync_playwright  # noqa: E402

from apps.handlers import demo_examples  # noqa: E402
from apps.serve import serve  # noqa: E402
from tests.test_app_browser import CHROMIUM, FLAGS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the demo model (trained if absent)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("app.png")))
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        from workbench.demo import demo_checkpoint

        checkpoint = demo_checkpoint("demo_gpvit")
    scene = demo_examples()[0][0]
    app, url = serve(checkpoint, port=0)
    try:
        with TemporaryDirectory(), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(scene)
            page.wait_for_selector("#segmentation img", timeout=120_000)
            picture = page.locator("#segmentation img")
            box = picture.bounding_box()
            picture.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.55})
            page.wait_for_selector("#attention-map img", timeout=120_000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
