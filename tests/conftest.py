"""Shared fixtures: a tiny synthetic dataset and a tiny model config that train in seconds on a CPU."""

from __future__ import annotations

import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Why the browser tests skip when Chromium is missing (tests/browser/conftest.py); the run's summary counts them.
NO_CHROMIUM = "no Chromium at /usr/bin/chromium (apt-get install chromium) for the browser tests"

TINY_MODEL = {
    "darknet_width": 0.125,
    "trainable_backbone_modules": -1,
    "word_vectors": "random",
    "word_dim": 16,
    "freeze_word_vectors": False,
    "gru_hidden": 16,
    "d_model": 32,
    "num_heads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "ffn_dim": 64,
    "num_ray": 6,
}


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """24 synthetic scenes of 64 px (train/val/testA/testB), generated once per test session."""
    from seqtr_lib.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, num_images=24, seed=3, image_size=64, workers=1, progress=False)
    return root


def write_params(path: Path, data_root: Path, output_dir: Path, task: str = "box", **sections) -> Path:
    """A params file for a tiny run; ``sections`` update the model/data/train mappings."""
    params = {
        "name": "tiny",
        "output_dir": str(output_dir),
        "model": {**TINY_MODEL, "task": task},
        "data": {"dataset": "synthetic", "data_root": str(data_root), "image_size": 64, "lsj": False,
                 "batch_size": 4, "eval_batch_size": 8, "num_workers": 0},
        "train": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 1, "decay_epochs": [1], "log_every": 1,
                  "seed": 1},
    }
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params))
    return path


def cli_env() -> dict[str, str]:
    """The environment of test subprocesses: one thread each, so runs compare bit for bit."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m seqtr_lib ...`` (or any module via args) in a fresh process."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def demo_outputs(project: Path) -> Path:
    """What the fast demo wrote into ``project``'s outputs/, as it left them: the browser tests run the notebooks
    again in that project (01 moves the demo's runs aside, 05 compares every run there), so the tests that read
    the demo's results read this copy, taken when the demo ended."""
    snapshot = _demo_snapshot(project)
    return snapshot if snapshot.is_dir() else project / "outputs"  # SEQTR_REUSE_FAST_PROJECT: no copy taken


def _demo_snapshot(project: Path) -> Path:
    return project.parent / f"{project.name}_demo_outputs"


def assert_moved_aside(run_dir: Path, first_best: bytes, second_seed: int) -> Path:
    """After a second run into ``run_dir``: the first run's folder lies beside it as ``<name>.<YYYYmmdd-HHMMSS>``
    holding its best.pt byte for byte, and ``run_dir`` holds the second run's (trained with ``second_seed``).
    Returns the moved folder."""
    from seqtr_lib.checkpoint import load

    beside = [path for path in run_dir.parent.iterdir() if path.name.startswith(f"{run_dir.name}.")]
    assert len(beside) == 1, f"not one run beside {run_dir}: {sorted(p.name for p in run_dir.parent.iterdir())}"
    (moved,) = beside
    assert re.fullmatch(rf"{re.escape(run_dir.name)}\.\d{{8}}-\d{{6}}", moved.name), moved.name
    assert (moved / "best.pt").read_bytes() == first_best
    seeds = [load(folder / "best.pt")["config"]["train"]["seed"] for folder in (moved, run_dir)]
    assert seeds[1] == second_seed != seeds[0]
    return moved


@pytest.fixture(scope="session")
def fast_project(tmp_path_factory) -> Path:
    """``DEMO_FAST=1 make demo`` in a temporary project: notebooks 00-05 executed headless, once per test
    session. The notebook and browser tests read what it left."""
    from seqtr_lib.pipeline import DEMO_PARAMS, NOTEBOOKS, make_project, run_compare, run_pipeline

    if reuse := os.environ.get("SEQTR_REUSE_FAST_PROJECT"):  # a developer's shortcut while writing these tests
        return Path(reuse)
    # What `pipeline --fast --project DIR` does: notebooks 00-04 for the box experiment, then for the mask one
    # (which shares its data and, like the fast pipeline, starts afresh), then 05 over both runs.
    # Raising NotebookFailed (not SystemExit) lets pytest keep a failure for every test that needs the project.
    project = make_project(tmp_path_factory.mktemp("fast_project"), DEMO_PARAMS)
    run_pipeline(DEMO_PARAMS, tuple(n for n in NOTEBOOKS if n != "05"), project)
    run_compare(project)  # 05 once over the project's runs, as the demo ends
    shutil.copytree(project / "outputs", _demo_snapshot(project))
    return project


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """One line when browser tests skipped for want of Chromium, after pytest's own summary (the outermost
    wrapper writes last), so that it is among the last lines of `make test` and not lost among the skips."""
    yield
    skipped = {report.nodeid for report in terminalreporter.stats.get("skipped", [])
               if NO_CHROMIUM in str(report.longrepr)}
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} browser tests skipped: Chromium not found; "
                                    "apt-get install chromium (Debian) to run them")
