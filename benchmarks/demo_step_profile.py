"""Where a `make demo` training step's time goes on this CPU: waiting for data, forward, loss, backward,
optimizer, EMA; for each split of the cores between loader processes and compute threads, and with or without
data.precompute_images (`seqtr_lib.precompute`).

The step is the demo's (`seqtr_lib.pipeline` DEMO_OVERRIDES and the task's schedule on the synthetic params,
batch 32 at 128 px), taken apart in the main process with the Trainer's own model, optimizer and EMA. With
``workers`` = 0 the "data" phase is the whole cost of decoding, augmenting and collating a batch; with loader
processes it is only the time the step waits for them. Writes JSON naming the machine::

    python -m seqtr_lib make-synthetic --out data
    python benchmarks/demo_step_profile.py --data-root data --out benchmarks/results/demo_step_profile.json
    python benchmarks/demo_step_profile.py --data-root data --splits 0x2,1x2 --precompute both
    python benchmarks/demo_step_profile.py --data-root data --splits 0x2 --precompute on --amp none,bf16

With held images each object's sample is made on its first draw and reused (`ReferDataset._with_expression`);
the few timed steps here are first draws, so their "data" phase is the first epoch's, not the later epochs'.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from seqtr_lib import distributed
from seqtr_lib.config import load_params
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import build_dataset
from seqtr_lib.engine import Trainer, _set_batchnorm_eval
from seqtr_lib.evaluation import move_batch
from seqtr_lib.execution import machine_description
from seqtr_lib.pipeline import DEMO_OVERRIDES, DEMO_SCHEDULES
from seqtr_lib.precompute import PrecomputedImages

PARAMS = {"box": "params/synthetic_det.yaml", "mask": "params/synthetic_mask.yaml"}
PRECOMPUTE = {"off": (False,), "on": (True,), "both": (False, True)}
PHASES = ("data", "forward", "loss", "backward", "optimizer", "ema")


def profile(task: str, workers: int, threads: int, precompute: bool, steps: int, warmup: int, data_root: Path,
            output_dir: Path, amp: str = "none") -> dict[str, Any]:
    """Mean milliseconds per phase over ``steps`` timed steps after ``warmup`` untimed ones; with ``precompute``
    (data.precompute_images) also the seconds its one-off pass took. ``amp``: train.amp (bf16 autocast on a CPU
    with bf16 units)."""
    torch.set_num_threads(threads)
    overrides = [*DEMO_OVERRIDES, *DEMO_SCHEDULES[task], f"data.data_root={data_root}", f"output_dir={output_dir}",
                 f"data.num_workers={workers}", "train.finetune_from=", f"name=profile_{task}",
                 f"data.precompute_images={str(precompute).lower()}", f"train.amp={amp}"]
    experiment = load_params(PARAMS[task], overrides)
    trainer = Trainer(experiment, distributed.setup("cpu"))
    t = experiment.train
    train_set = build_dataset(experiment, "train", trainer.vocabulary, training=True)
    held, precompute_seconds = None, 0.0
    if precompute:
        started = time.perf_counter()
        held = PrecomputedImages.build(train_set, trainer.model, trainer.device, t.channels_last, t.amp,
                                       progress=False)
        held.attach(train_set)
        precompute_seconds = time.perf_counter() - started
    batches = iter(build_loader(train_set, experiment, training=True, seed=t.seed, epoch=0))
    trainer.forward_model.train()
    if t.freeze_batchnorm:
        _set_batchnorm_eval(trainer.model)
    totals = dict.fromkeys(PHASES, 0.0)
    samples = 0
    for index in range(warmup + steps):
        marks = [time.perf_counter()]
        batch = next(batches)
        batch = move_batch(batch if held is None else held.fill(batch), trainer.device, t.channels_last)
        marks.append(time.perf_counter())
        with nullcontext() if held is None else held.frozen_outputs(trainer.model.backbone, batch):
            outputs = trainer.forward_model(**trainer._forward_inputs(batch))
        outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
        marks.append(time.perf_counter())
        loss = trainer._losses(outputs, batch)["loss"]
        marks.append(time.perf_counter())
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), t.grad_clip, foreach=True)
        trainer.optimizer.step()
        marks.append(time.perf_counter())
        if trainer.ema is not None:
            trainer.ema.update(index)
        marks.append(time.perf_counter())
        if index >= warmup:
            samples += len(batch["metas"])
            for phase, start, end in zip(PHASES, marks, marks[1:]):
                totals[phase] += end - start
    seconds = sum(totals.values())
    return {"task": task, "workers": workers, "threads": threads, "precompute_images": precompute, "amp": amp,
            "precompute_seconds": precompute_seconds, "steps": steps, "samples": samples,
            "ms_per_step": 1000 * seconds / steps, "samples_per_s": samples / seconds,
            "ms_per_phase": {phase: 1000 * value / steps for phase, value in totals.items()},
            "share_per_phase": {phase: value / seconds for phase, value in totals.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="the synthetic set (make-synthetic)")
    parser.add_argument("--tasks", default="box,mask")
    parser.add_argument("--splits", default="0x2,1x2,2x2,2x1",
                        help="loader processes x compute threads, comma-separated (default 0x2,1x2,2x2,2x1)")
    parser.add_argument("--precompute", default="off", choices=("off", "on", "both"),
                        help="data.precompute_images for each case (both: each case twice)")
    parser.add_argument("--amp", default="none", help="train.amp values, comma-separated (none,bf16: each case twice)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_step_profile.json"))
    args = parser.parse_args(argv)
    if not (args.data_root / "annotations" / "synthetic" / "instances.json").is_file():
        parser.exit(2, f"error: no synthetic set in {args.data_root}; make one with "
                       f"`python -m seqtr_lib make-synthetic --out {args.data_root}`\n")
    cases = []
    for task in args.tasks.split(","):
        for split, precompute, amp in itertools.product(args.splits.split(","), PRECOMPUTE[args.precompute],
                                                        args.amp.split(",")):
            workers, threads = (int(n) for n in split.split("x"))
            with tempfile.TemporaryDirectory() as output_dir:
                case = profile(task, workers, threads, precompute, args.steps, args.warmup, args.data_root,
                               Path(output_dir), amp)
            held = f", held images ({case['precompute_seconds']:.1f} s once)" if precompute else ""
            autocast = f", train.amp {amp}" if amp != "none" else ""
            print(f"{task} {workers} workers x {threads} threads{held}{autocast}: {case['ms_per_step']:.0f} ms/step, "
                  f"{case['samples_per_s']:.0f} samples/s; "
                  + ", ".join(f"{p} {100 * s:.0f} %" for p, s in case["share_per_phase"].items()), flush=True)
            cases.append(case)
    record = {"benchmark": "demo_step_profile", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine_description(), "data_root": str(args.data_root), "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
