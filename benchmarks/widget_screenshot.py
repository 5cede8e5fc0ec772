"""The README's widget screenshot: notebook 04 in JupyterLab in Chromium, with the released box weights.

    python benchmarks/widget_screenshot.py    # writes docs/notebooks/widget_in_jupyterlab.png

Needs the default synthetic set (`make-synthetic --out data`), no run of your own in outputs/synthetic_det/
(so the notebook shows weights/synthetic_det.pt) and Chromium at /usr/bin/chromium. JupyterLab runs as the
browser tests run it (their helpers, a temporary settings folder, autosave off) and is stopped by its PID.
The typed expression is one annotated for another object of the image the widget shows first (val image
4200), so it names an object that is in the image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from browser.conftest import CHROMIUM_ARGS, running_lab
    from browser.test_jupyterlab import open_and_run_all, wait_for_status
    from PIL import Image
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expression", default="the cyan shape left of the green triangle")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks" / "widget_in_jupyterlab.png")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="widget_screenshot_"))
    with running_lab(ROOT / "notebooks", state) as lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1100, "height": 1000}).new_page()
        open_and_run_all(page, lab, "04_demo", timeout_s=600)
        field = page.locator(".widget-text input").first
        field.fill(args.expression)
        field.press("Enter")
        print(wait_for_status(page, f"'{args.expression}': box"))
        page.locator(".widget-vbox").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(1000)
        shot = state / "page.png"
        page.screenshot(path=str(shot))
        browser.close()
    # A palette PNG: the page's flat colours survive, at half the bytes.
    Image.open(shot).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
