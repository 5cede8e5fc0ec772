"""SeqTR's published numbers (the tables of the original project's README), and the user's runs beside them.

``PAPER`` holds every cell of those tables once: REC Acc@0.5 (detection) and RES mIoU (segmentation) in
percent on RefCOCO, RefCOCO+ and RefCOCOg, for the three models the README lists:

- ``seqtr``: the visual encoder starts from darknet.weights (``params/<dataset>_det.yaml``, ``_mask.yaml``);
- ``seqtr_yolov3``: it starts from yolov3.weights (the README's "SeqTR*"; box only);
- ``pretrained``: pre-trained on the mixed set, then fine-tuned (``params/refcoco-unc_det_finetune.yaml``).

`paper_comparison` lays a list of run rows (`seqtr_lib.compare.collect_runs`) into those cells with the
paper's value, the run's and the difference; `paper_markdown` prints it one table per dataset, as the
README does. The README does not publish the ablations (points, bins, shuffled order): they are not here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

MODELS = {"seqtr": "SeqTR", "seqtr_yolov3": "SeqTR* (yolov3.weights)", "pretrained": "pre-trained + fine-tuned SeqTR"}
TASK_WORDS = {"box": "detection (Acc@0.5)", "mask": "segmentation (mIoU)"}
METRIC = {"box": "acc@0.5", "mask": "miou"}
SPLITS = {"refcoco-unc": ("val", "testA", "testB"), "refcocoplus-unc": ("val", "testA", "testB"),
          "refcocog-umd": ("val", "test"), "refcocog-google": ("val",)}

# dataset, task, model, split, value. RefCOCOg's "val-g" is refcocog-google val, "val-u"/"test-u"
# refcocog-umd val/test. The README prints the pre-trained RefCOCO segmentation testB as "69/82": 69.82.
_TABLE = """\
refcoco-unc,box,seqtr,val,81.23
refcoco-unc,box,seqtr,testA,85.00
refcoco-unc,box,seqtr,testB,76.08
refcoco-unc,box,seqtr_yolov3,val,83.72
refcoco-unc,box,seqtr_yolov3,testA,86.51
refcoco-unc,box,seqtr_yolov3,testB,81.24
refcoco-unc,box,pretrained,val,87.00
refcoco-unc,box,pretrained,testA,90.15
refcoco-unc,box,pretrained,testB,83.59
refcoco-unc,mask,seqtr,val,67.26
refcoco-unc,mask,seqtr,testA,69.79
refcoco-unc,mask,seqtr,testB,64.12
refcoco-unc,mask,pretrained,val,71.70
refcoco-unc,mask,pretrained,testA,73.31
refcoco-unc,mask,pretrained,testB,69.82
refcocoplus-unc,box,seqtr,val,68.82
refcocoplus-unc,box,seqtr,testA,75.37
refcocoplus-unc,box,seqtr,testB,58.78
refcocoplus-unc,box,seqtr_yolov3,val,71.45
refcocoplus-unc,box,seqtr_yolov3,testA,76.26
refcocoplus-unc,box,seqtr_yolov3,testB,64.88
refcocoplus-unc,box,pretrained,val,78.69
refcocoplus-unc,box,pretrained,testA,84.51
refcocoplus-unc,box,pretrained,testB,71.87
refcocoplus-unc,mask,seqtr,val,54.14
refcocoplus-unc,mask,seqtr,testA,58.93
refcocoplus-unc,mask,seqtr,testB,48.19
refcocoplus-unc,mask,pretrained,val,63.04
refcocoplus-unc,mask,pretrained,testA,66.73
refcocoplus-unc,mask,pretrained,testB,58.97
refcocog-umd,box,seqtr,val,71.35
refcocog-umd,box,seqtr,test,71.58
refcocog-umd,box,seqtr_yolov3,val,74.86
refcocog-umd,box,seqtr_yolov3,test,74.21
refcocog-google,box,seqtr_yolov3,val,71.50
refcocog-umd,box,pretrained,val,82.69
refcocog-umd,box,pretrained,test,83.37
refcocog-umd,mask,seqtr,val,55.67
refcocog-umd,mask,seqtr,test,55.64
refcocog-umd,mask,pretrained,val,64.69
refcocog-umd,mask,pretrained,test,65.74
"""

PAPER: list[dict[str, Any]] = [
    {"dataset": d, "task": t, "model": m, "split": s, "value": float(v)}
    for d, t, m, s, v in csv.reader(io.StringIO(_TABLE))
]


def paper_model(config: dict[str, Any]) -> str:
    """Which of the README's models a run's config trains: ``pretrained`` when it fine-tunes a checkpoint,
    ``seqtr_yolov3`` when its DarkNet starts from yolov3.weights, else ``seqtr``."""
    if (config.get("train") or {}).get("finetune_from"):
        return "pretrained"
    if "yolov3" in str((config.get("model") or {}).get("darknet_weights") or ""):
        return "seqtr_yolov3"
    return "seqtr"


def paper_comparison(runs: Sequence[dict[str, Any]], weights: str = "ema") -> list[dict[str, Any]]:
    """One row per published cell: dataset, task, model, split, ``paper``, ``yours`` (the mean over the
    matching runs' ``weights`` scores, raw where a run kept no EMA; None without a run), ``diff`` (yours -
    paper) and ``runs`` (their names). A run matches by its config's dataset, task and `paper_model`;
    each run row needs ``config`` and ``metrics`` (a metrics.json), as `compare.collect_runs` gives."""
    rows = []
    for cell in PAPER:
        scores, names = [], []
        for run in runs:
            config, metrics = run.get("config") or {}, run.get("metrics") or {}
            if ((config.get("data") or {}).get("dataset"), (config.get("model") or {}).get("task")) != (
                    cell["dataset"], cell["task"]) or paper_model(config) != cell["model"]:
                continue
            split = (metrics.get("splits") or {}).get(cell["split"]) or {}
            chosen = split.get(weights) or split.get("raw") or {}
            if METRIC[cell["task"]] in chosen:
                scores.append(float(chosen[METRIC[cell["task"]]]))
                names.append(run["name"])
        yours = sum(scores) / len(scores) if scores else None
        rows.append({**{k: cell[k] for k in ("dataset", "task", "model", "split")}, "paper": cell["value"],
                     "yours": yours, "diff": None if yours is None else yours - cell["value"], "runs": names})
    return rows


def paper_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """`paper_comparison` as the README lays it out: one table per dataset, a row per model and task, a
    column per split holding ``paper · yours (diff)``; only the paper's value where no run exists."""
    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return ""
        if row["yours"] is None:
            return f"{row['paper']:.2f}"
        return f"{row['paper']:.2f} · {row['yours']:.2f} ({row['diff']:+.2f})"

    parts = []
    for dataset, splits in SPLITS.items():
        here = [r for r in rows if r["dataset"] == dataset]
        if not here:
            continue
        lines = [f"**{dataset}**: paper · yours (yours - paper)", "",
                 "| model | task | " + " | ".join(splits) + " |", "|---|---|" + "---:|" * len(splits)]
        for task in ("box", "mask"):
            for model in MODELS:
                cells = {r["split"]: r for r in here if r["task"] == task and r["model"] == model}
                if cells:
                    lines.append(f"| {MODELS[model]} | {TASK_WORDS[task]} | "
                                 + " | ".join(cell(cells.get(s)) for s in splits) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
