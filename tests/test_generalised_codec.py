"""The generalised answer format (seqtr_lib.codec, issue 36): zero or more boxes or contours, then EOS."""

from __future__ import annotations

import numpy as np
import pytest

from seqtr_lib.codec import (
    SequenceCodec,
    TokenLayout,
    box_answer,
    contour_answer,
    read_box_answer,
    read_contour_answer,
)
from seqtr_lib.sequence import offset_polygon
from rounding import U32

NUM_BIN = 10
EOS, SEP = 10, 11
LAYOUT = TokenLayout("mask", NUM_BIN, num_ray=3)
CODEC = SequenceCodec(LAYOUT)
PAD = (200, 100)  # height 200, width 100: one bin is 20 px in y and 10 px in x, so a swapped x/y shows


def test_eos_and_the_separator_are_the_two_ids_after_the_coordinates():
    for num_bin in (10, 64, 1000):
        layout = TokenLayout("box", num_bin, num_ray=3)
        assert (layout.eos, layout.separator, layout.vocab_size) == (num_bin, num_bin + 1, num_bin + 1)


def test_a_box_answer_by_hand():
    # Given in another order, on bin edges (so decoded exactly); tokens (x // 10, y // 20): [5, 5, 7, 9],
    # [1, 2, 3, 4], [6, 2, 9, 3]. Row-major by the top-left corner: y1 = 2 twice (x1 = 1 first, then 6), then 5.
    boxes = [[50, 100, 70, 180], [10, 40, 30, 80], [60, 40, 90, 60]]
    tokens = CODEC.encode_boxes(boxes, PAD, max_objects=3)
    assert tokens.tolist() == [1, 2, 3, 4, 6, 2, 9, 3, 5, 5, 7, 9, EOS]
    assert CODEC.decode_boxes(tokens, PAD, max_objects=3).tolist() == [boxes[1], boxes[2], boxes[0]]


def test_a_contour_answer_by_hand():
    # First vertices (x // 10, y // 20): (5, 5), (1, 6), (7, 1): ordered by y, the third first.
    contours = [[[50, 100], [80, 100], [80, 160]], [[10, 120], [40, 120], [40, 180], [10, 180]],
                [[70, 20], [90, 20], [90, 60]]]
    tokens = CODEC.encode_contours(contours, PAD, max_objects=3, max_points=4)
    assert tokens.tolist() == [7, 1, 9, 1, 9, 3, SEP, 5, 5, 8, 5, 8, 8, SEP, 1, 6, 4, 6, 4, 9, 1, 9, EOS]
    decoded = CODEC.decode_contours(tokens, PAD, max_objects=3, max_points=4)
    assert [c.tolist() for c in decoded] == [contours[2], contours[0], contours[1]]


def test_contours_with_one_first_vertex_keep_their_given_order():
    first, second = [[1, 1], [2, 9], [3, 3]], [[1, 1], [4, 4], [2, 2]]
    assert contour_answer([first, second], LAYOUT, 2, 3).tolist() == [1, 1, 2, 9, 3, 3, SEP, 1, 1, 4, 4, 2, 2, EOS]
    assert contour_answer([second, first], LAYOUT, 2, 3).tolist() == [1, 1, 4, 4, 2, 2, SEP, 1, 1, 2, 9, 3, 3, EOS]


def test_boxes_with_one_top_left_corner_are_ordered_by_the_bottom_right():
    assert box_answer([[1, 1, 5, 6], [1, 1, 5, 2], [1, 1, 3, 6]], LAYOUT, 3).tolist() == [
        1, 1, 5, 2, 1, 1, 3, 6, 1, 1, 5, 6, EOS]


def test_the_empty_answer_is_eos_alone_both_ways():
    assert CODEC.encode_boxes(np.zeros((0, 4)), PAD, 3).tolist() == [EOS]
    assert CODEC.encode_contours([], PAD, 3, 4).tolist() == [EOS]
    assert CODEC.decode_boxes([EOS], PAD, 3).shape == (0, 4)
    assert CODEC.decode_contours([EOS], PAD, 3, 4) == []


def random_objects(rng: np.random.Generator, count: int, bin_h: float) -> np.ndarray:
    """``count`` top-left y values in distinct y bins (so their order is the pixels' order), inside the bins."""
    rows = rng.choice(NUM_BIN - 2, size=count, replace=False)
    return (rows + rng.uniform(0.05, 0.95, size=count)) * bin_h


@pytest.mark.parametrize("bin_centres", [True, False])
def test_box_answers_round_trip_within_the_quantization_error(bin_centres):
    rng = np.random.default_rng(0)
    codec = SequenceCodec(LAYOUT, bin_centres=bin_centres)
    (height, width), bin_w, bin_h = PAD, PAD[1] / NUM_BIN, PAD[0] / NUM_BIN
    for count in range(5):
        y1 = random_objects(rng, count, bin_h)
        x1 = rng.uniform(0, width - 2 * bin_w, count)
        boxes = np.stack([x1, y1, rng.uniform(x1, width - 1e-9), rng.uniform(y1, height - 1e-9)], axis=1)
        decoded = codec.decode_boxes(codec.encode_boxes(boxes, PAD, 4), PAD, 4)
        expected = boxes[np.argsort(y1)]
        assert decoded.shape == expected.shape
        check_quantization_error(decoded, expected, np.array([bin_w, bin_h] * 2), bin_centres)


@pytest.mark.parametrize("bin_centres", [True, False])
def test_contour_answers_round_trip_within_the_quantization_error(bin_centres):
    rng = np.random.default_rng(1)
    codec = SequenceCodec(LAYOUT, bin_centres=bin_centres)
    (height, width), bin_w, bin_h = PAD, PAD[1] / NUM_BIN, PAD[0] / NUM_BIN
    for count in range(5):
        first_y = random_objects(rng, count, bin_h)
        contours = []
        for y in first_y:
            points = rng.uniform(0, [width, height], size=(int(rng.integers(3, 7)), 2))
            points[0, 1] = y
            contours.append(points)
        decoded = codec.decode_contours(codec.encode_contours(contours, PAD, 4, 6), PAD, 4, 6)
        expected = [contours[i] for i in np.argsort(first_y)]
        assert [len(c) for c in decoded] == [len(c) for c in expected]
        for got, want in zip(decoded, expected):
            check_quantization_error(got, want, np.array([bin_w, bin_h]), bin_centres)


def check_quantization_error(decoded: np.ndarray, original: np.ndarray, bin_size: np.ndarray,
                             bin_centres: bool) -> None:
    """A bin's centre is within half a bin of every coordinate that quantizes to it; its lower edge is at most
    one bin below. Plus float32 rounding of the decoded pixels (values below 200: 200 * U32)."""
    rounding = 200 * U32
    error = decoded - original
    if bin_centres:
        assert (np.abs(error) <= bin_size / 2 + rounding).all()
    else:
        assert ((error <= rounding) & (error > -bin_size - rounding)).all()


def test_decoding_takes_what_a_model_emits():
    # EOS first: no object, whatever follows; no EOS at all: read to the end.
    assert read_box_answer([EOS, 1, 2, 3, 4], LAYOUT, 3).shape == (0, 4)
    assert read_box_answer([1, 2, 3, 4], LAYOUT, 3).tolist() == [[1, 2, 3, 4]]
    # A box cut short by EOS, and one holding a separator, are dropped.
    assert read_box_answer([1, 2, 3, 4, 5, 6, EOS], LAYOUT, 3).tolist() == [[1, 2, 3, 4]]
    assert read_box_answer([1, 2, SEP, 4, 5, 6, 7, 8, EOS], LAYOUT, 3).tolist() == [[5, 6, 7, 8]]
    # More boxes than the cap: the first ones.
    assert read_box_answer([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, EOS], LAYOUT, 2).tolist() == [[1] * 4, [2] * 4]

    assert read_contour_answer([EOS, 1, 1, 2, 2, 3, 3], LAYOUT, 3, 4) == []
    # A leading separator, a contour of 2 points, an empty one and an odd trailing token; what follows EOS.
    emitted = [SEP, 1, 1, 2, 2, 3, 3, SEP, 4, 4, 5, 5, SEP, SEP, 6, 6, 7, 7, 8, 8, 9, EOS, 5, 5, 5, 5, 5, 5]
    assert [c.tolist() for c in read_contour_answer(emitted, LAYOUT, 3, 4)] == [
        [[1, 1], [2, 2], [3, 3]], [[6, 6], [7, 7], [8, 8]]]
    # Caps: the first max_points points of a contour, the first max_objects contours.
    emitted = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, SEP, 6, 6, 7, 7, 8, 8, SEP, 1, 2, 3, 4, 5, 6, EOS]
    assert [c.tolist() for c in read_contour_answer(emitted, LAYOUT, 2, 3)] == [
        [[1, 1], [2, 2], [3, 3]], [[6, 6], [7, 7], [8, 8]]]


def test_decoding_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="token 12 is not in the generalised vocabulary 0 .. 11"):
        read_contour_answer([1, 1, 12, EOS], LAYOUT, 3, 4)
    with pytest.raises(ValueError, match="token -1"):
        read_box_answer([-1, 1, 1, 1], LAYOUT, 3)


def test_decoded_contours_move_outward_as_the_one_object_decoding_does():
    tokens = CODEC.encode_contours([[[20, 40], [60, 40], [60, 120]]], PAD, 1, 3)
    offset = SequenceCodec(LAYOUT, outline_offset=1.5)
    expected = offset_polygon(CODEC.decode_contours(tokens, PAD, 1, 3)[0].astype(np.float64), 1.5)
    np.testing.assert_array_equal(offset.decode_contours(tokens, PAD, 1, 3)[0], expected.astype(np.float32))


@pytest.mark.parametrize("call, message", [
    (lambda: CODEC.encode_boxes([[0, 0, 1, 1]] * 3, PAD, 2), "3 boxes but the cap is 2"),
    (lambda: CODEC.encode_boxes([0, 0, 1, 1], PAD, 2), r"boxes must be \(K, 4\)"),
    (lambda: CODEC.encode_contours([[[0, 0], [1, 1], [2, 2]]] * 2, PAD, 1, 3), "2 contours but the cap is 1"),
    (lambda: CODEC.encode_contours([[[0, 0], [1, 1]]], PAD, 1, 3), "contour 0 has 2 points; a contour needs 3 to 3"),
    (lambda: CODEC.encode_contours([[[0, 0]] * 4], PAD, 1, 3), "contour 0 has 4 points"),
    (lambda: CODEC.encode_contours([[[0, 0], [-1, -1], [2, 2]]], PAD, 1, 3), "negative coordinate; drop missing"),
    (lambda: box_answer([[0, 0, EOS, 1]], LAYOUT, 1), r"coordinate tokens must lie in 0 .. 9"),
])
def test_encoding_refuses_what_the_format_or_the_caps_cannot_hold(call, message):
    with pytest.raises(ValueError, match=message):
        call()
