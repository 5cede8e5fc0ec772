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

An export of the checkpoint (`python -m seqtr_lib export`) is compared too with ``--exported DIR``: each of
``--runtimes`` at each of ``--precisions`` (int8 runs with its recheck). ``--record`` writes the int8 row's
agreement into the export's manifest, where ``precision auto`` reads it (`seqtr_lib.runtime.choose_precision`)::

    python benchmarks/cpu_agreement.py --checkpoint weights/synthetic_det.pt --exported exported/synthetic_det \
        --executions "" --precisions fp32,int8 --limit 1000 --record --out agreement_exported.json
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
from seqtr_lib.export import MANIFEST, read_manifest
from seqtr_lib.metrics import headline_score
from seqtr_lib.runtime import ExportedSeqTR

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
    parser.add_argument("--exported", type=Path, help="an export of the checkpoint (seqtr_lib export) to compare too")
    parser.add_argument("--runtimes", default="auto", help="comma-separated runtimes for --exported")
    parser.add_argument("--precisions", default="fp32,int8", help="comma-separated precisions for --exported")
    parser.add_argument("--int8-margins", default="",
                        help="with --exported: also the share of expressions int8 keeps equal, and the share rechecked, "
                             "at each of these recheck margins (comma-separated logits, e.g. 0.02,0.1,0.2), from one "
                             "int8 pass without recheck")
    parser.add_argument("--record", action="store_true",
                        help="write the int8 agreement into the export's manifest (read by precision auto)")
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
    def compared(name: str, resolved: str, outcome: dict[str, Any], seconds: float) -> dict[str, Any]:
        row = {"execution": name, "resolved": resolved, "seconds": round(seconds, 2),
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
        return row

    for spec in filter(None, args.executions.split(",")):
        execution = ex.resolve(spec, cpu, experiment.model, experiment.data.image_size)
        outcome, seconds = timed(execution)
        compared(spec, execution.describe(), outcome, seconds)
    for runtime in filter(None, args.runtimes.split(",") if args.exported else []):
        for precision in filter(None, args.precisions.split(",")):
            exported = ExportedSeqTR(args.exported, runtime, precision, threads=torch.get_num_threads())
            evaluate_model(exported, experiment, vocabulary, args.split, cpu, limit=1)  # untimed: first-call costs
            if exported.tally is not None:
                exported.tally = ex.RecheckTally()  # count the measured expressions only
            started = time.perf_counter()
            outcome = evaluate_model(exported, experiment, vocabulary, args.split, cpu, limit=args.limit)
            row = compared(f"exported {exported.runtime} {precision}", exported.name, outcome,
                           time.perf_counter() - started)
            if args.record and precision == "int8":
                record_agreement(args.exported, exported.runtime, row, report)
        if args.int8_margins:
            margins = [float(m) for m in args.int8_margins.split(",")]
            report.setdefault("int8_margins", []).append(
                {"runtime": runtime, **int8_margins(args.exported, runtime, experiment, vocabulary, args.split,
                                                    args.limit, margins)})
            write_json_atomic(args.out, report)
            print(report["int8_margins"][-1], flush=True)
    return 0


def int8_margins(directory: Path, runtime: str, experiment: Any, vocabulary: Any, split: str, limit: int,
                 margins: list[float]) -> dict[str, Any]:
    """For each recheck margin m: the share of the split's first ``limit`` expressions whose int8 tokens, or
    float32's where int8's smallest lead was under m, equal float32's; and the share with a lead under m."""
    from seqtr_lib import runtime as rt
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset

    fp32 = ExportedSeqTR(directory, runtime, "fp32", threads=torch.get_num_threads())
    int8 = ExportedSeqTR(directory, runtime, "int8", threads=torch.get_num_threads())
    leads, equal = [], []
    saved, rt.RECHECK_MARGIN = rt.RECHECK_MARGIN, 0.0  # int8's own tokens and leads, nothing redone
    try:
        dataset = build_dataset(experiment, split, vocabulary, training=False)
        for batch in build_loader(dataset, experiment, training=False, seed=experiment.train.seed, epoch=0):
            if not batch["metas"]:
                continue
            inputs = (batch["images"], batch["pad_mask"], batch["expression_ids"])
            reference, fast = fp32.generate(*inputs), int8.generate(*inputs)
            tokens = [key for key in reference if key.endswith("_tokens")]
            equal += torch.stack([(reference[k] == fast[k]).all(dim=1) for k in tokens]).all(dim=0).tolist()
            leads += fast["min_margin"].tolist()
            if len(equal) >= limit:
                break
    finally:
        rt.RECHECK_MARGIN = saved
    rows = []
    for margin in margins:
        rechecked = [lead < margin for lead in leads]
        rows.append({"margin": margin, "equal_to_fp32": round(sum(r or e for r, e in zip(rechecked, equal)) / len(equal), 4),
                     "rechecked": round(sum(rechecked) / len(equal), 4)})
    return {"expressions": len(equal), "equal_without_recheck": round(sum(equal) / len(equal), 4), "margins": rows}


def record_agreement(directory: Path, runtime: str, row: dict[str, Any], report: dict[str, Any]) -> None:
    """Store an int8 row's agreement in the export's manifest, per runtime (each has its own int8 kernels;
    `seqtr_lib.runtime.choose_precision` reads it)."""
    manifest = read_manifest(directory)
    measured = {key: row[key] for key in ("equal_to_fp32", "metric_change_points", "resolved")}
    measured.update(recheck=row.get("recheck"), split=report["split"], expressions=report["num_expressions"],
                    date=report["date"], cpu=report["machine"]["cpu"], checkpoint=report["checkpoint"])
    manifest.setdefault("agreement", {})[runtime] = measured
    write_json_atomic(directory / MANIFEST, manifest)


if __name__ == "__main__":
    raise SystemExit(main())
