"""What a run wrote, read back and summarised: its training log, its metrics, its per-expression predictions.

- `read_log`: the records of ``log.jsonl`` (notebook 01's curves, benchmarks);
- `metrics_table`: ``evaluation.evaluate``'s results as aligned text;
- `read_predictions`, `expression_ious`, `category_breakdown`, `target_breakdown`, `breakdown_table`: notebook
  02's analysis of the per-expression records ``evaluation.evaluate`` saves under ``predictions/``;
- `cpu_model`: the processor a result was measured on, for the JSON that records it.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqtr_lib.config import Experiment
from seqtr_lib.generalised_metrics import EXPRESSION_TYPES, targets_named
from seqtr_lib.viz import METRIC_LABELS
from seqtr_lib.text import clean_expression

# Groups of expression lengths for the breakdown: (label, most words in the group).
LENGTH_BUCKETS = (("up to 3 words", 3), ("4-6 words", 6), ("7-9 words", 9), ("10+ words", 10**9))


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/log.jsonl`` (``type`` "step" or "epoch"); a torn last line is ignored."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training log {path}; rank 0 writes it (on a multi-node run, look on the "
                                "first node) once training has logged its first steps")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the writer may be mid-line while a live view reads
            continue
    return records


def metrics_table(results: dict[str, Any]) -> str:
    """evaluation.evaluate's results as aligned text: one row per split and weights, metrics in percent."""
    rows = [(split, weights, metrics) for split, per_split in results["splits"].items()
            for weights, metrics in per_split.items()]
    # a generalised run's metrics per expression type are `target_breakdown`'s table, not columns here
    columns = [k for k in rows[0][2] if k not in ("num_expressions", "skipped_images")
               and k.split("/")[0] not in EXPRESSION_TYPES] if rows else []
    lines = [f"{'split':<8}{'weights':<14}" + "".join(f"{c:>13}" for c in columns) + f"{'expressions':>13}"]
    for split, weights, metrics in rows:
        lines.append(f"{split:<8}{weights:<14}" + "".join(f"{metrics[c]:>13.2f}" for c in columns)
                     + f"{metrics['num_expressions']:>13}")
    return "\n".join(lines)


def read_predictions(experiment: Experiment, split: str, weights: str = "ema") -> list[dict[str, Any]]:
    """The per-expression records evaluation.evaluate wrote for a split and weight set."""
    path = experiment.run_dir / "predictions" / f"{split}_{weights}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no predictions {path}: evaluate split {split!r} first (weights are 'raw', "
                                "'ema' when the checkpoint has EMA weights, and '<weights>_shuffled')")
    return json.loads(path.read_text())


def expression_ious(records: Sequence[dict[str, Any]], task: str) -> np.ndarray:
    """Each record's IoU with its ground truth as the evaluation scored it, float64 (N,).

    Task box or multi: the ``box_iou`` the records carry; task mask: their ``mask_iou``. The mean is the
    evaluation's Acc/mIoU basis. A generalised run's records (`score_name`): a box answer's GREC F1, a mask
    answer's IoU of the union of its contours with the union of the targets (1 for "nothing" rightly answered).
    """
    key = "mask_iou" if task == "mask" else "f1" if generalised_records(records) else "box_iou"
    if any(key not in record for record in records):
        raise KeyError(f"these prediction records have no {key}; evaluate the split again (python -m seqtr_lib "
                       "evaluate, or notebook 02) to write records that carry it")
    return np.array([record[key] for record in records], dtype=np.float64)


def generalised_records(records: Sequence[dict[str, Any]]) -> bool:
    """Whether these are a generalised run's records (zero or more objects per expression)."""
    return bool(records) and "gt_boxes" in records[0]


def score_name(records: Sequence[dict[str, Any]], task: str) -> str:
    """What `expression_ious` returns for these records: "IoU", or "F1" for a generalised box run's."""
    return "F1" if task != "mask" and generalised_records(records) else "IoU"


def target_breakdown(metrics: Mapping[str, float], records: Sequence[dict[str, Any]]
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """A generalised run's metrics by how many objects the expression names (no target, one, several), as
    `category_breakdown` groups them: {"targets named": {type: {"n", metric: value}}}.

    ``metrics``: one split's and weights' entry of the evaluation's results, which scores each type
    (`evaluation.generalised_metrics_from_records`); ``records``: the same evaluation's records, counted per
    type. A type absent from the split is left out.
    """
    counts = targets_named(records)
    members = {}
    for name, of_type in EXPRESSION_TYPES.items():
        scored = {key.removeprefix(f"{name}/"): value for key, value in metrics.items() if key.startswith(f"{name}/")}
        if scored:
            members[name.replace("_", " ")] = {"n": int(of_type(counts).sum()), **scored}
    return {"targets named": members}


def _length_bucket(expression: str) -> str:
    words = len(clean_expression(expression))
    return next(label for label, most in LENGTH_BUCKETS if words <= most)


def category_breakdown(records: Sequence[dict[str, Any]], ious: np.ndarray,
                       annotation: Callable[[int], Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean IoU and Acc@0.5 (percent) by expression length and, where annotated, by expression type.

    ``annotation(ann_index)`` is a record's annotation entry (e.g. ``ReferDataset.annotation``). The
    synthetic set records each expression's type (attribute, size, position, relation) in its field
    ``expression_types``. Returns {grouping: {group: {"n", "miou", "acc@0.5"}}}.
    """
    groups: dict[str, dict[str, list[float]]] = {"expression length": {}}
    for record, iou in zip(records, ious):
        groups["expression length"].setdefault(_length_bucket(record["expression"]), []).append(float(iou))
        types = annotation(record["ann_index"]).get("expression_types")
        if types:
            groups.setdefault("expression type", {}).setdefault(types[record["expression_index"]], []).append(float(iou))
    order = {label: i for i, (label, _) in enumerate(LENGTH_BUCKETS)}
    return {grouping: {name: {"n": len(values), "miou": 100 * float(np.mean(values)),
                              "acc@0.5": 100 * float(np.mean(np.asarray(values) >= 0.5))}
                       for name, values in sorted(members.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))}
            for grouping, members in groups.items()}


def breakdown_table(breakdown: dict[str, dict[str, dict[str, float]]]) -> str:
    """category_breakdown or target_breakdown as aligned text: a row per group, a column per metric (a metric
    a group cannot have, such as N-acc where every expression names an object, is blank)."""
    lines = []
    for grouping, members in breakdown.items():
        keys = [key for key in METRIC_LABELS if any(key in v for v in members.values())]
        lines.append(f"{grouping:<20}{'n':>7}" + "".join(f"{METRIC_LABELS[key]:>11}" for key in keys))
        lines += [f"  {name:<18}{v['n']:>7}" + "".join(f"{v[key]:>11.2f}" if key in v else " " * 11 for key in keys)
                  for name, v in members.items()]
    return "\n".join(lines)


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
