"""Does a CPU execution keep a trained model's predictions? Tokens, metric and recheck rate against float32.

Evaluates one checkpoint on the first ``--limit`` expressions of a split twice or more: as float32 (no
execution step: the reference) and under each ``--executions`` choice (`seqtr_lib.execution`; ``auto`` is
what `pick_execution` takes on this machine). For each it records the share of expressions whose decoded
prediction equals float32's, the change of the headline metric, the recheck tally (bf16 + recheck: samples
redone in float32, and whether bf16 was given up) and the seconds it took. The JSON names the machine.

Ask it of your own model before trusting a fast execution with it, e.g. the released synthetic box weights
on scenes they were not trained on (their backbone is too small for auto to take bf16, so it is named)::

    python -m seqtr_lib make-synthetic --out data/held_out --num-images 600 --seed 1
    python benchmarks/cpu_agreement.py --checkpoint weights/synthetic_det.pt --data-root data/held_out \
        --executions auto,channels_last+bf16+fold_bn+recheck --limit 500 --out agreement.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from pathlib import Path
from typing import Any

import torch

from seqtr_lib import execution as ex
from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.config import load_params
from seqtr_lib.evaluation import evaluate_model, load_trained
from seqtr_lib.metrics import headline_score

PREDICTION_KEYS = ("pred_box", "pred_polygon")


def agreement(reference: dict[str, Any], other: dict[str, Any]) -> float:
    """The share of expressions whose decoded prediction (box corners, polygon vertices) equals float32's:
    equal iff the tokens are (decoding is a fixed map of the tokens)."""
    pairs = list(zip(reference["records"], other["records"]))
    assert all((r["ann_index"], r["expression_index"]) == (o["ann_index"], o["expression_index"]) for r, o in pairs)
    same = [all(r.get(key) == o.get(key) for key in PREDICTION_KEYS) for r, o in pairs]
    return sum(same) / len(same)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--params", type=Path, help="params whose data section to read (default: the checkpoint's)")
    parser.add_argument("--data-root", type=Path, help="read the split from here instead of the params' data_root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=200, help="the split's first N expressions")
    parser.add_argument("--executions", default="auto,channels_last+bf16+fold_bn",
                        help="comma-separated execution specs compared with fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stored, vocabulary, models = load_trained(args.checkpoint)
    model = models["ema"] if "ema" in models else models["raw"]
    experiment = load_params(args.params, start_files=False) if args.params else stored
    if args.data_root:
        experiment = dataclasses.replace(experiment, data=dataclasses.replace(experiment.data, data_root=str(args.data_root),
                                                                              num_workers=0))
    cpu = torch.device("cpu")
    report: dict[str, Any] = {
        "benchmark": "cpu_agreement",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": ex.machine_description(), "checkpoint": str(args.checkpoint),
        "task": experiment.model.task, "image_size": experiment.data.image_size, "split": args.split,
        "limit": args.limit, "weights": "ema" if "ema" in models else "raw", "results": []}

    def timed(execution: ex.Execution | None) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        outcome = evaluate_model(model, experiment, vocabulary, args.split, cpu, limit=args.limit,
                                 execution=execution)
        return outcome, time.perf_counter() - started

    evaluate_model(model, experiment, vocabulary, args.split, cpu, limit=1)  # untimed: first-call costs
    reference, seconds = timed(ex.FP32)
    task = experiment.model.task
    report["num_expressions"] = reference["num_expressions"]
    report["results"].append({"execution": "fp32", "seconds": round(seconds, 2), "metrics": reference["metrics"]})
    write_json_atomic(args.out, report)
    for spec in args.executions.split(","):
        execution = ex.resolve(spec, cpu, experiment.model, experiment.data.image_size)
        outcome, seconds = timed(execution)
        row = {"execution": spec, "resolved": execution.describe(), "seconds": round(seconds, 2),
               "speedup": round(report["results"][0]["seconds"] / seconds, 3),
               "equal_to_fp32": round(agreement(reference, outcome), 4),
               "metric_change_points": round(headline_score(outcome["metrics"], task)
                                             - headline_score(reference["metrics"], task), 3),
               "metrics": outcome["metrics"]}
        if "recheck" in outcome:
            row["recheck"] = {**dataclasses.asdict(outcome["recheck"]), "ran_as": outcome["ran_as"]}
        report["results"].append(row)
        write_json_atomic(args.out, report)
        print({k: v for k, v in row.items() if k != "metrics"}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
