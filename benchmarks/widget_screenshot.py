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
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from browser.conftest import CHROMIUM_ARGS, Lab
    from browser.test_jupyterlab import open_and_run_all, wait_for_status
    from PIL import Image
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expression", default="the cyan shape left of the green triangle")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks" / "widget_in_jupyterlab.png")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="widget_screenshot_"))
    for plugin, settings in (("docmanager-extension/plugin", {"autosave": False}),
                             ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})):
        path = state / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "JUPYTER_CONFIG_DIR": str(state / "config")}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT / 'notebooks'}",
               f"--LabApp.user_settings_dir={state / 'settings'}", f"--LabApp.workspaces_dir={state / 'workspaces'}",
               f"--FileCheckpoints.checkpoint_dir={state / 'checkpoints'}"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")
    with open(state / "lab.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"JupyterLab did not start; see {state / 'lab.log'}") from None
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1100, "height": 1000}).new_page()
            open_and_run_all(page, Lab(url, token, ROOT / "notebooks"), "04_demo", timeout_s=600)
            field = page.locator(".widget-text input").first
            field.fill(args.expression)
            field.press("Enter")
            print(wait_for_status(page, f"'{args.expression}': box"))
            page.locator(".widget-vbox").first.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1000)
            shot = state / "page.png"
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)
    # A palette PNG: the page's flat colours survive, at half the bytes.
    Image.open(shot).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
