"""Evaluation throughput: expressions per second over a split, end to end (loader, encode, decode, metrics).

The full 640 px model (random weights: speed does not depend on them, except that a mask decode stops
early once every sequence has emitted EOS, so the EOS logit is suppressed and every mask runs all its
steps) evaluates the val split of a synthetic set written at --image-size, box and mask, with the
cached decoder and with `GraphDecoder` (CUDA graphs on a GPU), through `seqtr_lib.evaluation.evaluate_model`.

    python benchmarks/bench_eval.py --data-root /tmp/seqtr_synthetic_640 --out benchmarks/results/bench_eval.json
    python benchmarks/bench_eval.py --tiny --data-root /tmp/tiny --out /tmp/bench_eval.json   # CPU check, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from bench_train import TINY_MODEL, device_name, synchronize  # benchmarks/ is on sys.path when this script runs
from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.config import DataConfig, Experiment, ModelConfig, SyntheticConfig, TrainConfig
from seqtr_lib.dataset_check import prepare_synthetic
from seqtr_lib.data.refer import load_vocabulary
from seqtr_lib.evaluation import evaluate_model
from seqtr_lib.model.seqtr import build_model


def data_config(args: argparse.Namespace) -> DataConfig:
    """The synthetic set of --data-root (--images images of --image-size px), read at --image-size."""
    return DataConfig(dataset="synthetic", data_root=str(args.data_root), image_size=args.image_size,
                      eval_batch_size=args.batch_size, num_workers=args.workers,
                      synthetic=SyntheticConfig(num_images=args.images, image_size=args.image_size))


def measure(task: str, cuda_graphs: bool, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model_config = ModelConfig(task=task, **(TINY_MODEL if args.tiny else {}))
    experiment = Experiment(name="bench_eval", output_dir="/tmp", model=model_config, data=data_config(args),
                            train=TrainConfig(amp=args.amp if device.type == "cuda" else "none", channels_last=True))
    vocabulary = load_vocabulary(experiment)
    torch.manual_seed(0)
    model = build_model(model_config, vocabulary).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        model.predictor[-1].bias[model.layout.eos] = -1e4  # every mask decode runs all its steps
    # Warm-up: loader start-up, cuDNN's first calls and the graph captures stay out of the timing.
    evaluate_model(model, experiment, vocabulary, "val", device, limit=2 * args.batch_size, cuda_graphs=cuda_graphs)
    synchronize(device)
    started = time.perf_counter()
    outcome = evaluate_model(model, experiment, vocabulary, "val", device, limit=args.limit or None,
                             cuda_graphs=cuda_graphs)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"task": task, "cuda_graphs": cuda_graphs, "expressions": outcome["num_expressions"],
            "seconds": round(seconds, 2), "expressions_per_s": round(outcome["num_expressions"] / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="synthetic set (written there when absent)")
    parser.add_argument("--images", type=int, default=2000, help="images to write when the set is absent")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small model at 64 px: checks the script on a CPU")
    parser.add_argument("--image-size", type=int, default=None, help="default 640; tiny: 64")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128; tiny: 4")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N expressions (0: all)")
    parser.add_argument("--amp", choices=("bf16", "none"), default="bf16")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--tasks", default="box,mask")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_eval.json"))
    args = parser.parse_args(argv)
    args.image_size = args.image_size or (64 if args.tiny else 640)
    args.batch_size = args.batch_size or (4 if args.tiny else 128)
    device = torch.device(args.device)
    # --workers 0 loads in this process; writing the set takes at least one process.
    print(prepare_synthetic(Experiment(data=data_config(args)), workers=max(1, args.workers)), flush=True)
    report: dict[str, Any] = {
        "benchmark": "bench_eval",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device), "torch": torch.__version__,
        "settings": {"data_root": str(args.data_root), "image_size": args.image_size, "batch_size": args.batch_size,
                     "amp": args.amp if device.type == "cuda" else "none", "workers": args.workers,
                     "tiny": args.tiny, "model": dataclasses.asdict(ModelConfig(**(TINY_MODEL if args.tiny else {})))},
        "results": [],
    }
    for task in args.tasks.split(","):
        for cuda_graphs in (False, True):
            result = measure(task, cuda_graphs, args, device)
            report["results"].append(result)
            write_json_atomic(args.out, report)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
