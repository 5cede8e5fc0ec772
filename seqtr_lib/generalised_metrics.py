"""Metrics of generalised grounding, where an expression names zero, one or several objects (gRefCOCO).

The definitions are the published evaluators' (read, not copied): GREC's in henghuiding/gRefCOCO
``mdetr/datasets/refexp.py`` (boxes), GRES's in henghuiding/ReLA ``gres_model/evaluation/refer_evaluation.py``
(masks). One sample is one expression. All results are percentages.

GREC (boxes), per sample, from the predicted boxes (P, 4) and the target boxes (G, 4), G = 0 for no target:

- matching is greedy and one-to-one: repeatedly the pair of highest overlap still free is matched, until
  that overlap is below 0.5 (a pair at exactly 0.5 matches); a matched prediction and target leave the
  pool, so a prediction never matches two targets. Greedy, not optimal: the published evaluator's choice,
  which can count fewer matches than an assignment would (tests show one such case);
- F1 = 2 TP / (2 TP + FP + FN), with TP the matches, FP = P - TP, FN = G - TP; a no-target sample has
  F1 = 1 when nothing is predicted and 0 otherwise;
- ``precision``: the share of samples with F1 = 1 (the paper's Precision@(F1=1, IoU>=0.5));
  ``n_acc``: of the no-target samples, the share predicted empty; ``t_acc``: of the targeted samples, the
  share predicted non-empty.

The paper says IoU; the released evaluator matches on generalised IoU (``generalized_box_iou``), which is at
most the IoU, so it is slightly stricter. ``overlap="iou"`` (default) follows the paper and the issue,
``overlap="giou"`` the released code, for comparing with published numbers.

GRES (masks), per sample, from the intersection I and union U of the predicted and target masks (each the
union of all its objects; `seqtr_lib.metrics.mask_ious` gives both) and whether the target and the answer are
empty:

- a no-target sample predicted empty counts IoU 1 and adds nothing to I or U; predicted non-empty, IoU 0
  and its U (the predicted area) is added to the cumulative union;
- a targeted sample predicted empty counts I = 0 (so IoU 0), its U added; otherwise IoU = I / U;
- ``giou``: the mean per-sample IoU (not the generalised IoU of boxes, despite the name); ``ciou``: the
  cumulative I over the cumulative U; ``n_acc`` and ``t_acc`` as for GREC.

Departures, in degenerate sets only: ``n_acc`` (``t_acc``) is left out when the set has no no-target
(targeted) sample, where the evaluators divide by zero (GREC) or report 0 (GRES); ``ciou`` is 0 when the
cumulative union is empty (every sample no-target and predicted empty), where ReLA divides by zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MATCH_THRESHOLD = 0.5  # a prediction and a target match at this overlap or more (GREC)
OVERLAPS = ("iou", "giou")
# The breakdown of the metrics by how many objects an expression names (the evaluators' no-target / one /
# several): a type's name and which target counts belong to it.
EXPRESSION_TYPES = {"no_target": lambda count: count == 0, "one_target": lambda count: count == 1,
                    "several_targets": lambda count: count >= 2}


def targets_named(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """How many objects each evaluation record's expression names: int64 (N,), 0 for a no-target record."""
    return np.array([0 if r["no_target"] else len(r["gt_boxes"]) for r in records], dtype=np.int64)


def pairwise_box_overlap(pred: Any, gt: Any, overlap: str = "iou") -> np.ndarray:
    """(P, G) float64 overlap of every predicted box with every target box, both [x1, y1, x2, y2] pixels.

    ``iou``: intersection over union (0 where the union is empty); ``giou``: IoU minus the share of the
    smallest enclosing box that the union leaves empty (Rezatofighi et al. 2019).
    """
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap {overlap!r} is unknown; use one of {', '.join(OVERLAPS)}")
    pred, gt = _boxes(pred, "predicted"), _boxes(gt, "target")
    a, b = pred[:, None, :], gt[None, :, :]  # (P, 1, 4), (1, G, 4)
    intersection = _area(np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:]))
    union = _area(a[..., :2], a[..., 2:]) + _area(b[..., :2], b[..., 2:]) - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
    if overlap == "iou":
        return iou
    enclosing = _area(np.minimum(a[..., :2], b[..., :2]), np.maximum(a[..., 2:], b[..., 2:]))
    empty_share = np.divide(enclosing - union, enclosing, out=np.zeros_like(union), where=enclosing > 0)
    return iou - empty_share


def greedy_matches(pred: Any, gt: Any, overlap: str = "iou") -> int:
    """How many predicted boxes match a target box, one-to-one, greedily by highest overlap (module doc)."""
    overlaps = pairwise_box_overlap(pred, gt, overlap)
    matches = 0
    for _ in range(min(overlaps.shape)):
        best = np.unravel_index(np.argmax(overlaps), overlaps.shape)  # ties: the first in row-major order
        if overlaps[best] < MATCH_THRESHOLD:
            break
        matches += 1
        overlaps[best[0], :] = -np.inf  # both leave the pool
        overlaps[:, best[1]] = -np.inf
    return matches


def grec_f1(pred: Any, gt: Any, overlap: str = "iou") -> float:
    """One sample's F1 of predicted boxes (P, 4) against target boxes (G, 4); G = 0 is a no-target sample."""
    num_predicted, num_targets = len(_boxes(pred, "predicted")), len(_boxes(gt, "target"))
    if num_targets == 0:
        return 1.0 if num_predicted == 0 else 0.0
    true_positives = greedy_matches(pred, gt, overlap)
    false_positives, false_negatives = num_predicted - true_positives, num_targets - true_positives
    return 2 * true_positives / (2 * true_positives + false_positives + false_negatives)


def grec_sample_values(predictions: Sequence[Any], targets: Sequence[Any],
                       overlap: str = "iou") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample (F1 float64 (N,), predicted boxes int64 (N,), target boxes int64 (N,)) of N samples, each a
    list of predicted boxes and a list of target boxes; concatenate these across batches, then `summarize_grec`."""
    if len(predictions) != len(targets):
        raise ValueError(f"GREC got predictions for {len(predictions)} samples but targets for {len(targets)}")
    f1 = np.array([grec_f1(p, g, overlap) for p, g in zip(predictions, targets)], dtype=np.float64)
    num_predicted = np.array([len(_boxes(p, "predicted")) for p in predictions], dtype=np.int64)
    num_targets = np.array([len(_boxes(g, "target")) for g in targets], dtype=np.int64)
    return f1, num_predicted, num_targets


def summarize_grec(f1: Any, num_predicted: Any, num_targets: Any) -> dict[str, float]:
    """Per-sample values -> {"precision", "n_acc", "t_acc"} in percent (module doc; an undefined accuracy is
    left out)."""
    f1, num_predicted, num_targets = _same_length(f1, num_predicted, num_targets)
    metrics = {"precision": 100.0 * float(np.mean(f1.astype(np.float64) >= 1.0))}
    return metrics | _target_accuracies(target_empty=num_targets == 0, predicted_empty=num_predicted == 0)


def summarize_gres(intersections: Any, unions: Any, target_empty: Any, predicted_empty: Any) -> dict[str, float]:
    """Per-sample mask intersections and unions (pixels) and emptiness flags -> {"giou", "ciou", "n_acc",
    "t_acc"} in percent (module doc; an undefined accuracy is left out)."""
    intersections, unions, target_empty, predicted_empty = _same_length(intersections, unions, target_empty,
                                                                         predicted_empty)
    target_empty, predicted_empty = target_empty.astype(bool), predicted_empty.astype(bool)
    correct_empty = target_empty & predicted_empty
    intersections = np.where(target_empty | predicted_empty, 0.0, intersections.astype(np.float64))
    unions = np.where(correct_empty, 0.0, unions.astype(np.float64))
    ious = np.divide(intersections, unions, out=np.zeros_like(unions), where=unions > 0)
    ious[correct_empty] = 1.0
    total_union = float(unions.sum())
    metrics = {"giou": 100.0 * float(ious.mean()),
               "ciou": 100.0 * float(intersections.sum()) / total_union if total_union > 0 else 0.0}
    return metrics | _target_accuracies(target_empty, predicted_empty)


def _target_accuracies(target_empty: np.ndarray, predicted_empty: np.ndarray) -> dict[str, float]:
    metrics = {}
    if target_empty.any():
        metrics["n_acc"] = 100.0 * float(np.mean(predicted_empty[target_empty]))
    if (~target_empty).any():
        metrics["t_acc"] = 100.0 * float(np.mean(~predicted_empty[~target_empty]))
    return metrics


def _same_length(*values: Any) -> list[np.ndarray]:
    arrays = [np.asarray(v).reshape(-1) for v in values]
    if arrays[0].size == 0:
        raise ValueError("no samples to summarize: the evaluation covered no expressions")
    if any(a.size != arrays[0].size for a in arrays):
        raise ValueError(f"per-sample arrays differ in length: {', '.join(str(a.size) for a in arrays)}")
    return arrays


def _boxes(boxes: Any, what: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what} boxes must be (K, 4) x1, y1, x2, y2, got shape {array.shape}")
    return array


def _area(top_left: np.ndarray, bottom_right: np.ndarray) -> np.ndarray:
    return np.clip(bottom_right - top_left, 0, None).prod(axis=-1)
