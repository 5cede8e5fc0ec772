"""GREC and GRES metrics (seqtr_lib.generalised_metrics) on hand-made cases computed by hand, as the published
evaluators define them (gRefCOCO's mdetr/datasets/refexp.py, ReLA's refer_evaluation.py)."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torchvision

from seqtr_lib.generalised_metrics import (
    grec_f1,
    grec_sample_values,
    pairwise_box_overlap,
    summarize_grec,
    summarize_gres,
)
from seqtr_lib.metrics import mask_ious
from rounding import assert_same_function

NONE: list = []  # no box
# Two targets that overlap each other heavily (IoU 0.9): one prediction over both may match only one.
TWINS = [[0, 0, 10, 10], [0, 0, 10, 9]]
# A greedy-versus-optimal case: A overlaps T1 by 95/105 and T2 by 85/115; B overlaps T1 by 70/130 and T2 by
# 50/150. Greedy takes A-T1 (the highest) and then B-T2 is below 0.5: one match. An optimal assignment would
# take A-T2 and B-T1, two matches.
T1, T2, A, B = [0, 0, 10, 10], [2, 0, 12, 10], [0.5, 0, 10.5, 10], [-3, 0, 7, 10]

# (name, predicted boxes, target boxes, F1 by hand)
GREC_CASES = [
    ("no target, predicted empty", NONE, NONE, 1.0),
    ("no target, predicted a box", [[0, 0, 4, 4]], NONE, 0.0),
    ("one missing box of two", [[0, 0, 4, 4]], [[0, 0, 4, 4], [10, 10, 14, 14]], 2 * 1 / (2 * 1 + 0 + 1)),
    ("one extra box", [[0, 0, 4, 4], [10, 10, 12, 12]], [[0, 0, 4, 4]], 2 * 1 / (2 * 1 + 1 + 0)),
    ("both found, in the other order", [[10, 10, 14, 14], [0, 0, 4, 4]], [[0, 0, 4, 4], [10, 10, 14, 14]], 1.0),
    ("one prediction cannot match two targets", [[0, 0, 10, 10], [50, 50, 60, 60]], TWINS, 2 * 1 / (2 + 1 + 1)),
    ("greedy, not optimal, matching", [A, B], [T1, T2], 2 * 1 / (2 + 1 + 1)),
    ("targeted, predicted empty", NONE, [[0, 0, 4, 4]], 0.0),
]


@pytest.mark.parametrize("name, pred, gt, f1", GREC_CASES, ids=[case[0] for case in GREC_CASES])
def test_grec_f1_of_hand_made_cases(name, pred, gt, f1):
    assert grec_f1(pred, gt) == pytest.approx(f1, abs=1e-15)  # a quotient of small integers, one rounding


def test_the_greedy_case_is_built_as_its_comment_says():
    iou = pairwise_box_overlap([A, B], [T1, T2])
    np.testing.assert_allclose(iou, [[95 / 105, 85 / 115], [70 / 130, 50 / 150]], rtol=1e-15)


def test_grec_summary_of_the_hand_made_set():
    f1, num_predicted, num_targets = grec_sample_values([c[1] for c in GREC_CASES], [c[2] for c in GREC_CASES])
    assert f1.tolist() == pytest.approx([c[3] for c in GREC_CASES], abs=1e-15)
    assert num_predicted.tolist() == [0, 1, 1, 2, 2, 2, 2, 0] and num_targets.tolist() == [0, 0, 2, 1, 2, 2, 2, 1]
    metrics = summarize_grec(f1, num_predicted, num_targets)
    # F1 = 1 in 2 of 8; no-target predicted empty 1 of 2; targeted predicted non-empty 5 of 6.
    assert metrics == pytest.approx({"precision": 100 * 2 / 8, "n_acc": 100 * 1 / 2, "t_acc": 100 * 5 / 6})


def test_a_match_at_exactly_half_counts():
    # IoU of [0, 0, 2, 1] and [0, 0, 1, 1] is 1 / 2 exactly (whole areas, one exact division).
    assert grec_f1([[0, 0, 2, 1]], [[0, 0, 1, 1]]) == 1.0
    assert grec_f1([[0, 0, 3, 1]], [[0, 0, 1, 1]]) == 0.0  # 1 / 3


def test_the_released_evaluators_generalised_iou_is_stricter_than_the_papers_iou():
    # [1, 1, 7, 7] against [0, 0, 6, 6]: IoU 25 / 47 = 0.532; the enclosing box of 49 leaves 2 empty, so
    # GIoU = 25 / 47 - 2 / 49 = 0.491: a match by IoU, none by GIoU.
    pred, gt = [[1, 1, 7, 7]], [[0, 0, 6, 6]]
    assert pairwise_box_overlap(pred, gt, "giou")[0, 0] == pytest.approx(25 / 47 - 2 / 49, rel=1e-15)
    assert (grec_f1(pred, gt, overlap="iou"), grec_f1(pred, gt, overlap="giou")) == (1.0, 0.0)


def test_pairwise_overlaps_match_torchvision_on_random_boxes():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(13, 2, 2, generator=generator, dtype=torch.float64) * 50
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    pred, gt = boxes[:6], boxes[6:]
    # float64, two formulas of one function of values in [-1, 1] (rounding.py).
    assert_same_function(torch.as_tensor(pairwise_box_overlap(pred, gt)), torchvision.ops.box_iou(pred, gt), scale=1.0)
    assert_same_function(torch.as_tensor(pairwise_box_overlap(pred, gt, "giou")),
                         torchvision.ops.generalized_box_iou(pred, gt), scale=1.0)


def test_an_accuracy_without_samples_to_count_is_left_out():
    assert summarize_grec([1.0], [0], [0]) == {"precision": 100.0, "n_acc": 100.0}
    assert summarize_grec([0.0], [0], [3]) == {"precision": 0.0, "t_acc": 0.0}
    with pytest.raises(ValueError, match="differ in length"):
        summarize_grec([1.0, 0.0], [0], [0, 1])


# --- GRES ------------------------------------------------------------------------------------------

SIZE = (8, 10)  # height, width


def mask(*rectangles: tuple[int, int, int, int]) -> dict:
    """RLE of the union of rectangles (x1, y1, x2, y2), end-exclusive pixels."""
    pixels = np.zeros(SIZE, dtype=np.uint8)
    for x1, y1, x2, y2 in rectangles:
        pixels[y1:y2, x1:x2] = 1
    return mask_utils.encode(np.asfortranarray(pixels))


LEFT, RIGHT = (0, 0, 2, 2), (6, 0, 8, 2)  # two pieces of one object split by another, 4 pixels each
# (name, predicted mask, target mask, target empty, predicted empty, I, U, IoU by hand)
GRES_CASES = [
    ("no target, predicted empty", mask(), mask(), True, True, 0, 0, 1.0),
    ("no target, predicted 6 pixels", mask((0, 0, 3, 2)), mask(), True, False, 0, 6, 0.0),
    ("split object, both pieces covered", mask(LEFT, RIGHT), mask(LEFT, RIGHT), False, False, 8, 8, 1.0),
    ("split object, one piece missing", mask(LEFT), mask(LEFT, RIGHT), False, False, 4, 8, 0.5),
    ("one extra object", mask((0, 4, 3, 6), (6, 4, 8, 6)), mask((0, 4, 3, 6)), False, False, 6, 10, 0.6),
    ("targeted, predicted empty", mask(), mask((2, 2, 4, 5)), False, True, 0, 6, 0.0),
]


def test_gres_metrics_of_the_hand_made_set():
    _, intersections, unions = mask_ious([c[1] for c in GRES_CASES], [c[2] for c in GRES_CASES])
    assert intersections.tolist() == [c[5] for c in GRES_CASES] and unions.tolist() == [c[6] for c in GRES_CASES]
    metrics = summarize_gres(intersections, unions, [c[3] for c in GRES_CASES], [c[4] for c in GRES_CASES])
    # gIoU: mean of (1, 0, 1, 0.5, 0.6, 0); cIoU: (8 + 4 + 6) / (6 + 8 + 8 + 10 + 6) pixels; no-target
    # predicted empty 1 of 2; targeted predicted non-empty 3 of 4.
    assert metrics == pytest.approx({"giou": 100 * 3.1 / 6, "ciou": 100 * 18 / 38, "n_acc": 50.0, "t_acc": 75.0})


def test_a_targeted_sample_answered_empty_counts_no_intersection():
    # As ReLA: an answer of "no object" has no intersection, whatever the mask beside it says.
    assert summarize_gres([5], [10], [False], [True]) == {"giou": 0.0, "ciou": 0.0, "t_acc": 0.0}


def test_a_set_of_correct_empty_answers_has_a_ciou_of_zero_by_convention():
    assert summarize_gres([0, 0], [0, 0], [True, True], [True, True]) == {"giou": 100.0, "ciou": 0.0,
                                                                            "n_acc": 100.0}
