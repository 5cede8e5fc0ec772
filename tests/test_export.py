"""The exported inference path (tests/export_cases.py), run in a process of its own.

OpenVINO and ONNX Runtime load native thread pools and kernels into the process; in a pytest-xdist worker that
has run hundreds of other tests first, the worker died twice in one suite (a crash, no Python traceback), while
the same cases passed in a fresh process. Run apart, a crash fails this test with the cases' output instead of
taking a worker down, and the cases still run in CI on every commit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, cli_env

pytestmark = pytest.mark.xdist_group("export")


@pytest.mark.slow
def test_the_exported_path_cases_pass_in_a_process_of_their_own():
    # -X faulthandler: a crash in native code prints the Python stack it happened under
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/export_cases.py"],
                            cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-2000:]
