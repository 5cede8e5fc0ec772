"""Learning curves: validation score against training wall time and samples seen, one curve per variant.

Each variant is a params file plus overrides, trained by the engine's own Trainer (same step, loss,
optimizer and schedule as ``python -m seqtr_lib train``) until a wall-clock budget is spent; after every
epoch the raw and EMA weights are scored on the first ``--val-limit`` val expressions (box Acc@0.5 or
mask mIoU). Training time excludes validation. All variants of one figure must run on the same data
and machine; the JSON records both.

    python benchmarks/learning_curve.py --variant plain --variant cells_s16 --budget-s 600
    python benchmarks/learning_curve.py --plot-only        # redraw docs/results/learning_curves.png
    python benchmarks/learning_curve.py --from-run outputs/synthetic_det   # add a finished full run
    python benchmarks/learning_curve.py --defaults-figure  # redraw docs/results/learning_curves_defaults.png

Writes docs/results/learning_curve_<variant>.json and redraws docs/results/learning_curves.png from
every such file present.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

import torch

from seqtr_lib.reports import cpu_model
from seqtr_lib import distributed
from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.config import TASK_PARTS, experiment_to_dict, load_params
from seqtr_lib.dataset_check import prepare_synthetic
from seqtr_lib.engine import Trainer
from seqtr_lib.metrics import HEADLINE_METRIC, headline_metrics

RESULTS = Path("docs/results")
# A shared schedule for comparisons: warm-up, then a constant rate (no decay inside any budget).
SCHEDULE = ["train.lr=1e-3", "train.warmup_epochs=1", "train.decay_epochs=[1000]", "train.epochs=1000"]


def _model(memory_stride: int, width: float, cell_loss: bool, selection: bool) -> list[str]:
    """Overrides that set every departure explicitly, whatever the params file says (input-token noise
    off, scene loss, colour pathway and attribute prior off, 64 bins, the reference's lower-edge decoding
    without outline offset, trained from scratch: the params files of the recorded curves' time; a variant
    adds its own after these)."""
    return [f"model.memory_stride={memory_stride}", f"model.darknet_width={width}",
            f"model.target_cell_loss={1.0 if cell_loss else 0.0}", f"model.query_selection={str(selection).lower()}",
            "model.input_token_noise=0.0", "model.scene_loss=0.0", "model.colour_pathway=0",
            "model.attribute_prior=0.0", "model.decode_bin_centres=false", "model.outline_offset=0.0",
            "model.num_bin=64", "train.finetune_from="]


DET, MASK = "params/synthetic_det.yaml", "params/synthetic_mask.yaml"
# The variants were compared on the earlier 2,000-image set: every variant starts from it (so its curve stays
# reproducible) unless its own overrides name the default set.
SET_2000 = ["data.synthetic.num_images=2000", "data.data_root=data/synthetic_2000"]
SET_6000 = ["data.synthetic.num_images=6000", "data.data_root=data"]
# name: (params file, overrides, what it tests)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "plain": (DET, _model(32, 0.25, False, False),
              "the paper's recipe: stride-32 memory (4 x 4 cells), DarkNet width 0.25"),
    "plain_s16": (DET, _model(16, 0.125, False, False), "stride-16 memory (8 x 8 cells), width 0.125, no aids"),
    "cells_s32": (DET, _model(32, 0.25, True, True), "target-cell loss + query selection on the stride-32 memory"),
    "cell_loss_s16": (DET, _model(16, 0.125, True, False), "stride-16 memory + target-cell loss, zero first query"),
    "cells_s16": (DET, _model(16, 0.125, True, True), "stride-16 memory + target-cell loss + query selection"),
    "cells_s16_6k": (DET, [*_model(16, 0.125, True, True), *SET_6000],
                     "cells_s16 on 6,000 synthetic images (4,200 for training) instead of 2,000"),
    "plain_mask": (MASK, _model(32, 0.25, False, False), "mask task: the paper's recipe"),
    "cells_s16_mask": (MASK, _model(16, 0.125, True, True),
                       "mask task: stride-16 memory + target-cell loss + query selection"),
    "cells_s16_mask_center": (MASK, [*_model(16, 0.125, True, True), "data.center_sampling=true"],
                              "mask task: as cells_s16_mask, vertices by rays from the mass centre (no EOS to time)"),
    "cells_s16_noise": (DET, [*_model(16, 0.125, True, True), "model.input_token_noise=0.2"],
                        "cells_s16 + 20% of the teacher-forced input tokens replaced by random coordinates"),
    "cells_s16_mask_noise": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.2"],
                             "mask task: cells_s16_mask + 20% random input tokens"),
    "cells_s16_mask_noise40": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.4"],
                               "mask task: cells_s16_mask + 40% random input tokens"),
    "cells_s16_mask_noise_lr2": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.2", "train.lr=2e-3"],
                                 "mask task: cells_s16_mask_noise at twice the learning rate"),
    "cells_s16_mask_noise_dec2": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.2",
                                         "model.num_decoder_layers=2"],
                                  "mask task: cells_s16_mask_noise with 2 decoder layers"),
    "cells_s16_mask_noise60": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.6"],
                               "mask task: cells_s16_mask + 60% random input tokens"),
    "cells_s16_mask_noise40_dec2": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.4",
                                           "model.num_decoder_layers=2"],
                                    "mask task: 40% random input tokens, 2 decoder layers"),
    "cells_s16_mask_noise40_bins128": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.4",
                                              "model.num_bin=128"],
                                       "mask task: 40% random input tokens, 128 bins (1 px each at 128 px)"),
    "cells_s16_mask_noise40_center": (MASK, [*_model(16, 0.125, True, True), "model.input_token_noise=0.4",
                                             "data.center_sampling=true"],
                                      "mask task: 40% random input tokens, vertices by rays from the mass centre"),
    "cells_s16_multi_noise40": (MASK, [*_model(16, 0.125, True, True), "model.task=multi",
                                       "model.input_token_noise=0.4"],
                                "multi-task + 40% random input tokens; the curve shows the mask mIoU"),
    "cells_s16_multi": (MASK, [*_model(16, 0.125, True, True), "model.task=multi"],
                        "multi-task (box, then mask in one sequence); the curve shows the mask mIoU"),
    "cells_s16_multi_noise": (MASK, [*_model(16, 0.125, True, True), "model.task=multi", "model.input_token_noise=0.2"],
                              "multi-task + 20% random input tokens; the curve shows the mask mIoU"),
}


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _metric(task: str) -> str:
    """The curve's metric: the headline metric of the task's last part (a multi-task curve shows the mask)."""
    return HEADLINE_METRIC[TASK_PARTS[task][-1]]


def _curve_score(metrics: dict[str, float], task: str) -> float:
    return metrics[headline_metrics(task)[-1]]


def _point(record: dict[str, Any], totals: dict[str, float], task: str) -> dict[str, Any]:
    """One curve point from an epoch's log record; ``totals`` accumulates training seconds and samples."""
    totals["seconds"] += record["train_seconds"]
    totals["samples"] += record["samples"]
    return {"epoch": record["epoch"] + 1, "step": record["step"], "samples": totals["samples"],
            "train_seconds": round(totals["seconds"], 1), "loss": record["loss"],
            **{weights: _curve_score(metrics, task) for weights, metrics in record.get("val", {}).items()}}


def run_variant(name: str, budget_s: float, val_limit: int, data_root: str | None, extra: list[str],
                results: Path, max_epochs: int | None = None) -> dict[str, Any]:
    """Train one variant; its JSON is rewritten after every epoch, so a run cut short keeps its curve."""
    params, overrides, description = VARIANTS[name]
    settings = [*SCHEDULE, *SET_2000, *overrides, f"train.val_limit={val_limit}", "output_dir=outputs/learning_curves",
                f"name={name}", *([f"data.data_root={data_root}"] if data_root else []), *extra]
    experiment = load_params(params, settings)
    print(f"{name}: {prepare_synthetic(experiment)}", flush=True)
    result: dict[str, Any] = {
        "variant": name, "description": description, "params": params, "overrides": settings,
        "metric": _metric(experiment.model.task),
        "config": experiment_to_dict(experiment), "budget_s": budget_s, "max_epochs": max_epochs,
        "val_limit": val_limit, "machine": machine(), "date": datetime.date.today().isoformat(), "points": [],
    }
    totals = {"seconds": 0.0, "samples": 0}
    started = time.perf_counter()

    def after_epoch(record: dict[str, Any]) -> bool:
        point = _point(record, totals, experiment.model.task)
        result["points"].append(point)
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(results / f"learning_curve_{name}.json", result)
        print(f"{name}: epoch {point['epoch']}  {point['train_seconds']:.0f} s  {point['samples']} samples  "
              f"loss {point['loss']:.3f}  raw {point.get('raw', float('nan')):.3f}  ema {point.get('ema', float('nan')):.3f}",
              flush=True)
        return totals["seconds"] >= budget_s or (max_epochs is not None and point["epoch"] >= max_epochs)

    context = distributed.setup(experiment.train.device)
    try:
        Trainer(experiment, context).run(after_epoch)
    finally:
        distributed.teardown()
    return result


def curve_from_run(run_dir: Path, description: str) -> dict[str, Any]:
    """The same curve read from a finished ``train`` run (its log.jsonl and last.pt's config)."""
    from seqtr_lib.checkpoint import load
    from seqtr_lib.config import experiment_from_dict
    from seqtr_lib.reports import read_log

    experiment = experiment_from_dict(load(run_dir / "last.pt")["config"])
    totals = {"seconds": 0.0, "samples": 0}
    points = [_point(r, totals, experiment.model.task) for r in read_log(run_dir) if r["type"] == "epoch"]
    return {"variant": f"{experiment.name}_full", "description": description, "params": f"params/{experiment.name}.yaml",
            "overrides": [], "metric": _metric(experiment.model.task),
            "config": experiment_to_dict(experiment), "val_limit": experiment.train.val_limit,
            "machine": machine(), "date": datetime.date.today().isoformat(), "points": points}


def plot(results_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [json.loads(p.read_text()) for p in sorted(results_dir.glob("learning_curve_*.json"))]
    if not curves:
        raise SystemExit(f"no learning_curve_*.json in {results_dir}")
    metrics = sorted({c["metric"] for c in curves})
    fig, axes = plt.subplots(len(metrics), 2, figsize=(17, 4.6 * len(metrics)), squeeze=False)
    def machine_name(curve: dict[str, Any]) -> str:
        name = curve["machine"]["cuda"] or curve["machine"]["cpu"]
        return " ".join(name.replace("(R)", "").replace("Processor", "").split())

    for row, metric in enumerate(metrics):
        shown = [c for c in curves if c["metric"] == metric]
        machines = sorted({machine_name(c) for c in shown})
        for curve_index, curve in enumerate(shown):
            colour = f"C{curve_index}"
            points = curve["points"]
            for column, x_key in enumerate(("train_seconds", "samples")):
                axis = axes[row, column]
                xs = [p[x_key] / (60 if x_key == "train_seconds" else 1000) for p in points]
                # Minutes compare only on one machine: name it in the label once there are several.
                name = f"{curve['variant']}, first {curve['val_limit']} val"
                name += f", {machine_name(curve)}" if len(machines) > 1 else ""
                axis.plot(xs, [p.get("raw", float("nan")) for p in points], "-o", ms=3, color=colour,
                          label=f"{name} (raw)")
                axis.plot(xs, [p.get("ema", float("nan")) for p in points], ":", color=colour,
                          label=f"{name} (EMA)")
                axis.set_xlabel("training minutes" if x_key == "train_seconds" else "thousand samples seen")
                axis.set_ylabel(f"val {metric} (%)")
                axis.grid(alpha=0.3)
        axes[row, 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside, not over, the curves
        axes[row, 0].set_title(f"val {metric} while training; {' / '.join(machines)}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


# The README's figure: the current defaults against the plain recipe, from curves already recorded.
# (file under docs/results, legend label, task panel, line style)
DEFAULT_CURVES = [
    ("learning_curve_box_colour_attribute_full.json", "default, full schedule (the released weights' run)", "box", "-"),
    ("learning_curve_demo_box_pretrained_backbone.json", "default, demo schedule (make demo)", "box", "--"),
    ("h200_curves/learning_curve_plain.json",
     "plain recipe: the paper's model without departures, from scratch\n(2,000-image set, constant lr, GPU sweep)",
     "box", ":"),
    ("learning_curve_mask_pixel_edges_full.json", "default, full schedule (the released weights' run)", "mask", "-"),
    ("learning_curve_demo_mask_pretrained_backbone.json",
     "default, demo schedule (make demo; scored before\nthe pixel-edge decoding, which adds about 3 points)", "mask", "--"),
]


def plot_defaults(results_dir: Path, out: Path) -> None:
    """Val score of the EMA weights against samples seen: the defaults (full and demo schedules) and the
    plain recipe. No plain-recipe mask curve was recorded, so the mask panel says so instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    colours = {"-": "C0", "--": "C1", ":": "C7"}
    for axis, task in zip(axes, ("box", "mask")):
        for file, label, panel, style in DEFAULT_CURVES:
            if panel != task:
                continue
            curve = json.loads((results_dir / file).read_text())
            points = curve["points"]
            axis.plot([p["samples"] / 1000 for p in points], [p["ema"] for p in points], style, marker="o", ms=3,
                      lw=2, color=colours[style], label=f"{label}; first {curve['val_limit']} val")
        if task == "mask":
            axis.text(0.5, 0.2, "no plain-recipe mask curve was recorded", transform=axis.transAxes, ha="center",
                      color="0.4", fontsize=9)
        metric = "Acc@0.5" if task == "box" else "mIoU"
        axis.set_title(f"{task}: val {metric}, EMA weights", fontsize=11)
        axis.set_xlabel("thousand training samples seen")
        axis.set_ylabel(f"val {metric} (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=[])
    parser.add_argument("--budget-s", type=float, default=600.0, help="training seconds per variant")
    parser.add_argument("--max-epochs", type=int, default=None, help="also stop after this many epochs")
    parser.add_argument("--val-limit", type=int, default=800, help="val expressions scored after each epoch")
    parser.add_argument("--data-root", default=None, help="default: the variant's (data/synthetic_2000 or data/)")
    parser.add_argument("--set", action="append", default=[], help="extra override for every variant")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--no-plot", action="store_true", help="leave learning_curves.png (parallel runs)")
    parser.add_argument("--defaults-figure", action="store_true",
                        help="only redraw learning_curves_defaults.png (the README's figure) from the recorded curves")
    parser.add_argument("--from-run", type=Path, action="append", default=[],
                        help="also record a finished train run (e.g. outputs/synthetic_det) as a curve")
    args = parser.parse_args()
    if args.defaults_figure:
        plot_defaults(args.results, args.results / "learning_curves_defaults.png")
        return
    for run_dir in args.from_run:
        result = curve_from_run(run_dir, f"the full {run_dir.name} params run")
        write_json_atomic(args.results / f"learning_curve_{result['variant']}.json", result)
    for name in args.variant if not args.plot_only else []:
        run_variant(name, args.budget_s, args.val_limit, args.data_root, args.set, args.results, args.max_epochs)
    if not args.no_plot:
        plot(args.results, args.results / "learning_curves.png")


if __name__ == "__main__":
    main()
