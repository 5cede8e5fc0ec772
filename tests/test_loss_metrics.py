"""Loss and metrics against hand-computed values, a second implementation and pycocotools."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torch.nn.functional as F
import torchvision

from seqtr_lib.codec import TokenLayout
from seqtr_lib.loss import Criterion, LossWeights, label_smooth_cross_entropy
from seqtr_lib.metrics import (
    box_iou,
    box_metrics,
    mask_ious,
    summarize_box_ious,
    summarize_mask_ious,
)
from rounding import assert_same_function

F64 = torch.float64  # the losses below in float64 against float64 hand sums: one function in two orders

# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------

LOGITS = [
    [[1.0, 2.0, 0.5, -1.0, 0.0], [0.2, 0.1, 3.0, 1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0]],
    [[-1.0, 4.0, 2.0, 0.3, 1.5], [2.5, -0.5, 0.0, 1.0, 1.0], [1.0, 1.0, -3.0, 2.0, 0.7]],
]
TARGETS = [[1, 2, 4], [0, 3, 2]]
WEIGHTS = [[1.5, 1.0, 0.1], [1.0, 2.0, 1.0]]


def hand_loss(logits, targets, weights, neg_factor=0.1, samples=None):
    """Weighted label-smoothed cross-entropy summed over every token, divided by samples (default: the batch
    size) times the tokens per sample."""
    total = 0.0
    for logit_row, target_row, weight_row in zip(logits, targets, weights):
        for values, target, weight in zip(logit_row, target_row, weight_row):
            log_sum = math.log(sum(math.exp(v) for v in values))
            soft = [neg_factor / len(values)] * len(values)
            soft[target] = 1 - neg_factor
            total += weight * -sum(p * (v - log_sum) for p, v in zip(soft, values))
    return total / ((len(logits) if samples is None else samples) * len(logits[0]))


def hand_cross_entropy(values, target):
    return math.log(sum(math.exp(v) for v in values)) - values[target]


def test_label_smoothed_loss_equals_a_hand_computed_2x3x5_example():
    loss = label_smooth_cross_entropy(torch.tensor(LOGITS, dtype=F64), torch.tensor(TARGETS), torch.tensor(WEIGHTS))
    assert_same_function(loss, torch.tensor(hand_loss(LOGITS, TARGETS, WEIGHTS), dtype=F64))


def test_label_smoothed_loss_of_uniform_logits_has_a_closed_form():
    vocab = 7
    targets = torch.zeros(2, 3, dtype=torch.int64)
    loss = label_smooth_cross_entropy(torch.zeros(2, 3, vocab, dtype=F64), targets, torch.ones(2, 3))
    assert_same_function(loss, torch.tensor((1 - 0.1 / vocab) * math.log(vocab), dtype=F64))


def test_without_smoothing_the_loss_is_weighted_cross_entropy_over_batch_times_tokens():
    logits, targets, weights = torch.tensor(LOGITS, dtype=F64), torch.tensor(TARGETS), torch.tensor(WEIGHTS, dtype=F64)
    plain = F.cross_entropy(logits.reshape(6, 5), targets.reshape(6), reduction="none") * weights.reshape(6)
    loss = label_smooth_cross_entropy(logits, targets, weights, neg_factor=0.0)
    assert_same_function(loss, plain.sum() / 6)


def test_token_weights_are_one_and_a_half_on_a_box_x1_and_one_tenth_on_every_mask_eos():
    criterion = Criterion(TokenLayout("multi", num_bin=5, num_ray=3))
    assert criterion.token_weights("box", torch.tensor([[3, 1, 4, 2, 5]])).tolist() == [[1.5, 1, 1, 1, 1]]
    mask = criterion.token_weights("mask", torch.tensor([[3, 1, 4, 2, 5, 5, 5]]))
    assert torch.equal(mask, torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1]]))  # exact: float32(0.1) both


def test_sequence_loss_sums_box_and_mask_parts_for_multi_task():
    generator = torch.Generator().manual_seed(0)
    outputs = {"box_logits": torch.randn(2, 5, 6, generator=generator, dtype=F64),
               "mask_logits": torch.randn(2, 7, 6, generator=generator, dtype=F64)}
    box_tokens = torch.tensor([[0, 1, 2, 3], [4, 4, 0, 1]])
    mask_tokens = torch.tensor([[1, 2, 3, 4, 5, 5], [0, 0, 1, 1, 2, 2]])
    multi = Criterion(TokenLayout("multi", num_bin=5, num_ray=3))
    losses = multi(outputs, {"box_tokens": box_tokens, "mask_tokens": mask_tokens})
    box_hand = hand_loss(outputs["box_logits"].tolist(), [[0, 1, 2, 3, 5], [4, 4, 0, 1, 5]],
                         [[1.5, 1, 1, 1, 1]] * 2)
    mask_hand = hand_loss(outputs["mask_logits"].tolist(), [[1, 2, 3, 4, 5, 5, 5], [0, 0, 1, 1, 2, 2, 5]],
                          [[1, 1, 1, 1, 0.1, 0.1, 0.1], [1, 1, 1, 1, 1, 1, 0.1]])
    for key, hand in (("loss_box", box_hand), ("loss_mask", mask_hand), ("loss", box_hand + mask_hand)):
        assert_same_function(losses[key], torch.tensor(hand, dtype=F64), msg=key)
    box_only = Criterion(TokenLayout("box", num_bin=5, num_ray=3))({"box_logits": outputs["box_logits"]},
                                                                    {"box_tokens": box_tokens})
    assert set(box_only) == {"loss", "loss_box"}
    with pytest.raises(ValueError, match="no mask_tokens"):
        multi(outputs, {"box_tokens": box_tokens})
    with pytest.raises(ValueError, match="needs mask_logits"):
        multi({"box_logits": outputs["box_logits"]}, {"box_tokens": box_tokens})


# A tiny box batch with every term's inputs: two samples, num_bin 4 (V = 5), scene classes colour 2, kind 3,
# size 2 (7 logits; the word head's 3 + 4: each attribute or "names none").
CRITERION_LAYOUT = TokenLayout("box", num_bin=4, num_ray=3)
SCENE_CLASSES = (2, 3, 2)
EVERY_TERM = LossWeights(sequence=1.0, cell=0.5, scene=0.25, words=2.0)
TERM_NAMES = {"sequence": "loss_box", "cell": "loss_cell", "scene": "loss_scene", "words": "loss_words"}
TERM_INPUTS = {"sequence": "box_logits", "cell": "cell_logits", "scene": "scene_logits", "words": "word_logits"}


def tiny_criterion_batch():
    generator = torch.Generator().manual_seed(3)
    outputs = {"box_logits": torch.randn(2, 5, 5, generator=generator, dtype=F64),
               "cell_logits": torch.tensor([[0.0, math.log(3.0), -math.inf], [1.0, 0.0, 0.0]], dtype=F64),
               "target_cells": torch.tensor([1, 0]),
               "scene_logits": torch.randn(2, 2, 7, generator=generator, dtype=F64),
               "word_logits": torch.randn(2, 7, generator=generator, dtype=F64)}
    # The second image's second slot is padding; the first object's size is unlabelled: 3, 3 and 2 labelled.
    batch = {"box_tokens": torch.tensor([[1, 2, 3, 0], [0, 3, 3, 1]]),
             "scene_labels": torch.tensor([[[1, 2, -1], [0, 0, 1]], [[1, 1, 0], [-1, -1, -1]]]),
             "named_attributes": torch.tensor([[0, 3], [2, 1]])}  # colour 2 and kind 3: "names none"
    return outputs, batch


def test_the_criterion_sums_each_term_times_its_weight_each_divided_by_its_count():
    outputs, batch = tiny_criterion_batch()
    box, scene, words = (outputs[k].tolist() for k in ("box_logits", "scene_logits", "word_logits"))
    labels, named = batch["scene_labels"].tolist(), batch["named_attributes"].tolist()

    def scene_sums(logits, labels, slices):  # per attribute: the summed cross-entropy of its labelled objects
        return [sum(hand_cross_entropy(row[s], label[k]) for row, label in zip(logits, labels) if label[k] != -1)
                for k, s in enumerate(slices)]

    box_sum = hand_loss(box, [[1, 2, 3, 0, 4], [0, 3, 3, 1, 4]], [[1.5, 1, 1, 1, 1]] * 2, samples=1)  # / 5 tokens
    # softmax([0, log 3, -inf]) picks cell 1 with 3/4; softmax([1, 0, 0]) cell 0 with e / (e + 2)
    cell_sum = -math.log(3 / 4) - math.log(math.e / (math.e + 2))
    scene_attribute_sums = scene_sums([o for image in scene for o in image], [o for image in labels for o in image],
                                      [slice(0, 2), slice(2, 5), slice(5, 7)])
    word_sums = scene_sums(words, named, [slice(0, 3), slice(3, 7)])

    def expected(samples, scene_counts, word_counts):
        terms = {"loss_box": 1.0 * box_sum / samples, "loss_cell": 0.5 * cell_sum / samples,
                 "loss_scene": 0.25 * sum(s / n for s, n in zip(scene_attribute_sums, scene_counts)) / 3,
                 "loss_words": 2.0 * sum(s / n for s, n in zip(word_sums, word_counts)) / 2}
        return {**terms, "loss": sum(terms.values())}

    criterion = Criterion(CRITERION_LAYOUT, EVERY_TERM, SCENE_CLASSES)
    seen = []

    def shares(counts):  # as distributed.count_shares hands them back: float64 tensors
        seen.append({name: torch.as_tensor(count).tolist() for name, count in counts.items()})
        return {"samples": torch.tensor(4.0, dtype=F64), "scene": torch.tensor([2.0, 5.0, 1.0], dtype=F64),
                "words": torch.tensor([1.0, 8.0], dtype=F64)}

    for losses, divisors in ((criterion(outputs, batch), (2, [3, 3, 2], [2, 2])),
                             (criterion(outputs, batch, shares), (4, [2, 5, 1], [1, 8]))):
        hand = expected(*divisors)
        assert set(losses) == set(hand)
        for name, value in hand.items():  # float64 both: one function in two orders (tests/rounding.py)
            assert_same_function(losses[name], torch.tensor(value, dtype=F64), msg=name)
    assert seen == [{"samples": 2, "scene": [3, 3, 2], "words": [2, 2]}]  # one call: one all-reduce per step


@pytest.mark.parametrize("off", list(TERM_NAMES))
def test_a_weight_of_zero_removes_its_term_and_its_gradient(off):
    outputs, batch = tiny_criterion_batch()
    for key in TERM_INPUTS.values():
        outputs[key].requires_grad_()
    losses = Criterion(CRITERION_LAYOUT, dataclasses.replace(EVERY_TERM, **{off: 0.0}), SCENE_CLASSES)(outputs, batch)
    assert set(losses) == {"loss"} | set(TERM_NAMES.values()) - {TERM_NAMES[off]}
    losses["loss"].backward()
    for term, key in TERM_INPUTS.items():  # each of these logits feeds one term only
        assert (outputs[key].grad is None) == (term == off), term


# ------------------------------------------------------------------------------------------------
# Box metrics
# ------------------------------------------------------------------------------------------------


def test_box_iou_of_hand_made_pairs():
    a = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 5, 5]], dtype=torch.float32)
    b = torch.tensor([[1, 1, 3, 3], [0, 0, 1, 1], [2, 2, 3, 3], [5, 5, 5, 5]], dtype=torch.float32)
    # overlap 1 of union 7; half; disjoint; two zero-area boxes (empty union counts as IoU 0). Exact: whole
    # areas, one correctly rounded float64 division each, as Python's.
    assert torch.equal(box_iou(a, b), torch.tensor([1 / 7, 0.5, 0.0, 0.0], dtype=torch.float64))


def test_box_iou_matches_torchvision_on_random_boxes():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(50, 2, 2, generator=generator) * 100
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)  # (50, 4)
    a, b = boxes[:25], boxes[25:] * 0.5 + 20
    expected = torchvision.ops.box_iou(a.double(), b.double()).diagonal()
    assert_same_function(box_iou(a, b), expected, scale=1.0)  # float64, two formulas of one IoU
    assert isinstance(box_iou(a.numpy(), b.numpy()), np.ndarray)


def test_box_metrics_count_iou_of_exactly_half_as_a_hit():
    pred = np.array([[0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2]], dtype=np.float32)
    gt = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [1, 1, 3, 3]], dtype=np.float32)
    metrics = box_metrics(pred, gt)
    assert metrics["acc@0.5"] == pytest.approx(100 * 2 / 3)
    assert metrics["miou"] == pytest.approx(100 * (1 + 0.5 + 1 / 7) / 3)


# ------------------------------------------------------------------------------------------------
# Mask metrics
# ------------------------------------------------------------------------------------------------


def rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def rectangle(x1: int, y1: int, x2: int, y2: int, size: tuple[int, int] = (8, 10)) -> dict:
    mask = np.zeros(size, dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return rle(mask)


EMPTY = rectangle(0, 0, 0, 0)
# (pred, gt, intersection, union): 4 of 6 pixels; identical; disjoint; empty pred; both empty
MASK_PAIRS = [
    (rectangle(0, 0, 2, 2), rectangle(0, 0, 3, 2), 4, 6),
    (rectangle(1, 1, 4, 4), rectangle(1, 1, 4, 4), 9, 9),
    (rectangle(0, 0, 2, 2), rectangle(5, 5, 7, 7), 0, 8),
    (EMPTY, rectangle(2, 2, 7, 3), 0, 5),
    (EMPTY, EMPTY, 0, 0),
]


def test_mask_ious_of_hand_made_pairs_including_empty_masks():
    ious, intersections, unions = mask_ious([p for p, *_ in MASK_PAIRS], [g for _, g, *_ in MASK_PAIRS])
    assert intersections.tolist() == [i for *_, i, _ in MASK_PAIRS]
    assert unions.tolist() == [u for *_, u in MASK_PAIRS]
    np.testing.assert_allclose(ious, [4 / 6, 1.0, 0.0, 0.0, 0.0])


def test_mask_ious_agree_with_pycocotools_iou():
    rng = np.random.default_rng(0)
    preds = [rle(rng.random((12, 9)) < 0.4) for _ in range(10)] + [rle(np.zeros((12, 9))), rle(np.zeros((12, 9)))]
    gts = [rle(rng.random((12, 9)) < 0.5) for _ in range(10)] + [rle(np.ones((12, 9))), rle(np.zeros((12, 9)))]
    expected = np.diag(mask_utils.iou(preds, gts, [0] * len(gts)))
    np.testing.assert_allclose(mask_ious(preds, gts)[0], expected)


def test_mask_metrics_equal_hand_computed_values():
    metrics = summarize_mask_ious(*mask_ious([p for p, *_ in MASK_PAIRS], [g for _, g, *_ in MASK_PAIRS]))
    assert metrics["miou"] == pytest.approx(100 * (4 / 6 + 1) / 5)
    assert metrics["oiou"] == pytest.approx(100 * 13 / 28)
    assert metrics["prec@0.5"] == pytest.approx(40.0)  # 0.667 and 1.0
    assert metrics["prec@0.6"] == pytest.approx(40.0)
    assert metrics["prec@0.7"] == pytest.approx(20.0)
    assert metrics["prec@0.9"] == pytest.approx(20.0)


def test_metrics_over_batches_use_every_expression_once_even_with_a_short_last_batch():
    ious = np.array([0.9, 0.2, 0.6, 0.4, 0.55, 0.1, 0.95])
    batches = [ious[0:3], ious[3:6], ious[6:7]]  # the last batch holds one expression
    gathered = np.concatenate(batches)
    metrics = summarize_box_ious(gathered)
    assert metrics["acc@0.5"] == pytest.approx(100 * 4 / 7)
    assert metrics["miou"] == pytest.approx(100 * ious.sum() / 7)
    mean_of_batch_means = np.mean([np.mean(batch >= 0.5) for batch in batches]) * 100  # the reference's figure
    assert metrics["acc@0.5"] != pytest.approx(mean_of_batch_means)
    intersections, unions = np.array([9, 1, 3, 2, 5, 1, 19]), np.array([10, 5, 5, 5, 9, 10, 20])
    mask = summarize_mask_ious(intersections / unions, intersections, unions)
    assert mask["oiou"] == pytest.approx(100 * 40 / 64)


def test_mask_ious_reject_masks_of_different_sizes():
    with pytest.raises(ValueError, match="mask pair 0"):
        mask_ious([rectangle(0, 0, 1, 1, size=(4, 4))], [rectangle(0, 0, 1, 1, size=(4, 5))])
    with pytest.raises(ValueError, match="no mask IoUs"):
        summarize_mask_ious([], [], [])


@pytest.mark.parametrize("task", ["box", "mask"])
def test_two_halves_with_shared_counts_train_the_whole_batchs_objective(tiny_data_root, tmp_path, task):
    # DDP averages the processes' gradients, so the processes' losses must average to the whole batch's loss.
    # The losses are computed once on the whole batch's outputs and split by sample: what is compared is only
    # how each term is normalised (the model's per-sample outputs are the torchrun test's business).
    from conftest import write_params
    from seqtr_lib.codec import SequenceCodec
    from seqtr_lib.config import load_params
    from seqtr_lib.data.loader import Collate
    from seqtr_lib.data.refer import build_dataset, load_vocabulary
    from seqtr_lib.data.refer import scene_classes
    from seqtr_lib.model.seqtr import build_model

    departures = {"memory_stride": 16, "target_cell_loss": 1.0, "query_selection": True, "scene_loss": 1.0,
                  "colour_pathway": 4, "attribute_prior": 1.0}
    experiment = load_params(write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path, task=task, model=departures))
    vocabulary = load_vocabulary(experiment)
    dataset = build_dataset(experiment, "train", vocabulary, training=True)
    from seqtr_lib.evaluation import move_batch

    batch = move_batch(Collate(SequenceCodec.from_experiment(experiment))([dataset[i] for i in range(6)]),
                       torch.device("cpu"), False)
    # Each tiny scene has five objects: unlabel two of one image so the halves hold 13 and 15 (the per-process
    # mean then weighs an object of the first half by 1/13 and one of the second by 1/15).
    batch["scene_labels"][0, :2] = -1
    objects = (batch["scene_labels"][..., 0] != -1).sum(dim=1)
    halves = [[0, 2, 4], [1, 3, 5]]
    assert objects[halves[0]].sum() != objects[halves[1]].sum()
    torch.manual_seed(0)
    model = build_model(experiment.model, vocabulary, scene_classes(experiment)).eval()
    inputs = {k: batch[k] for k in ("images", "pad_mask", "expression_ids", f"{task}_tokens")}
    with torch.no_grad():
        outputs = model(**inputs, aid_inputs={k: batch[k] for k in model.aids.forward_keys})

    def part(values, rows):
        return {k: v[rows] for k, v in values.items() if isinstance(v, torch.Tensor) and v.ndim and len(v) == 6}

    criterion = Criterion.from_config(experiment.model, scene_classes(experiment))
    whole = criterion(outputs, batch)
    recorded: list[dict[str, torch.Tensor]] = []
    for rows in halves:  # each process's counts, as the all-reduce would see them
        def record(counts):
            recorded.append({name: torch.as_tensor(count, dtype=torch.float64) for name, count in counts.items()})
            return recorded[-1]

        criterion(part(outputs, rows), part(batch, rows), record)
    assert len(recorded) == 2  # one call per process: every count travels in one all-reduce

    def global_share(counts):  # what distributed.count_shares returns to each of the two processes
        return {name: (recorded[0][name] + recorded[1][name]) / 2 for name in counts}

    for shared, should_match in ((True, True), (False, False)):
        split = [criterion(part(outputs, rows), part(batch, rows), global_share if shared else None)
                 for rows in halves]
        for name in whole:
            mean = float((split[0][name] + split[1][name]) / 2)
            # Every term is a sum of non-negative cross-entropies divided by a count: float32 summation of n
            # terms errs by at most n * u of the sum (u = 2^-24), n at most the batch's tokens or objects; a few
            # more roundings for the divisions and the mean.
            n = batch[f"{model.layout.parts[0]}_tokens"].numel() + int(objects.sum()) + 8
            agrees = abs(mean - float(whole[name])) <= n * 2.0**-24 * float(whole[name])
            if should_match:
                assert agrees, (name, mean, float(whole[name]))
            elif name == "loss_scene":  # a mean per process weighs an object by its process's object count
                assert not agrees, (name, mean, float(whole[name]))
