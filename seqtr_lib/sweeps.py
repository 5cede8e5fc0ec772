"""Sweeps: a grid of runs of one params file through the same notebooks, one run folder per grid point.

    python -m seqtr_lib.pipeline --params params/synthetic_mask.yaml --demo \\
        --sweep model.num_ray=12,18,24,36 --seeds 2 --notebooks 00,01,02

Each grid point is the params file with its overrides (``KEY=VALUE`` as ``--set`` takes them) and the
experiment name ``<name>__<key>=<value>__...`` (`run_name`; `parse_run_name` reads it back), so its run
lands in ``outputs/<that name>/`` beside the others. When every notebook of a run has succeeded,
``sweep.json`` is written there atomically: a grid started again skips those runs. A failing run is
recorded there too (the notebook and the cell) and the others go on; `sweep` returns one `SweepRun` per
grid point and `sweep_table` lays them out.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from seqtr_lib.config import ConfigError, Experiment, _valid_keys, _unknown_key

MARKER = "sweep.json"
SEPARATOR = "__"
# Characters a value keeps in a folder name; everything else (``/``, ``_``, ``=``, spaces ...) is %-escaped,
# so that a value can never hold the separator and a name reads back to exactly its overrides.
_SAFE = "-.,[]+"
_KEY = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*(?:\.[a-z][a-z0-9]*(?:_[a-z0-9]+)*)*")


# --------------------------------------------------------------------------------------------------
# The grid and its names (pure)
# --------------------------------------------------------------------------------------------------


def split_values(text: str) -> list[str]:
    """``"12,18,[6,7]"`` -> ``["12", "18", "[6,7]"]``: commas inside brackets belong to a value."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """``"model.num_ray=12,18"`` -> ``("model.num_ray", ["12", "18"])``; raises ConfigError for bad input."""
    if "=" not in spec:
        raise ConfigError(f"--sweep {spec!r} must look like section.key=V1,V2,..., e.g. --sweep model.num_ray=12,18,24")
    key, text = (part.strip() for part in spec.split("=", 1))
    valid = _valid_keys(Experiment)
    if key not in valid:
        raise ConfigError(f"--sweep {spec}: {_unknown_key(key, valid)}")
    if key in ("name", "output_dir"):
        raise ConfigError(f"--sweep {spec}: {key} names the run folders; sweep a setting instead")
    values = split_values(text)
    if any(v == "" for v in values):
        raise ConfigError(f"--sweep {spec}: an empty value (two commas, or a comma at an end); write V1,V2,...")
    if len(set(values)) != len(values):
        raise ConfigError(f"--sweep {spec}: a value is repeated")
    return key, values


def grid(sweeps: Sequence[tuple[str, Sequence[str]]], seeds: int = 1, base_seed: int = 0) -> list[list[str]]:
    """Every combination of the swept values as override lists, in the order given (the last key varies
    fastest); with ``seeds`` above 1 each combination runs with ``train.seed`` = base_seed, base_seed + 1, ..."""
    keys = [key for key, _ in sweeps]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep: a key is swept twice ({', '.join(keys)}); give all its values in one --sweep")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be at least 1")
    axes = [[f"{key}={value}" for value in values] for key, values in sweeps]
    if seeds > 1:
        if "train.seed" in keys:
            raise ConfigError("--seeds and --sweep train.seed=... both set the seed: use one of them")
        axes.append([f"train.seed={base_seed + i}" for i in range(seeds)])
    return [list(point) for point in itertools.product(*axes)]


def run_name(base: str, overrides: Sequence[str]) -> str:
    """The experiment (and folder) name of a grid point: ``base__key=value__...`` with each value %-escaped
    outside ``[A-Za-z0-9-.,[]+]``. Raises ValueError for a base or key that would not read back."""
    if not base or "=" in base or "/" in base or base.startswith("."):
        raise ValueError(f"experiment name {base!r} cannot start a sweep's run names: it must be non-empty, "
                         "hold no '=' or '/', and not start with '.' (set another with --set name=...)")
    parts = [base]
    for item in overrides:
        key, value = item.split("=", 1)
        if not _KEY.fullmatch(key):
            raise ValueError(f"override {item!r}: key {key!r} is not a dotted settings key")
        parts.append(f"{key}={quote(value, safe=_SAFE).replace('_', '%5F')}")  # quote always keeps "_"
    name = SEPARATOR.join(parts)
    if len(name.encode()) > 255:
        raise ValueError(f"run name {name[:60]}... is {len(name.encode())} bytes, over a folder name's 255: "
                         "sweep fewer keys or shorter values, or shorten the experiment name")
    return name


def parse_run_name(name: str) -> tuple[str, list[str]]:
    """`run_name` read back: ``(base, overrides)``. A name without overrides is ``(name, [])``."""
    # A separator is "__" right before "key=": keys hold no "__" and values no "_" or "=", and the base no
    # "=", so this cuts exactly where run_name joined (also after a base ending in "_").
    base, *parts = re.split(SEPARATOR + "(?=" + _KEY.pattern + "=)", name)
    return base, [f"{key}={unquote(value)}" for key, value in (part.split("=", 1) for part in parts)]


# --------------------------------------------------------------------------------------------------
# Running a grid
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepRun:
    """One grid point: its overrides, folder and what happened (done, skipped, failed)."""

    name: str
    swept: list[str]
    run_dir: Path
    status: str = "pending"
    seconds: float = 0.0
    notebook: str = ""
    cell: int | None = None
    error: str = ""


def machine() -> str:
    """The machine in words: CPU model and cores, the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    words = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            words += ", " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        else:
            words += ", no GPU"
    except ImportError:
        pass
    return words


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The run's sweep.json, or None when absent or unreadable (a run never finished)."""
    try:
        marker = json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def finished_notebooks(run_dir: Path, overrides: Sequence[str]) -> list[str]:
    """The notebooks an earlier sweep ran here successfully with the same overrides ([] when none did)."""
    marker = read_marker(run_dir)
    if marker is None or marker.get("status") != "done" or list(marker.get("overrides", [])) != list(overrides):
        return []
    return [str(n) for n in marker.get("notebooks", [])]


def is_finished(run_dir: Path, notebooks: Sequence[str], overrides: Sequence[str]) -> bool:
    """Whether an earlier sweep ran ``notebooks`` (or more) here successfully with the same overrides."""
    return set(notebooks) <= set(finished_notebooks(run_dir, overrides))


def sweep_table(runs: Iterable[SweepRun]) -> str:
    """What ran, what was skipped, what failed and where, as a fixed-width table."""
    rows = [("run", "status", "time", "where it failed")]
    for run in runs:
        where = f"{run.notebook}" + (f" cell {run.cell}" if run.cell is not None else "") if run.status == "failed" else ""
        rows.append((run.name, run.status, f"{run.seconds / 60:.1f} min" if run.seconds else "", where))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
