"""`make demo` from a fresh clone, several runs in a row: its total, each notebook's time and the scores it prints.

Each run clones this repository's HEAD into a temporary folder (so ``data/`` and ``outputs/`` start empty: the
synthetic set is made, both experiments train, evaluate and draw, and 05 compares them), links this checkout's
``.venv`` into it (the install is not timed) and runs what `make demo` runs there,
``python -m seqtr_lib.pipeline --demo``. Appends one record per run to the JSON (which names the machine)::

    python benchmarks/demo_timing.py --runs 3 --out docs/results/demo_runs.json
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/demo_timing.py --runs 1 --out docs/results/demo_runs.json

Per notebook: the seconds papermill recorded for its cells (kernel start-up is in the total, not in these).
Scores: notebook 02's metrics.json (the demo scores the first 1,000 val expressions, in whole batches), and
each epoch's validation from the run's log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqtr_lib.atomic import write_json_atomic  # noqa: E402
from seqtr_lib.execution import machine_description  # noqa: E402

EXPERIMENTS = {"synthetic_det": ("box", "acc@0.5"), "synthetic_mask": ("mask", "miou")}


def notebook_seconds(path: Path) -> float:
    """The sum of papermill's per-cell durations of an executed notebook."""
    cells = json.loads(path.read_text())["cells"]
    return sum(cell["metadata"].get("papermill", {}).get("duration") or 0.0 for cell in cells)


def run_once(clone: Path) -> dict[str, Any]:
    """One demo in ``clone``: its wall seconds, the total it printed, and `read_outputs`."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "seqtr_lib.pipeline", "--demo"], cwd=clone,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the demo failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    printed = [line for line in result.stdout.splitlines() if line.startswith("all notebooks ran in")]
    return {"wall_seconds": round(wall, 1), "printed_total": printed[-1] if printed else None,
            **read_outputs(clone / "outputs")}


def read_outputs(outputs: Path) -> dict[str, Any]:
    """What a demo left in ``outputs``: each notebook's seconds, 02's val scores, each epoch's validation."""
    record: dict[str, Any] = {"notebook_seconds": {
        "05": round(notebook_seconds(next((outputs / "compare" / "notebooks").glob("*.ipynb"))), 1)}}
    for name, (task, metric) in EXPERIMENTS.items():
        run = outputs / name
        record["notebook_seconds"][task] = {path.name[:2]: round(notebook_seconds(path), 1)
                                            for path in sorted((run / "notebooks").glob("0*.ipynb"))}
        val = json.loads((run / "metrics.json").read_text())["splits"]["val"]
        record[task] = {metric: {weights: round(scores[metric], 2) for weights, scores in val.items()},
                        "expressions_scored": val["ema"]["num_expressions"]}
        epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        record[task]["val_per_epoch"] = [
            {"epoch": e["epoch"], "raw": round(e["val"]["raw"][metric], 2), "ema": round(e["val"]["ema"][metric], 2),
             "train_seconds": round(e["train_seconds"], 1), "samples_per_s": round(e["samples_per_s"], 1)}
            for e in epochs if e.get("type") == "epoch"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_runs.json"))
    parser.add_argument("--note", default="", help="what else ran on the machine, if anything")
    args = parser.parse_args(argv)
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        parser.exit(2, "error: no .venv here; run `make install` first (the install is not part of the timing)\n")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    document = json.loads(args.out.read_text()) if args.out.is_file() else {
        "benchmark": "make demo from a fresh clone", "command": "python -m seqtr_lib.pipeline --demo (make demo)",
        "runs": []}
    for index in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="seqtr-demo-") as folder:
            clone = Path(folder) / "seqtr"
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
            (clone / ".venv").symlink_to(venv)
            print(f"run {index + 1}/{args.runs} in {clone}", flush=True)
            record = run_once(clone)
        record.update(date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), commit=commit, machine=machine_description(),
                      onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"), note=args.note)
        document["runs"].append(record)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, document)
        minutes, seconds = divmod(round(record["wall_seconds"]), 60)
        print(f"run {index + 1}: {minutes} min {seconds} s; box {record['box']['acc@0.5']}; "
              f"mask {record['mask']['miou']}", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
