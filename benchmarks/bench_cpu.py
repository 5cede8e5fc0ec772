"""The paper's configuration on a CPU under each execution choice (`seqtr_lib.execution`), side by side.

SeqTR at the paper's size (640 px, DarkNet-53, 1,000 bins, 6 encoder + 3 decoder layers; random weights),
box and mask:

    inference   greedy `generate` of one image (batch 1), as `Grounder.predict` runs it
    evaluation  a batch of 16, as `evaluate` runs it
    training    `Trainer.step` on a batch of 2 (forward, loss, backward, clip, Adam, EMA), the paper
                params' recipe (frozen DarkNet but its last two modules, EMA); fp32, channels_last and
                channels_last + bf16 autocast (train.amp bf16)
    synthetic   the embedded default (params/synthetic_det.yaml's model, 128 px, or each of
                ``--synthetic-sizes``, e.g. 128,192: the released weights run at 192), batch 1 and 64
    exported    the paper's model exported (`seqtr_lib.export`) and run by each installed runtime
                (`seqtr_lib.runtime`: OpenVINO, ONNX Runtime) at float32 and with the int8 encoder, batch 1,
                beside torch's float32 and auto; and `Grounder.predict` of a 640 x 480 image (what the widget
                waits for) with torch auto and each runtime. The int8 encoder is calibrated on random images
                (timing only: random weights say nothing of agreement, benchmarks/cpu_agreement.py measures
                it), and timed with no sample rechecked, the cost of a sample whose choices were no near-ties

The choices of a section are timed interleaved (one call of each in turn, ``--repeats`` rounds after a
warm-up round), so that other work on a shared machine slows them alike; each figure is the median, and
``speedup`` is fp32's median over the choice's. ``auto`` is what `execution.pick_execution` chose on this
machine. ``autocast_whole_model`` (benchmark only) is the whole of `generate` under bf16 autocast, the
simplest bf16 execution, which moves too many tokens to be the default (see seqtr_lib/execution.py).
The JSON names the CPU, its flags, torch's bf16 detection and the load average before and after (other
processes on the machine). To emulate a CPU without bf16 units, cap oneDNN below them::

    python benchmarks/bench_cpu.py --out docs/results/bench_cpu.json
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_cpu.py --sections inference,synthetic \
        --out docs/results/bench_cpu_avx2.json
    python benchmarks/bench_cpu.py --quick --out /tmp/bench_cpu.json    # a check of the script, minutes
    python benchmarks/bench_cpu.py --sections exported --out docs/results/bench_cpu_exported.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import EXPRESSIONS, synthetic_batch  # noqa: E402

from seqtr_lib import distributed  # noqa: E402
from seqtr_lib import execution as ex  # noqa: E402
from seqtr_lib.atomic import write_json_atomic  # noqa: E402
from seqtr_lib.config import REPOSITORY, experiment_from_dict  # noqa: E402
from seqtr_lib.data.refer import scene_classes  # noqa: E402
from seqtr_lib.engine import Trainer  # noqa: E402
from seqtr_lib.model.seqtr import build_model  # noqa: E402
from seqtr_lib.text import Vocabulary  # noqa: E402

VOCABULARY = Vocabulary.build(EXPRESSIONS)
INFERENCE_CHOICES = ("fp32", "channels_last", "channels_last+fold_bn", "channels_last+bf16+fold_bn",
                     "channels_last+bf16+fold_bn+recheck", "autocast_whole_model")
EVALUATION_CHOICES = ("fp32", "channels_last+fold_bn", "channels_last+bf16+fold_bn",
                      "channels_last+bf16+fold_bn+recheck")
TRAINING_CHOICES = {"fp32": ("none", False), "channels_last": ("none", True), "channels_last+bf16": ("bf16", True)}


def paper_experiment(task: str) -> Any:
    """params/refcoco-unc_{det,mask}.yaml without their weight files (random DarkNet and word vectors)."""
    raw = yaml.safe_load((REPOSITORY / "params" / f"refcoco-unc_{'det' if task == 'box' else 'mask'}.yaml").read_text())
    raw["model"].update(darknet_weights=None, word_vectors="random")
    return experiment_from_dict(raw)


def synthetic_experiment(image_size: int | None = None) -> Any:
    raw = yaml.safe_load((REPOSITORY / "params" / "synthetic_det.yaml").read_text())
    raw["model"].update(darknet_weights=None, word_vectors="random")
    if image_size:
        raw["data"]["image_size"] = image_size
    return experiment_from_dict(raw)


def inputs(batch: int, image_size: int, max_token: int, model_config: Any) -> dict[str, torch.Tensor]:
    return synthetic_batch(batch, image_size, max_token, len(VOCABULARY), model_config,
                           torch.Generator().manual_seed(batch))


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run over ``repeats`` rounds, the runs called in turn; one untimed round first."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def summary(times: dict[str, list[float]], **extra: Any) -> list[dict[str, Any]]:
    base = statistics.median(times["fp32"])
    return [{**extra, "choice": name, "median_s": round(statistics.median(values), 4),
             "min_s": round(min(values), 4), "max_s": round(max(values), 4),
             "speedup": round(base / statistics.median(values), 3), "times_s": [round(v, 4) for v in values]}
            for name, values in times.items()]


def generation_runs(model: torch.nn.Module, batch: dict[str, torch.Tensor], choices: tuple[str, ...],
                    auto: ex.Execution) -> tuple[dict[str, Callable[[], Any]], dict[str, bool], dict[str, Any]]:
    """One callable per choice generating for ``batch``, whether each gives fp32's tokens, and the recheck
    tallies of the choices with one."""
    runs: dict[str, Callable[[], Any]] = {}
    tallies: dict[str, Any] = {}
    for name in choices:
        if name == "autocast_whole_model":
            def run(prepared: Any = model.to(memory_format=torch.contiguous_format)) -> Any:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return prepared.generate(batch["images"].contiguous(memory_format=torch.channels_last),
                                             batch["pad_mask"], batch["expression_ids"])
        else:
            execution = auto if name == "auto" else ex.parse_execution(name)
            prepared = execution.prepare(model)
            if ex.recheck_tally(prepared) is not None:
                tallies[name] = ex.recheck_tally(prepared)

            def run(prepared: Any = prepared, execution: ex.Execution = execution) -> Any:
                with torch.inference_mode():
                    return ex.generate(prepared, execution, batch["images"], batch["pad_mask"],
                                       batch["expression_ids"])
        runs[name] = run
    reference = runs["fp32"]()
    equal = {}
    for name, run in runs.items():
        got = run()
        equal[name] = all(torch.equal(reference[key], got[key]) for key in reference if key.endswith("_tokens"))
    return runs, equal, tallies


def measure_generation(section: str, experiment: Any, batch_size: int, choices: tuple[str, ...],
                       repeats: int) -> list[dict[str, Any]]:
    results = []
    task = experiment.model.task
    torch.manual_seed(0)
    model = build_model(experiment.model, VOCABULARY, scene_classes(experiment)).eval()
    auto = ex.pick_execution("cpu", experiment.model, experiment.data.image_size)
    if "auto" not in choices and auto.name not in choices:
        choices = (*choices, "auto")
    batch = inputs(batch_size, experiment.data.image_size, experiment.max_token, experiment.model)
    runs, equal, tallies = generation_runs(model, batch, choices, auto)
    times = interleaved(runs, repeats)
    for row in summary(times, section=section, task=task, batch=batch_size, image_size=experiment.data.image_size):
        row["tokens_equal_fp32"] = equal[row["choice"]]
        row["is_auto"] = row["choice"] == auto.name or row["choice"] == "auto"
        if row["choice"] in tallies:  # how many samples the recheck redid, and whether it gave bf16 up (when)
            row["recheck"] = dataclasses.asdict(tallies[row["choice"]])
        results.append(row)
    return results


def measure_exported(experiment: Any, repeats: int, scratch: Path) -> list[dict[str, Any]]:
    """The paper model (random weights) at batch 1 under torch and each installed runtime, side by side."""
    import numpy as np

    from seqtr_lib import runtime as rt
    from seqtr_lib.config import experiment_to_dict
    from seqtr_lib.export import export_model, quantize_encoder
    from seqtr_lib.predict import Grounder

    task, size = experiment.model.task, experiment.data.image_size
    torch.manual_seed(0)
    model = build_model(experiment.model, VOCABULARY, scene_classes(experiment)).eval()
    started = time.perf_counter()
    directory = export_model(model, {"config": experiment_to_dict(experiment), "vocabulary": VOCABULARY.to_list(),
                                     "weights": "random", "max_token": experiment.max_token, "image_size": size},
                             scratch / f"paper_{task}")
    export_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)
    calibration = [{"images": (rng.random((1, 3, size, size)) * 255).astype(np.float32),
                    "pad_mask": np.zeros((1, size, size), dtype=bool),
                    "expression_ids": inputs(1, size, experiment.max_token, experiment.model)["expression_ids"].numpy()}
                   for _ in range(8)]
    started = time.perf_counter()
    quantize_encoder(directory, calibration, "8 random images (timing only)")
    quantize_seconds = time.perf_counter() - started
    batch = inputs(1, size, experiment.max_token, experiment.model)
    auto = ex.pick_execution("cpu", experiment.model, size)
    runs, equal, _ = generation_runs(model, batch, ("fp32", "channels_last+fold_bn", "auto"), auto)
    rt.RECHECK_MARGIN = 0.0  # int8 timed as a sample with no near-tie costs (random weights: every sample is one)
    reference = runs["fp32"]()
    threads = torch.get_num_threads()
    for runtime in rt.available_runtimes():
        for precision in ("fp32", "int8"):
            network = rt.ExportedSeqTR(directory, runtime, precision, threads=threads)
            name = f"{runtime} {precision}"
            runs[name] = (lambda network=network: network.generate(batch["images"], batch["pad_mask"],
                                                                   batch["expression_ids"]))
            got = runs[name]()
            equal[name] = all(torch.equal(reference[key], got[key]) for key in reference if key.endswith("_tokens"))
    times = interleaved(runs, repeats)
    rows = summary(times, section="exported", task=task, batch=1, image_size=size)
    for row in rows:
        row["tokens_equal_fp32"] = equal[row["choice"]]
        row["is_auto"] = row["choice"] == "auto"
    # What the widget waits for: Grounder.predict of a 640 x 480 photo, torch auto against each runtime.
    photo = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    grounders = {"torch auto": Grounder(model, experiment, VOCABULARY, torch.device("cpu"))}
    for runtime in rt.available_runtimes():
        for precision in ("fp32", "int8"):
            grounders[f"{runtime} {precision}"] = Grounder.from_export(directory, runtime, precision, threads=threads)
    predict_times = interleaved({name: (lambda g=g: g.predict(photo, "the red circle on the left"))
                                 for name, g in grounders.items()}, repeats)
    base = statistics.median(predict_times["torch auto"])
    for name, values in predict_times.items():
        rows.append({"section": "exported_predict", "task": task, "choice": name, "image": "640 x 480",
                     "median_s": round(statistics.median(values), 4), "speedup_vs_torch_auto":
                     round(base / statistics.median(values), 3), "times_s": [round(v, 4) for v in values]})
    for row in rows:
        row.update(export_seconds=round(export_seconds, 1), quantize_seconds=round(quantize_seconds, 1))
    return rows


def measure_training(experiment: Any, batch_size: int, repeats: int) -> list[dict[str, Any]]:
    """`Trainer.step` of the paper recipe at each training choice (fresh trainers, interleaved steps)."""
    task = experiment.model.task
    batch = inputs(batch_size, experiment.data.image_size, experiment.max_token, experiment.model)
    runs = {}
    with tempfile.TemporaryDirectory() as root:
        trainers = {}
        for name, (amp, channels_last) in TRAINING_CHOICES.items():
            recipe = dataclasses.replace(experiment.train, amp=amp, channels_last=channels_last, seed=1)
            run = dataclasses.replace(experiment, output_dir=root, name=f"bench_cpu_{name}", train=recipe)
            trainers[name] = Trainer(run, distributed.Context(0, 1, 0, torch.device("cpu")), VOCABULARY)
            runs[name] = (lambda trainer=trainers[name]: trainer.step(dict(batch))["loss"].item())
        times = interleaved(runs, repeats)
    return [{**row, "bf16_autocast_ran": name_ran_bf16(row["choice"])}
            for row in summary(times, section="training", task=task, batch=batch_size,
                               image_size=experiment.data.image_size)]


def name_ran_bf16(choice: str) -> bool:
    return TRAINING_CHOICES[choice][0] == "bf16" and ex.training_bf16(torch.device("cpu"), "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="inference,evaluation,training,synthetic")
    parser.add_argument("--tasks", default="box,mask")
    parser.add_argument("--synthetic-sizes", default="", help="input sizes of the synthetic section, e.g. 128,192 "
                        "(default: the params file's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (inference, synthetic)")
    parser.add_argument("--slow-repeats", type=int, default=3, help="timed rounds (evaluation, training)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. what else ran)")
    parser.add_argument("--quick", action="store_true", help="1 round each, evaluation batch 2: a check")
    parser.add_argument("--out", type=Path, default=Path("docs/results/bench_cpu.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = args.slow_repeats = 1
    sections = args.sections.split(",")
    report: dict[str, Any] = {
        "benchmark": "bench_cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": ex.machine_description(),
        "settings": {"repeats": args.repeats, "slow_repeats": args.slow_repeats, "sections": sections,
                     "bf16_from": ex.BF16_FROM},
        "load_average_before": os.getloadavg(),
        "note": args.note,
        "results": [],
    }

    def record(rows: list[dict[str, Any]]) -> None:
        report["results"].extend(rows)
        report["load_average_now"] = os.getloadavg()
        write_json_atomic(args.out, report)
        for row in rows:
            shown = {k: v for k, v in row.items() if k != "times_s"}
            print(json.dumps(shown), flush=True)

    for task in args.tasks.split(","):
        experiment = paper_experiment(task)
        if "inference" in sections:
            record(measure_generation("inference", experiment, 1, INFERENCE_CHOICES, args.repeats))
        if "evaluation" in sections:
            record(measure_generation("evaluation", experiment, 2 if args.quick else 16, EVALUATION_CHOICES,
                                      args.slow_repeats))
        if "training" in sections:
            record(measure_training(experiment, 2, args.slow_repeats))
        if "exported" in sections:
            with tempfile.TemporaryDirectory() as scratch:
                record(measure_exported(experiment, args.repeats, Path(scratch)))
    if "synthetic" in sections:
        choices = ("fp32", "channels_last", "channels_last+fold_bn", "channels_last+bf16+fold_bn")
        for size in [int(v) for v in args.synthetic_sizes.split(",") if v] or [None]:
            experiment = synthetic_experiment(size)
            record(measure_generation("synthetic", experiment, 1, choices, args.repeats * 4))
            record(measure_generation("synthetic", experiment, 64, choices, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
