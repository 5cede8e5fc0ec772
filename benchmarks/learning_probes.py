"""Where does the small from-scratch SeqTR spend its learning time? Probes on toy scenes.

Scenes: a black 128 px canvas with ``objects`` axis-aligned rectangles of distinct colours (red, green,
blue; 10-39 px sides); the expression "the <colour> square" names the last one drawn, which nothing
occludes. All probes use the model of ``--params`` (default: the synthetic box config) at batch 32 and
``--lr``, and report the last 50 steps' means. The decoder probes train with the engine's own step
(`Trainer.step`: the recipe's Adam, clip and EMA, no warm-up); the cell probes train a linear probe
head with plain Adam.

    decoder_1   the full model on 1-object scenes: per-token cross-entropy (x1, y1, x2, y2, EOS; each
                training batch after its step, in eval mode) and greedy Acc@0.5 on 200 held-out scenes
    decoder_3   the same on 3-object scenes: the words must select the object
    cells_3     backbone + expression encoder + fusion and a linear score per stride-32 cell, trained
                to pick the cell holding the target's centre (no transformer, no coordinate tokens)
    cells_3_encoder   the same scorer on the transformer encoder's memory
    decoder_3_cell_loss   decoder_3 with the target-cell loss departure (model.target_cell_loss 1, no
                query selection): the model learns early which cell the expression refers to

If the cell probes learn quickly while decoder_3 does not, the visual-linguistic selection is not
the bottleneck; turning it into the first coordinate token is.

    python benchmarks/learning_probes.py --steps 300 --out benchmarks/results/learning_probes.json
    python benchmarks/learning_probes.py --only decoder_3_cell_loss --steps 600
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib import distributed
from seqtr_lib.codec import SequenceCodec, TokenLayout
from seqtr_lib.config import load_params
from seqtr_lib.data.refer import scene_classes
from seqtr_lib.engine import Trainer
from seqtr_lib.model.seqtr import SeqTR, build_model
from seqtr_lib.model.transformer import downsample_padding
from seqtr_lib.text import Vocabulary

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230)}
SIZE = 128
BATCH = 32
HELD_OUT = 200


def toy_scenes(count: int, objects: int, num_bin: int, vocabulary: Vocabulary, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images uint8 (N, 3, 128, 128), expression ids, box tokens (N, 4), the target's box in pixels (N, 4)
    and its stride-32 cell (N,)."""
    rng = np.random.default_rng(seed)
    codec = SequenceCodec(TokenLayout("box", num_bin, num_ray=3))
    images = torch.zeros(count, 3, SIZE, SIZE, dtype=torch.uint8)
    tokens = torch.zeros(count, 4, dtype=torch.int64)
    cells = torch.zeros(count, dtype=torch.int64)
    boxes = torch.zeros(count, 4)
    expressions = torch.zeros(count, 15, dtype=torch.int64)
    names = list(COLOURS)
    for i in range(count):
        for colour in rng.permutation(len(names))[:objects]:
            w, h = rng.integers(10, 40, 2)
            x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
            images[i, :, y : y + h, x : x + w] = torch.tensor(COLOURS[names[colour]], dtype=torch.uint8)[:, None, None]
        # the loop's last rectangle is the target
        boxes[i] = torch.tensor([x, y, x + w - 1, y + h - 1], dtype=torch.float32)
        tokens[i] = torch.from_numpy(codec.encode_box(boxes[i].numpy(), (SIZE, SIZE)))
        cells[i] = int((y + h / 2) // 32) * (SIZE // 32) + int((x + w / 2) // 32)
        expressions[i] = torch.from_numpy(vocabulary.encode(f"the {names[colour]} square", 15))
    return {"images": images, "expression_ids": expressions, "box_tokens": tokens, "target_box": boxes, "cells": cells}


# The toy scenes carry no scene labels and the probes score 32 px cells: the departures that need either are
# off (the params files of the probes' time had them off).
TOY_OVERRIDES = ["model.query_selection=false", "model.input_token_noise=0.0", "model.attribute_prior=0.0",
                 "model.scene_loss=0.0", "model.colour_pathway=0", "model.memory_stride=32"]


def _toy_model(params: str, count: int, objects: int) -> tuple[SeqTR, dict[str, torch.Tensor]]:
    """The model of ``params`` (seed 0, `TOY_OVERRIDES`) for the toy vocabulary, and ``count`` toy scenes."""
    experiment = load_params(params, TOY_OVERRIDES)
    vocabulary = Vocabulary.build(f"the {c} square" for c in COLOURS)
    data = toy_scenes(count, objects, experiment.model.num_bin, vocabulary)
    torch.manual_seed(0)
    return build_model(experiment.model, vocabulary, scene_classes(experiment)), data


def _cell_scorer(model: SeqTR) -> nn.Linear:
    """A linear score per memory cell (d_model -> 1)."""
    return nn.Linear(model.token_embedding.embedding_dim, 1)


def _adam(parameters: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.98), eps=1e-9)


def probe_decoder(params: str, objects: int, steps: int, lr: float, cell_loss_weight: float = 0.0) -> dict[str, Any]:
    """The full model trained by `Trainer.step` on toy scenes: per-token cross-entropy and held-out Acc@0.5."""
    overrides = [f"train.lr={lr}", "train.warmup_epochs=0", "train.seed=0", f"model.target_cell_loss={cell_loss_weight}",
                 *TOY_OVERRIDES]
    vocabulary = Vocabulary.build(f"the {c} square" for c in COLOURS)
    with tempfile.TemporaryDirectory() as run_root:
        experiment = load_params(params, [*overrides, f"output_dir={run_root}"])
        trainer = Trainer(experiment, distributed.Context(0, 1, 0, torch.device("cpu")), vocabulary)
        model, num_bin = trainer.model, experiment.model.num_bin
        data = toy_scenes(2000 + HELD_OUT, objects, num_bin, vocabulary)
        no_padding = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
        token_ce, started = [], time.perf_counter()
        for _ in range(steps):
            index = torch.randint(0, 2000, (BATCH,))
            batch = {"images": data["images"][index], "pad_mask": no_padding, "expression_ids": data["expression_ids"][index],
                     "box_tokens": data["box_tokens"][index], "target_box": data["target_box"][index]}
            trainer.step(batch)
            model.eval()  # the batch's per-token cross-entropy after the step, without touching BatchNorm's statistics
            with torch.no_grad():
                logits = model(batch["images"].float(), no_padding, batch["expression_ids"],
                               box_tokens=batch["box_tokens"])["box_logits"]
            model.train()
            targets = model.layout.targets(batch["box_tokens"])
            token_ce.append(F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(0))
    model.eval()
    held = slice(2000, None)
    with torch.no_grad():
        predicted = model.generate(data["images"][held].float(), torch.zeros(HELD_OUT, SIZE, SIZE, dtype=torch.bool),
                                   data["expression_ids"][held])["box_tokens"]
    iou = box_iou(predicted.float(), data["box_tokens"][held].float()).diagonal()
    return {"token_cross_entropy": [round(v, 3) for v in torch.stack(token_ce[-50:]).mean(0).tolist()],
            "uniform_cross_entropy": round(float(np.log(num_bin + 1)), 3),
            "held_out_acc_at_0.5": float((iou >= 0.5).float().mean()), "seconds": time.perf_counter() - started}


def probe_cells(params: str, with_encoder: bool, steps: int, lr: float) -> dict[str, Any]:
    model, data = _toy_model(params, 2000, 3)
    scorer = _cell_scorer(model)
    parts = [model.backbone, model.language, model.fusion, scorer] + ([model.encoder] if with_encoder else [])
    optimizer = _adam([p for part in parts for p in part.parameters()], lr)
    no_padding = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
    hits, started = [], time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, 2000, (BATCH,))
        images, expressions = data["images"][index].float(), data["expression_ids"][index]
        if with_encoder:
            features = model.encode(images, no_padding, expressions).features
        else:
            maps = model.backbone(images)
            padding = downsample_padding(no_padding, maps[-1].shape[-2:])
            features = model.fusion(maps, model.language(expressions), padding).flatten(2).transpose(1, 2)
        scores = scorer(features)[..., 0]  # (B, cells)
        loss = F.cross_entropy(scores, data["cells"][index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        hits.append(float((scores.argmax(1) == data["cells"][index]).float().mean()))
    return {"cell_accuracy": float(np.mean(hits[-50:])), "chance": 1 / (SIZE // 32) ** 2,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/synthetic_det.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="benchmarks/results/learning_probes.json")
    parser.add_argument("--only", nargs="+", help="run only these probes")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "params": args.params, "steps": args.steps, "lr": args.lr, "batch": BATCH, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    probes = {"decoder_1": lambda: probe_decoder(args.params, 1, args.steps, args.lr),
              "decoder_3": lambda: probe_decoder(args.params, 3, args.steps, args.lr),
              "cells_3": lambda: probe_cells(args.params, False, args.steps, args.lr),
              "cells_3_encoder": lambda: probe_cells(args.params, True, args.steps, args.lr),
              "decoder_3_cell_loss": lambda: probe_decoder(args.params, 3, args.steps, args.lr, cell_loss_weight=1.0)}
    unknown = set(args.only or ()) - set(probes)
    if unknown:
        parser.error(f"unknown probes {sorted(unknown)}; choose from {', '.join(probes)}")
    for name, probe in probes.items():
        if args.only and name not in args.only:
            continue
        results[name] = probe()
        print(name, json.dumps(results[name]), flush=True)
    write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
