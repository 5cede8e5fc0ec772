"""Every run of a project in one table, a metric plotted against a swept setting (05_compare_runs).

A run is a folder holding a metrics.json (notebook 02, ``seqtr evaluate``) or a sweep.json (`sweeps`).
`collect_runs` reads, per run: its swept settings (sweep.json, else its name, see `sweeps.parse_run_name`),
its config (sweep.json, else the checkpoint's), the headline score of each evaluated split for the raw
and the EMA weights, the samples seen and the training time (log.jsonl), and the machine (sweep.json).
`table_rows` flattens them to the columns of `write_csv` and `markdown_table`; `metric_plot` draws one
line per setting of the other swept keys, the seeds of a point as their mean and min-max spread.
"""

from __future__ import annotations

import csv
import glob
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqtr_lib.atomic import atomic_write, write_text_atomic
from seqtr_lib.sweeps import _KEY, MARKER, parse_run_name

SPLIT_ORDER = ("val", "testA", "testB", "test")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _lookup(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _checkpoint_config(run_dir: Path) -> dict[str, Any]:
    """The config stored in the run's best.pt or last.pt ({} when neither loads)."""
    import torch

    for name in ("best.pt", "last.pt"):
        path = run_dir / name
        if path.is_file():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
                return payload.get("config") or {}
            except Exception:  # noqa: BLE001 - a torn or foreign file: the run shows without its config
                continue
    return {}


def _log_totals(run_dir: Path) -> tuple[int | None, float | None]:
    """Samples seen and training seconds, summed over the epoch records of log.jsonl (None without a log)."""
    samples, seconds, found = 0, 0.0, False
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if record.get("type") == "epoch":
            found = True
            samples += int(record.get("samples", 0))
            seconds += float(record.get("train_seconds", 0.0))
    return (samples, seconds) if found else (None, None)


def collect_runs(pattern: str = "outputs/*", root: str | Path = ".") -> list[dict[str, Any]]:
    """Every run folder matching ``pattern`` (a glob relative to ``root``, ``**`` allowed), sorted by name.

    Each run is a dict: name, run_dir, status (sweep.json's, "done" for a run evaluated outside a sweep,
    "unfinished" otherwise), swept ({key: value as written}), config, metrics (metrics.json or None),
    samples, train_seconds, run_seconds, machine."""
    runs = []
    matches = sorted(Path(p) for p in glob.glob(str(Path(root) / pattern), recursive=True))
    for run_dir in matches:
        if not run_dir.is_dir():
            continue
        marker = _json(run_dir / MARKER)
        metrics = _json(run_dir / "metrics.json")
        marker = marker if isinstance(marker, dict) else None
        if marker is None and not isinstance(metrics, dict):
            continue  # not a run (the compare folder, predictions/, a data folder ...)
        if marker is not None:
            swept = dict(item.split("=", 1) for item in marker.get("swept", []))
        else:
            swept = dict(item.split("=", 1) for item in parse_run_name(run_dir.name)[1])
        config = (marker or {}).get("config") or _checkpoint_config(run_dir)
        samples, train_seconds = _log_totals(run_dir)
        runs.append({"name": run_dir.name, "run_dir": run_dir,
                     "status": (marker or {}).get("status") or ("done" if metrics else "unfinished"),
                     "swept": swept, "config": config, "metrics": metrics if isinstance(metrics, dict) else None,
                     "samples": samples, "train_seconds": train_seconds,
                     "run_seconds": (marker or {}).get("seconds"), "machine": (marker or {}).get("machine", ""),
                     "failed_in": (f"{marker.get('notebook', '')} cell {marker.get('cell')}"
                                   if marker and marker.get("status") == "failed" else "")})
    return runs


def swept_keys(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The keys any run swept, in order of first appearance (train.seed last)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["swept"] if k not in keys]
    return sorted(keys, key=lambda k: k == "train.seed")


def default_axes(rows: Sequence[dict[str, Any]], x: str = "", metric: str = "") -> tuple[str, str]:
    """05's plot axes when its parameters leave them empty: the swept key with the most distinct values
    (the first of those, train.seed only when nothing else varies), and the first val score of the EMA
    weights (else the first score column)."""
    keys = [k for k in _columns(rows) if _KEY.fullmatch(k) and "." in k]
    keys.sort(key=lambda k: (k == "train.seed", -len({_text(r.get(k)) for r in rows})))
    scores = [c for c in _columns(rows) if c.count(" ") == 2 and c.split()[2] in ("raw", "ema")]
    preferred = [c for c in scores if c.startswith("val ") and c.endswith(" ema")] + scores
    return x or next(iter(keys), ""), metric or next(iter(preferred), "")


def _score_columns(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(split, metric, weights) of the headline scores the runs hold, in split order."""
    from seqtr_lib.metrics import headline_metrics

    columns: list[tuple[str, str, str]] = []
    for run in runs:
        task = _lookup(run["config"], "model.task")
        generalised = (_lookup(run["config"], "data.max_objects") or 0) > 0
        splits = ((run["metrics"] or {}).get("splits") or {})
        for split in sorted(splits, key=lambda s: (SPLIT_ORDER + (s,)).index(s)):
            for metric in headline_metrics(task, generalised) if task else ():
                for weights in ("raw", "ema"):
                    if metric in (splits[split].get(weights) or {}) and (split, metric, weights) not in columns:
                        columns.append((split, metric, weights))
    return columns


def score(run: dict[str, Any], split: str, metric: str, weights: str) -> float | None:
    """A run's score, or None when it was not evaluated so."""
    value = (((run["metrics"] or {}).get("splits") or {}).get(split) or {}).get(weights, {}).get(metric)
    return None if value is None else float(value)


def table_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: name, status, each swept key's value (from the run's config, so that a run that
    did not sweep a key shows the value it ran with), dataset, task, ``<split> <metric> raw|ema``, samples,
    train min, run min, machine, where it failed."""
    keys = swept_keys(runs)
    columns = _score_columns(runs)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"name": run["name"], "status": run["status"]}
        for key in keys:
            value = _lookup(run["config"], key)
            row[key] = run["swept"].get(key) if value is None else value
        row["dataset"] = _lookup(run["config"], "data.dataset")
        row["task"] = _lookup(run["config"], "model.task")
        for split, metric, weights in columns:
            row[f"{split} {metric} {weights}"] = score(run, split, metric, weights)
        row["samples"] = run["samples"]
        row["train min"] = None if run["train_seconds"] is None else round(run["train_seconds"] / 60, 1)
        row["run min"] = None if run["run_seconds"] is None else round(run["run_seconds"] / 60, 1)
        row["machine"] = run["machine"]
        row["failed in"] = run["failed_in"]
        rows.append(row)
    return rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV (floats at full precision, empty cells for missing values), written atomically."""
    columns = _columns(rows)
    with atomic_write(path) as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return Path(path)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The rows as a Markdown table, floats with two decimals, empty cells for missing values."""
    columns = list(columns or _columns(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_text(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    write_text_atomic(path, markdown_table(rows, columns))
    return Path(path)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_series(rows: Sequence[dict[str, Any]], x: str, metric: str,
                  where: dict[str, Any] | None = None) -> dict[str, list[tuple[float, float, float, float, int]]]:
    """The points of `metric_plot`: {label of the other swept settings: [(x, mean, min, max, n), ...]},
    x ascending; rows without a number for ``x`` or ``metric``, or not matching ``where``, are left out.
    The other settings are the row's columns that vary between rows among the swept keys (not ``x``, not
    train.seed: the seeds of a point make its spread)."""
    where = where or {}
    kept = [r for r in rows if _number(r.get(x)) is not None and _number(r.get(metric)) is not None
            and all(str(r.get(k)) == str(v) for k, v in where.items())]
    others = [k for k in _columns(kept) if k not in (x, "train.seed") and _KEY.fullmatch(k) and "." in k
              and len({_text(r.get(k)) for r in kept}) > 1]
    groups: dict[str, dict[float, list[float]]] = {}
    for row in kept:
        label = ", ".join(f"{k}={_text(row.get(k))}" for k in others) or metric
        groups.setdefault(label, {}).setdefault(_number(row[x]), []).append(_number(row[metric]))
    return {label: [(value, sum(ys) / len(ys), min(ys), max(ys), len(ys)) for value, ys in sorted(points.items())]
            for label, points in sorted(groups.items())}


def _draw(axis: Any, series: dict[str, list[tuple[float, float, float, float, int]]], x: str, metric: str,
          title: str) -> None:
    if not series:
        axis.text(0.5, 0.5, f"no run has both {x or 'a swept setting'} and {metric or 'a score'}", ha="center",
                  va="center", transform=axis.transAxes)
    for label, points in series.items():
        xs, means, lows, highs, counts = zip(*points)
        line, = axis.plot(xs, means, marker="o", label=label + (f" ({max(counts)} seeds)" if max(counts) > 1 else ""))
        if max(counts) > 1:
            axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2)
            axis.errorbar(xs, means, yerr=[[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]],
                          fmt="none", ecolor=line.get_color(), capsize=3)
        for xv, yv in zip(xs, means):
            axis.annotate(f"{yv:.1f}", (xv, yv), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    axis.set_xlabel(x)
    axis.set_ylabel(metric)
    all_x = sorted({p[0] for points in series.values() for p in points})
    if all_x:
        axis.set_xticks(all_x)
    axis.grid(alpha=0.3)
    if len(series) > 1 or any(max(p[4] for p in pts) > 1 for pts in series.values()):
        axis.legend(fontsize=8)
    axis.set_title(title, fontsize=10)


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(6.4 if panels == 1 else 4.6 * panels, 4.2), layout="constrained",
                                squeeze=False)
    return figure, list(axes[0])


def metric_plot(rows: Sequence[dict[str, Any]], x: str, metric: str, where: dict[str, Any] | None = None,
                title: str = ""):
    """A matplotlib Figure: ``metric`` against swept setting ``x``, one line per setting of the other swept
    keys, each point the mean over its seeds with their min-max as a band and bar."""
    figure, (axis,) = _figure(1)
    _draw(axis, metric_series(rows, x, metric, where), x, metric, title or f"{metric} against {x}")
    return figure


def base_values(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, str]:
    """Each key's most common value among the rows (the first such in row order): a sweep's shared base."""
    values = {}
    for key in keys:
        texts = [_text(r.get(key)) for r in rows if r.get(key) is not None]
        if texts:
            values[key] = max(dict.fromkeys(texts), key=texts.count)
    return values


def ablation_plot(rows: Sequence[dict[str, Any]], metric: str, keys: Sequence[str] | None = None,
                  where: dict[str, Any] | None = None):
    """One panel per swept key (train.seed aside): ``metric`` against that key, the other keys held at
    their most common value (`base_values`), so that one-key-at-a-time sweeps around a base read as
    ablations; panels in the order of `default_axes`. Seeds show as spread; ``where`` keeps only the rows with those values first."""
    rows = [r for r in rows if all(_text(r.get(k)) == _text(v) for k, v in (where or {}).items())]
    if keys is None:  # the key with the most values first, as `default_axes` picks its x
        keys = sorted(swept_columns(rows), key=lambda k: -len({_text(r.get(k)) for r in rows}))
    keys = [k for k in keys if k != "train.seed"]
    figure, axes = _figure(max(len(keys), 1))
    if not keys:
        _draw(axes[0], {}, "", metric, metric)
    for axis, key in zip(axes, keys):
        where = {k: v for k, v in base_values(rows, [k for k in keys if k != key]).items()}
        held = ", ".join(f"{k}={v}" for k, v in where.items())
        series = metric_series([r for r in rows if all(_text(r.get(k)) == v for k, v in where.items())], key, metric)
        _draw(axis, series, key, metric, f"{metric} against {key}" + (f"\n({held})" if held else ""))
    return figure


def swept_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The settings columns of `table_rows` (dotted keys), in table order."""
    return [k for k in _columns(rows) if _KEY.fullmatch(k) and "." in k]
