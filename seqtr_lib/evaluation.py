"""Evaluation: generate for every (object, expression) of a split, map tokens back to original pixels, score.

Metrics are exact per expression (gathered across ranks, de-duplicated), computed at the original image
size; the per-expression records feed the evaluation notebook (IoU histograms, failure galleries).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqtr_lib import checkpoint as ckpt
from seqtr_lib import distributed
from seqtr_lib.config import Experiment, ModelConfig, experiment_from_dict
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import build_dataset
from seqtr_lib.metrics import box_iou, box_metrics, mask_metrics
from seqtr_lib.model.seqtr import SeqTR, build_model, without_weight_files
from seqtr_lib.sequence import dequantize, polygon_to_rle, tokens_to_vertices
from seqtr_lib.text import Vocabulary


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast on CUDA; nothing on CPU (where AMP only slows the small models down)."""
    if amp == "none" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def move_batch(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Batch to the device; images travel as uint8 (a quarter of the bytes) and become floats there."""
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    moved["images"] = moved["images"].float()
    if channels_last:
        moved["images"] = moved["images"].contiguous(memory_format=torch.channels_last)
    return moved


def box_in_original_pixels(tokens: np.ndarray, meta: dict[str, Any], num_bin: int, mapping: str = "relative",
                           image_size: int = 640) -> np.ndarray:
    """Box tokens -> x1y1x2y2 in the original image's pixels; ``mapping``/``image_size`` as the model's."""
    pad_h, pad_w = meta["pad_shape"]
    box = dequantize(tokens, pad_w, pad_h, num_bin, mapping, image_size)
    sx, sy = meta["scale_factor"]
    box = box / np.array([sx, sy, sx, sy], dtype=np.float32)
    ori_h, ori_w = meta["ori_shape"]
    return np.clip(box, 0, [ori_w, ori_h, ori_w, ori_h]).astype(np.float32)


def polygon_in_original_pixels(tokens: np.ndarray, meta: dict[str, Any], num_bin: int, mapping: str = "relative",
                               image_size: int = 640) -> np.ndarray:
    """Mask tokens -> (K, 2) polygon vertices in the original image's pixels."""
    points = tokens_to_vertices(tokens, meta["pad_shape"], num_bin, mapping, image_size)
    sx, sy = meta["scale_factor"]
    return (points / np.array([sx, sy], dtype=np.float32)).astype(np.float32)


def polygon_mask_rle(points: np.ndarray, shape: tuple[int, int]) -> dict:
    """Predicted polygon -> RLE at the original size, with the reference's < 2 and == 2 point rules."""
    height, width = shape
    if len(points) < 2:
        return polygon_to_rle([], height, width)
    return polygon_to_rle([points.reshape(-1).tolist()], height, width)


@torch.inference_mode()
def evaluate_model(model: SeqTR, experiment: Experiment, vocabulary: Vocabulary, split: str,
                   device: torch.device, limit: int | None = None,
                   shuffle_expressions: bool = False) -> dict[str, Any]:
    """Generate for every (object, expression) of a split on all ranks; gather exact per-expression results.

    Metrics are computed at the original image size from the complete list of expressions, never as a
    mean of per-batch means. ``shuffle_expressions`` is the ablation that proves the words are used: each
    sample is grounded with the expression of another sample of its batch (a fixed random permutation).
    """
    task, num_bin = experiment.model.task, experiment.model.num_bin
    token_mapping = (experiment.model.mapping, experiment.data.image_size)  # what Collate quantized with
    dataset = build_dataset(experiment, split, vocabulary, training=False)
    loader = build_loader(dataset, experiment, training=False, seed=experiment.train.seed, epoch=0,
                          image_dtype=torch.uint8)
    permutation_rng = torch.Generator().manual_seed(experiment.train.seed)
    was_training = model.training
    model.eval()
    records: list[dict[str, Any]] = []
    skipped = 0
    # A bar that does not wrap the loader: tqdm.notebook would keep a finished loader (and its workers) alive.
    bar = tqdm(total=len(loader), desc=f"evaluate {split}", leave=False, disable=not distributed.is_main_process())
    for batch in loader:
        bar.update(1)
        skipped += batch["num_skipped"]
        if not batch["metas"]:
            continue
        if shuffle_expressions:
            order = torch.randperm(len(batch["metas"]), generator=permutation_rng)
            batch["expression_ids"] = batch["expression_ids"][order]
            batch["metas"] = [{**meta, "expression": batch["metas"][j]["expression"]}
                              for meta, j in zip(batch["metas"], order.tolist())]
        batch = move_batch(batch, device, experiment.train.channels_last)
        with autocast(device, experiment.train.amp):
            generated = model.generate(batch["images"], batch["pad_mask"], batch["expression_ids"])
        generated = {k: v.float().cpu().numpy() if k.endswith("scores") else v.cpu().numpy()
                     for k, v in generated.items()}
        for i, meta in enumerate(batch["metas"]):
            record: dict[str, Any] = {"ann_index": meta["ann_index"], "expression_index": meta["expression_index"],
                                      "image_id": meta["image_id"], "expression": meta["expression"],
                                      "gt_box": [float(v) for v in meta["gt_box"]]}
            if "box_tokens" in generated:
                record["pred_box"] = box_in_original_pixels(generated["box_tokens"][i], meta, num_bin, *token_mapping).tolist()
            if "mask_tokens" in generated:
                polygon = polygon_in_original_pixels(generated["mask_tokens"][i], meta, num_bin, *token_mapping)
                record["pred_polygon"] = polygon.reshape(-1).tolist()
                record["pred_rle"] = polygon_mask_rle(polygon, meta["ori_shape"])
                record["gt_rle"] = meta["gt_mask_rle"]
            records.append(record)
        if limit is not None and len(records) >= limit:
            break
    bar.close()
    if was_training:
        model.train()
    unique: dict[tuple[int, int], dict[str, Any]] = {}
    for record in distributed.gather_objects(records):
        unique.setdefault((record["ann_index"], record["expression_index"]), record)
    ordered = [unique[key] for key in sorted(unique)]
    skipped = sum(distributed.gather_objects([skipped]))
    return {"metrics": metrics_from_records(ordered, task), "records": ordered, "num_expressions": len(ordered),
            "skipped_images": skipped}


def metrics_from_records(records: list[dict[str, Any]], task: str) -> dict[str, float]:
    gt = np.array([r["gt_box"] for r in records], dtype=np.float32).reshape(-1, 4)
    box = mask = {}
    if task in ("box", "multi"):
        pred = np.array([r["pred_box"] for r in records], dtype=np.float32).reshape(-1, 4)
        box = box_metrics(pred, gt)
        ious = box_iou(pred, gt)
        for record, iou in zip(records, np.asarray(ious).tolist()):
            record["box_iou"] = iou
    if task in ("mask", "multi"):
        mask = mask_metrics([r["pred_rle"] for r in records], [r["gt_rle"] for r in records])
    if task == "multi":
        return {**{f"box/{k}": v for k, v in box.items()}, **{f"mask/{k}": v for k, v in mask.items()}}
    return dict(box or mask)


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[Experiment, Vocabulary, dict[str, SeqTR]]:
    """Rebuild the model(s) stored in a checkpoint: ``{"raw": model, "ema": model}`` (ema when present)."""
    payload = ckpt.load(path)
    experiment = experiment_from_dict(payload["config"], source=str(path))
    vocabulary = Vocabulary.from_list(payload["vocabulary"])
    models = {}
    for name, key in (("raw", "model"), ("ema", "ema")):
        if key in payload:
            model = build_model(without_weight_files(experiment.model), vocabulary)
            model.load_state_dict(payload[key])
            models[name] = model.to(device).eval()
    return experiment, vocabulary, models


