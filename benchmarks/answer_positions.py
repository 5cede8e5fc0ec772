"""Which objects of a generalised box answer does a model place? Teacher-forced token accuracy per object.

A generalised box answer (docs/method.md, section 11) is its boxes in row-major order, 4 tokens each, then EOS.
Fed the true answer (teacher forcing, as in training), the model's most likely token at each position is
compared with the true one; positions are grouped by the object they belong to (1st box, 2nd box, ...), over
the records of ``--split`` naming two objects or more, the first ``--limit`` such samples of training's loader
(its augmentation, seed 0). Reported per object: the share of its tokens that are exact, and within one bin.
A model that finds the first object but not the next shows it here as a falling share after the first box,
even before greedy decoding compounds the error.

    python benchmarks/answer_positions.py --checkpoint outputs/synthetic_gref_det/last.pt \\
        --params params/synthetic_gref_det.yaml --out docs/results/answer_positions_gref_det.json
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

import torch

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.config import load_params
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import build_dataset
from seqtr_lib.evaluation import load_trained
from seqtr_lib.reports import cpu_model


def object_accuracies(pairs: list[tuple[torch.Tensor, torch.Tensor, int]]) -> list[dict[str, Any]]:
    """Per object index k: over the samples with more than k objects, the share (%) of that box's 4 tokens the
    model got exactly and within one bin. pairs: per sample, its predicted and true tokens (T,) and its count
    of objects."""
    rows = []
    for k in range(max((count for _, _, count in pairs), default=0)):
        chosen = [(got[4 * k:4 * k + 4], want[4 * k:4 * k + 4]) for got, want, count in pairs if count > k]
        got, want = torch.stack([g for g, _ in chosen]), torch.stack([w for _, w in chosen])
        rows.append({"object": k + 1, "samples": len(chosen),
                     "exact": round(100 * (got == want).float().mean().item(), 2),
                     "within_one_bin": round(100 * ((got - want).abs() <= 1).float().mean().item(), 2)})
    return rows


def measure(checkpoint: str, params: str, overrides: list[str], split: str, limit: int) -> dict[str, Any]:
    _, vocabulary, models = load_trained(checkpoint)
    model = (models.get("ema") or models["raw"]).float().eval()
    experiment = load_params(params, [*overrides, "data.num_workers=0"])
    if experiment.model.task != "box" or experiment.data.max_objects == 0:
        raise SystemExit(f"{params}: a generalised box model's params are needed (task box, data.max_objects > 0)")
    dataset = build_dataset(experiment, split, vocabulary, training=True)
    pairs: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    for batch in build_loader(dataset, experiment, training=True, seed=0, epoch=0):
        several = [i for i, meta in enumerate(batch["metas"]) if len(meta["gt_boxes"]) >= 2]
        if several:
            target = batch["answer_tokens"][several]
            with torch.no_grad():
                logits = model(batch["images"][several].float(), batch["pad_mask"][several],
                               batch["expression_ids"][several], answer_tokens=target)["answer_logits"]
            pairs += [(got, want, len(batch["metas"][i]["gt_boxes"]))
                      for got, want, i in zip(logits.argmax(dim=-1), target, several)]
        if len(pairs) >= limit:
            break
    return {"objects": object_accuracies(pairs[:limit]), "samples": len(pairs[:limit])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--params", default="params/synthetic_gref_det.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="params override (repeatable)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=512, help="samples naming two objects or more")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/answer_positions.json"))
    args = parser.parse_args()
    result = measure(args.checkpoint, args.params, args.overrides, args.split, args.limit)
    record = {"benchmark": "answer_positions", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": {"cpu": cpu_model(), "torch": torch.__version__}, "checkpoint": args.checkpoint,
              "params": args.params, "overrides": args.overrides, "split": args.split, **result}
    for row in result["objects"]:
        print(f"object {row['object']}: {row['exact']:.1f} % exact, {row['within_one_bin']:.1f} % within one bin "
              f"({row['samples']} samples)")
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
