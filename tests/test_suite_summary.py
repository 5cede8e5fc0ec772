"""What a run of the suite tells its reader in its last lines: the browser tests it skipped for want of Chromium,
and how to run them (tests/conftest.py's terminal summary)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

# A tiny session: three tests skip as the browser fixtures do when Chromium is missing (the real skip function,
# pointed at a path that does not exist), one skips for another reason, one passes.
SESSION = '''
import pytest
from browser import conftest as browser

browser.CHROMIUM = "/no/such/chromium"


@pytest.mark.parametrize("notebook", ["00", "01", "02"])
def test_in_the_browser(notebook):
    browser._chromium_or_skip()


def test_on_a_gpu():
    pytest.skip("needs CUDA")


def test_passes():
    pass
'''


def _last_lines(tmp_path, *options: str) -> list[str]:
    """The non-empty output lines of the tiny session run with the suite's conftest as a plugin and `options`."""
    (tmp_path / "test_session.py").write_text(SESSION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    env.pop("CI", None)  # under CI=true a missing Chromium fails the tests instead
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "conftest", "-p", "no:cacheprovider",
                             *options, "test_session.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.slow  # a pytest process per case, a few seconds each
@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one process", "two xdist workers as make test"])
def test_a_run_that_skipped_browser_tests_ends_saying_how_many_and_how_to_run_them(tmp_path, workers):
    *_, said, counts = _last_lines(tmp_path, *workers)
    assert said == "3 browser tests skipped: Chromium not found; apt-get install chromium (Debian) to run them"
    assert re.fullmatch(r"1 passed, 4 skipped in [\d.]+s", counts), counts


@pytest.mark.slow
def test_a_run_without_browser_skips_says_nothing_of_chromium(tmp_path):
    lines = _last_lines(tmp_path, "-k", "not in_the_browser")
    assert re.fullmatch(r"1 passed, 1 skipped, 3 deselected in [\d.]+s", lines[-1]), lines[-1]
    assert not any("Chromium" in line for line in lines)
