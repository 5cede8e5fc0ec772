"""JupyterLab in a real browser: Debian's Chromium driven by Playwright for Python.

Playwright's own browser download cannot be reached from these machines, so never `playwright install`:
the tests use /usr/bin/chromium (apt-get install chromium). Without it they skip with one line, except
under CI=true, where a missing Chromium fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import NO_CHROMIUM

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium must not reach out to the network (refused here, and slow); one sandbox-free headless process.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{NO_CHROMIUM}; CI must run them")
    pytest.skip(NO_CHROMIUM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    url: str  # http://127.0.0.1:<port>
    token: str
    notebooks: Path  # the folder JupyterLab serves

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"


@contextlib.contextmanager
def running_lab(notebooks: Path, state: Path, extra_env: dict[str, str] | None = None) -> Iterator[Lab]:
    """JupyterLab serving ``notebooks`` on 127.0.0.1 with a random token, its settings, runtime files,
    workspaces and notebook checkpoints under ``state``, autosave off; stopped by its PID on leaving."""
    for plugin, settings in (("docmanager-extension/plugin", {"autosave": False}),
                             ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})):
        path = state / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "JUPYTER_CONFIG_DIR": str(state / "config"),
           **(extra_env or {})}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={notebooks}", f"--LabApp.user_settings_dir={state / 'settings'}",
               f"--LabApp.workspaces_dir={state / 'workspaces'}",
               f"--FileCheckpoints.checkpoint_dir={state / 'checkpoints'}", "--ServerApp.open_browser=False"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")
    log = open(state / "lab.log", "w")
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
                    raise RuntimeError(f"JupyterLab did not start:\n{(state / 'lab.log').read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield Lab(url, token, notebooks)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="session")
def lab(request, tmp_path_factory) -> Iterator[Lab]:
    """JupyterLab on the fast project's notebooks (`running_lab`). Chromium is checked before the project is
    asked for, so that a run without it skips instead of building the project first (minutes of CPU)."""
    _chromium_or_skip()
    fast_project = request.getfixturevalue("fast_project")
    with running_lab(fast_project / "notebooks", tmp_path_factory.mktemp("jupyter_state"),
                     {"OMP_NUM_THREADS": "2"}) as lab:
        yield lab


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium under Playwright, one per test session."""
    executable = _chromium_or_skip()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("no Playwright for Python: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
