"""Where a box model with query selection misses: the cell it selects, or the box it reads there.

For each split, over the first ``--limit`` expressions (whole batches), of a checkpoint's EMA (or raw) weights:

    cell_right          % of expressions whose selected cell holds the target's centre
    acc                 Acc@0.5 as generated
    acc_cell_right      Acc@0.5 of the expressions whose selected cell is right
    acc_cell_wrong      Acc@0.5 of the others
    acc_true_cell       Acc@0.5 with the target's cell forced: the score if selection were perfect
    scene_colour, scene_kind   % of targets whose colour / kind the scene classifiers name at their cell
                        (models with model.scene_loss)

    python benchmarks/cell_selection.py weights/synthetic_det.pt --splits val,testB \\
        --out docs/results/cell_selection_synthetic_det.json

Needs the synthetic set (its scene field names every object) and a model with model.query_selection.
"""

from __future__ import annotations

import argparse
import datetime
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.codec import SequenceCodec
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import build_dataset
from seqtr_lib.data.synthetic import scene_class_counts
from seqtr_lib.evaluation import load_trained, metrics_from_records, move_batch
from seqtr_lib.model.aids import box_centres, target_cells
from seqtr_lib.model.seqtr import SeqTR
from seqtr_lib.reports import cpu_model

COLOURS, KINDS = scene_class_counts()["color"], scene_class_counts()["kind"]


def target_labels(batch: dict[str, Any]) -> torch.Tensor:
    """Colour, kind and size indices (B, 3) of each target: the scene object whose centre is nearest its box's."""
    distance = (batch["scene_centres"] - box_centres(batch["target_box"])[:, None]).norm(dim=-1)
    distance[batch["scene_labels"][..., 0] < 0] = math.inf
    return batch["scene_labels"][torch.arange(len(distance)), distance.argmin(dim=1)]


def measure_split(model: SeqTR, experiment: Any, vocabulary: Any, split: str, limit: int) -> dict[str, Any]:
    codec = SequenceCodec.from_experiment(experiment)
    dataset = build_dataset(experiment, split, vocabulary, training=False, scene_targets=True)
    loader = build_loader(dataset, experiment, training=False, seed=experiment.train.seed, epoch=0)
    records: dict[str, list[dict[str, Any]]] = {"generated": [], "true_cell": []}
    right: list[bool] = []
    scene_right: list[torch.Tensor] = []
    for batch in loader:
        batch = move_batch(batch, torch.device("cpu"), experiment.train.channels_last)
        with torch.no_grad():
            memory = model.encode(batch["images"], batch["pad_mask"], batch["expression_ids"])
            aids = model.aids
            true_cells = target_cells(batch["target_box"], model.fusion.stride, memory.notes.visual.shape[-1])
            right += (aids.cell_logits(memory).argmax(dim=1) == true_cells).tolist()
            if aids.scene_head is not None:
                predicted = aids.scene_cells(memory.notes)[torch.arange(len(true_cells)), true_cells]  # (B, C)
                labels = target_labels(batch)
                scene_right.append(torch.stack([predicted[:, :COLOURS].argmax(-1) == labels[:, 0],
                                                predicted[:, COLOURS:COLOURS + KINDS].argmax(-1) == labels[:, 1]], -1))
            # Only the true cell keeps a finite score, so selection picks it.
            forced = torch.full_like(memory.padding, -math.inf, dtype=torch.float32)
            forced[torch.arange(len(true_cells)), true_cells] = 0.0
            for name, decoded in (("generated", memory), ("true_cell", memory._replace(notes=memory.notes._replace(cell_prior=forced)))):
                generated = {k: v.float().numpy() if k.endswith("scores") else v.numpy()
                             for k, v in model.generate_from_memory(decoded).items()}
                records[name] += [{"gt_box": [float(v) for v in meta["gt_box"]], **codec.decode(generated, i, meta)}
                                  for i, meta in enumerate(batch["metas"])]
        if len(right) >= limit:
            break
    acc = {}
    for name, named_records in records.items():
        metrics_from_records(named_records, "box")  # gives each record its box_iou
        acc[name] = np.array([r["box_iou"] >= 0.5 for r in named_records])
    cell_right = np.array(right)
    result = {"expressions": len(right), "cell_right": 100 * cell_right.mean(), "acc": 100 * acc["generated"].mean(),
              "acc_cell_right": 100 * acc["generated"][cell_right].mean(),
              "acc_cell_wrong": 100 * acc["generated"][~cell_right].mean() if (~cell_right).any() else None,
              "acc_true_cell": 100 * acc["true_cell"].mean()}
    if scene_right:
        colour_kind = torch.cat(scene_right).float().mean(dim=0)
        result.update(scene_colour=100 * float(colour_kind[0]), scene_kind=100 * float(colour_kind[1]))
    return {k: round(float(v), 2) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--splits", default="val,testB")
    parser.add_argument("--limit", type=int, default=2000, help="expressions per split (whole batches)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (printed either way)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    experiment, vocabulary, models = load_trained(args.checkpoint)
    model = models[args.weights]
    if model.aids is None or model.aids.query_projection is None:
        raise SystemExit(f"{args.checkpoint}: the model has no query selection (model.query_selection), so no "
                         "selected cell to measure")
    results = {"checkpoint": str(args.checkpoint), "weights": args.weights, "machine": cpu_model(),
               "torch": torch.__version__, "date": datetime.date.today().isoformat(),
               "splits": {split: measure_split(model, experiment, vocabulary, split, args.limit)
                          for split in args.splits.split(",")}}
    for split, values in results["splits"].items():
        print(split, values)
    if args.out:
        write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
