"""Grounding metrics, exact per expression: box Acc@0.5 and mIoU; mask mIoU, oIoU, precision@0.5..0.9.

Every figure is computed from per-expression values (IoU, and for masks the intersection and union
areas), never as a mean of per-batch means (the reference's error when the last batch is short). To
evaluate in batches or across ranks, collect the per-expression arrays (`box_iou`, `mask_ious`),
concatenate them, then call `summarize_box_ious` / `summarize_mask_ious` once.

Convention for degenerate cases, as pycocotools' ``iou`` (which the reference uses): a pair whose
union is empty (two empty masks, or two zero-area boxes) has IoU 0. All results are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from seqtr_lib.config import TASK_PARTS

MASK_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# The number a checkpoint is judged by, per part of a sequence (config.TASK_PARTS).
HEADLINE_METRIC = {"box": "acc@0.5", "mask": "miou"}


# A generalised model's (docs/method.md, section 11): GREC's Precision@(F1=1, IoU>=0.5), GRES's gIoU.
GENERALISED_HEADLINE_METRIC = {"box": "precision", "mask": "giou"}


def headline_metrics(task: str, generalised: bool = False) -> tuple[str, ...]:
    """The metric keys best.pt is chosen by: ``acc@0.5`` (box), ``miou`` (mask), both prefixed for multi-task;
    for a generalised model (zero or more objects per answer) ``precision`` (box) or ``giou`` (mask)."""
    if generalised:
        return (GENERALISED_HEADLINE_METRIC[task],)
    parts = TASK_PARTS[task]
    if len(parts) == 1:
        return (HEADLINE_METRIC[parts[0]],)
    return tuple(f"{part}/{HEADLINE_METRIC[part]}" for part in parts)


def headline_score(metrics: dict[str, float], task: str, generalised: bool = False) -> float:
    """The number best.pt is chosen by: Acc@0.5 for boxes, mIoU for masks, their mean for multi-task
    (generalised: `headline_metrics`)."""
    keys = headline_metrics(task, generalised)
    return sum(metrics[key] for key in keys) / len(keys)


def box_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """IoU of aligned box pairs: a[i] with b[i].

    a, b: (N, 4) boxes [x1, y1, x2, y2] in pixels, continuous coordinates (area = (x2 - x1) * (y2 - y1),
    no +1). Returns (N,) float64, of the type of ``a`` (numpy array or torch tensor).
    """
    as_tensor = isinstance(a, torch.Tensor)
    first = torch.as_tensor(a).to(torch.float64)
    second = torch.as_tensor(b).to(first.device, torch.float64)
    if first.ndim != 2 or first.shape[1] != 4 or first.shape != second.shape:
        raise ValueError(f"box_iou needs two (N, 4) arrays of equal shape, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    top_left = torch.maximum(first[:, :2], second[:, :2])
    bottom_right = torch.minimum(first[:, 2:], second[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = _box_area(first) + _box_area(second) - intersection
    iou = torch.where(union > 0, intersection / union.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return iou if as_tensor else iou.numpy()


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)


def summarize_box_ious(ious: np.ndarray | torch.Tensor | Sequence[float]) -> dict[str, float]:
    """Per-expression box IoUs (N,) -> {"acc@0.5": % with IoU >= 0.5, "miou": mean IoU in %}."""
    values = _as_float_array(ious, "box IoUs")
    return {"acc@0.5": 100.0 * float(np.mean(values >= 0.5)), "miou": 100.0 * float(np.mean(values))}


def box_metrics(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Acc@0.5 and mIoU (percent) of predicted boxes against ground truth, both (N, 4) x1y1x2y2 pixels."""
    return summarize_box_ious(box_iou(pred, gt))


def mask_ious(pred_rles: Sequence[dict], gt_rles: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-expression mask IoU, intersection and union, from pycocotools RLEs of equal sizes.

    pred_rles[i] is compared with gt_rles[i]. Returns (ious float64 (N,), intersections int64 (N,),
    unions int64 (N,)), areas in pixels; IoU is 0 where the union is empty.
    """
    import pycocotools.mask as mask_utils  # lazily: GPU machines that only run the model lack it

    if len(pred_rles) != len(gt_rles):
        raise ValueError(f"mask_ious got {len(pred_rles)} predicted masks but {len(gt_rles)} ground-truth masks")
    intersections = np.zeros(len(gt_rles), dtype=np.int64)
    unions = np.zeros(len(gt_rles), dtype=np.int64)
    for index, (pred, gt) in enumerate(zip(pred_rles, gt_rles)):
        if list(pred["size"]) != list(gt["size"]):
            raise ValueError(f"mask pair {index}: predicted mask has size {list(pred['size'])} but ground truth "
                             f"{list(gt['size'])}; rasterise both at the same (height, width)")
        intersections[index] = mask_utils.area(mask_utils.merge([pred, gt], intersect=True))
        unions[index] = mask_utils.area(mask_utils.merge([pred, gt], intersect=False))
    ious = np.divide(intersections, unions, out=np.zeros(len(gt_rles)), where=unions > 0)
    return ious, intersections, unions


def summarize_mask_ious(
    ious: np.ndarray | Sequence[float],
    intersections: np.ndarray | Sequence[int],
    unions: np.ndarray | Sequence[int],
) -> dict[str, float]:
    """Per-expression values (N,) -> {"miou", "oiou", "prec@0.5", ..., "prec@0.9"} in percent.

    mIoU is the mean IoU; oIoU the total intersection over the total union (0 if that is empty);
    prec@t the share of expressions with IoU >= t.
    """
    values = _as_float_array(ious, "mask IoUs")
    total_union = float(np.sum(unions))
    metrics = {
        "miou": 100.0 * float(np.mean(values)),
        "oiou": 100.0 * float(np.sum(intersections)) / total_union if total_union > 0 else 0.0,
    }
    for threshold in MASK_THRESHOLDS:
        metrics[f"prec@{threshold}"] = 100.0 * float(np.mean(values >= threshold))
    return metrics


def _as_float_array(values: np.ndarray | torch.Tensor | Sequence[float], what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"no {what} to summarize: the evaluation covered no expressions")
    return array
