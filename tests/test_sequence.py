"""Specifications for seqtr_lib.sequence: quantization, mask contour sampling, tokens -> masks."""

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqtr_lib.sequence import (
    NUM_BIN,
    dequantize,
    mask_to_rle,
    polygon_to_rle,
    quantize,
    rle_to_mask,
    sample_mask_vertices,
    shuffle_point_order,
)
from rounding import U32

EOS = NUM_BIN
MISSING = [-1.0, -1.0]


# --- quantize / dequantize -------------------------------------------------------------------


def test_coordinate_equal_to_padded_side_maps_to_last_bin_not_eos():
    # The reference turned x == pad_w into 1000, which is the EOS id.
    assert quantize([640.0, 480.0], 640, 480).tolist() == [999, 999]
    assert quantize([700.0, -3.0], 640, 480).tolist() == [999, 0]
    assert EOS not in quantize(np.array([[640.0, 480.0, 640.0, 0.0]]), 640, 480)


def test_dequantize_maps_a_token_to_its_bin_lower_edge():
    # 15*640/1000 = 9.6, 41*480/1000 = 19.68, 468*640/1000 = 299.52, 833*480/1000 = 399.84.
    box = dequantize(np.array([15, 41, 468, 833]), 640, 480)
    assert box.dtype == np.float32
    # computed in float64, returned in float32: one float32 rounding (u) and a few float64 ones, below 2u
    np.testing.assert_allclose(box, [9.6, 19.68, 299.52, 399.84], rtol=2 * U32)


def test_quantize_keeps_leading_dimensions():
    coords = np.zeros((2, 3, 4))
    assert quantize(coords, 640, 480).shape == (2, 3, 4)
    assert dequantize(coords.astype(np.int64), 640, 480).shape == (2, 3, 4)


def test_padded_sides_may_differ_per_sample():
    # Sample 0: 320/640*1000 = 500; sample 1: 320/320*1000 = 1000 -> 999; y 240/480*1000 = 500.
    coords = np.array([[320.0, 240.0], [320.0, 240.0]])
    tokens = quantize(coords, np.array([[640], [320]]), np.array([[480], [480]]))
    assert tokens.tolist() == [[500, 500], [999, 500]]


def test_torch_tensors_come_back_as_torch_tensors():
    tokens = quantize(torch.tensor([[10.0, 20.0, 300.0, 400.0]]), 640, 480)
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64
    assert tokens.tolist() == [[15, 41, 468, 833]]
    coords = dequantize(tokens, 640, 480)
    assert isinstance(coords, torch.Tensor) and coords.dtype == torch.float32
    np.testing.assert_allclose(coords.numpy(), [[9.6, 19.68, 299.52, 399.84]], rtol=2 * U32)  # as above
    assert quantize(torch.tensor([640.0, 480.0]), 640, 480).tolist() == [999, 999]


def test_odd_coordinate_count_is_rejected():
    with pytest.raises(ValueError, match="interleaved"):
        quantize([1.0, 2.0, 3.0], 640, 480)


@settings(max_examples=60, deadline=None)
@given(
    pad_w=st.integers(1, 2048),
    pad_h=st.integers(1, 2048),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=16).filter(
        lambda values: len(values) % 2 == 0
    ),
)
def test_quantize_dequantize_round_trip_is_within_one_bin(pad_w, pad_h, fractions):
    sides = np.tile([pad_w, pad_h], len(fractions) // 2)
    coords = np.asarray(fractions) * sides
    tokens = quantize(coords, pad_w, pad_h)
    assert tokens.min() >= 0 and tokens.max() <= NUM_BIN - 1
    error = coords - dequantize(tokens, pad_w, pad_h)
    bin_size = sides / NUM_BIN
    # The bin's lower edge never exceeds the coordinate, but for the float32 output's rounding (u of the
    # coordinate, at most the side) and float64's few u64: 2u of the side.
    slack = 2 * U32 * sides
    assert np.all(error >= -slack) and np.all(error <= bin_size + slack)


# --- mask -> contour vertices ----------------------------------------------------------------


def square_contour(low, high):
    """Border pixels of the filled square [low, high]^2 in cv2's outer order.

    cv2 starts at the top-left pixel and runs down the left edge, right along the bottom, up the
    right edge and back left along the top: 4 * (high - low) points.
    """
    left = [(low, y) for y in range(low, high + 1)]
    bottom = [(x, high) for x in range(low + 1, high + 1)]
    right = [(high, y) for y in range(high - 1, low - 1, -1)]
    top = [(x, low) for x in range(high - 1, low, -1)]
    return left + bottom + right + top


def as_rows(points, num_ray):
    """(x, y) points then -1 slots -> (2, num_ray) like sample_mask_vertices."""
    padded = [list(point) for point in points] + [MISSING] * (num_ray - len(points))
    return np.asarray(padded, dtype=np.float32).T


def filled_square(size, low, high):
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[low : high + 1, low : high + 1] = 1
    return mask


def test_square_contour_has_four_sides_of_points_taken_every_ceil_n_over_n_th():
    mask = filled_square(20, 5, 14)
    contour = square_contour(5, 14)
    assert len(contour) == 36  # 4 * (10 - 1)
    # 36 points: 18 rays -> step 2, 12 rays -> step 3, both exactly fill the slots.
    np.testing.assert_array_equal(sample_mask_vertices(mask, 18), as_rows(contour[::2], 18))
    np.testing.assert_array_equal(sample_mask_vertices(mask, 12), as_rows(contour[::3], 12))
    # 10 rays -> step ceil(3.6) = 4 -> 9 points, the tenth slot stays missing.
    vertices = sample_mask_vertices(mask, 10)
    np.testing.assert_array_equal(vertices, as_rows(contour[::4], 10))
    assert vertices.dtype == np.float32 and vertices.shape == (2, 10)
    assert vertices[:, 9].tolist() == MISSING


def test_short_contour_is_used_whole_then_missing_slots():
    mask = filled_square(8, 2, 4)
    expected = [(2, 2), (2, 3), (2, 4), (3, 4), (4, 4), (4, 3), (4, 2), (3, 2)]
    np.testing.assert_array_equal(sample_mask_vertices(mask, 12), as_rows(expected, 12))


def test_ring_keeps_its_outer_contour():
    mask = filled_square(20, 2, 17)
    mask[6:14, 6:14] = 0  # the hole's contour (area 81) is smaller than the outer one (225)
    contour = square_contour(2, 17)  # 60 points; 20 rays -> step 3
    np.testing.assert_array_equal(sample_mask_vertices(mask, 20), as_rows(contour[::3], 20))


def test_of_two_blobs_the_larger_is_sampled():
    mask = filled_square(20, 1, 3)
    mask[8:16, 8:16] = 1
    contour = square_contour(8, 15)  # 28 points, fewer than 40 rays
    np.testing.assert_array_equal(sample_mask_vertices(mask, 40), as_rows(contour, 40))


@pytest.mark.parametrize(
    "painted",
    [(), ((4, 4),), tuple((2, x) for x in range(1, 7))],
    ids=["empty", "one_pixel", "one_pixel_line"],
)
def test_mask_without_area_has_no_vertices(painted):
    mask = np.zeros((8, 8), dtype=np.uint8)
    for y, x in painted:
        mask[y, x] = 1
    np.testing.assert_array_equal(sample_mask_vertices(mask, 6), np.full((2, 6), -1.0))


def test_vertices_are_clipped_to_the_padded_image():
    mask = filled_square(20, 5, 14)
    vertices = sample_mask_vertices(mask, 18, pad_shape=(12, 10))  # pad_h 12, pad_w 10
    expected = np.asarray(square_contour(5, 14)[::2], dtype=np.float32).T
    expected[0] = np.minimum(expected[0], 9)
    expected[1] = np.minimum(expected[1], 11)
    np.testing.assert_array_equal(vertices, expected)


def test_center_sampling_rays_start_at_plus_x_and_turn_towards_plus_y():
    # Square [5, 15]^2: mass centre (10, 10); every 45-degree ray hits a side middle or a corner.
    mask = filled_square(21, 5, 15)
    four = sample_mask_vertices(mask, 4, center_sampling=True)
    np.testing.assert_array_equal(four, as_rows([(15, 10), (10, 15), (5, 10), (10, 5)], 4))
    eight = sample_mask_vertices(mask, 8, center_sampling=True)
    expected = [(15, 10), (15, 15), (10, 15), (5, 15), (5, 10), (5, 5), (10, 5), (15, 5)]
    np.testing.assert_array_equal(eight, as_rows(expected, 8))


def test_center_sampling_on_a_disc_reaches_the_radius_on_the_axes():
    mask = np.zeros((21, 21), dtype=np.uint8)
    cv2.circle(mask, (10, 10), 6, 1, thickness=-1)
    vertices = sample_mask_vertices(mask, 4, center_sampling=True)
    np.testing.assert_array_equal(vertices, as_rows([(16, 10), (10, 16), (4, 10), (10, 4)], 4))


def test_center_sampling_takes_the_farthest_of_points_on_the_same_ray():
    # An arch: two legs joined by a top bar. Its centre has x = 9; the upward ray passes the bar's
    # inner edge (9, 4) and its outer edge (9, 2), and the farther one wins.
    mask = np.zeros((21, 19), dtype=np.uint8)
    mask[2:19, 2:5] = 1
    mask[2:19, 14:17] = 1
    mask[2:5, 2:17] = 1
    vertices = sample_mask_vertices(mask, 4, center_sampling=True)
    assert vertices[:, 3].tolist() == [9.0, 2.0]


def on_boundary(mask, x, y):
    """A mask pixel on the image edge or with a non-mask 4-neighbour."""
    height, width = mask.shape
    if not mask[y, x]:
        return False
    if x in (0, width - 1) or y in (0, height - 1):
        return True
    return not (mask[y - 1, x] and mask[y + 1, x] and mask[y, x - 1] and mask[y, x + 1])


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["rectangle", "ellipse"]),
    corner=st.tuples(st.integers(-5, 30), st.integers(-5, 30)),
    extent=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    angle=st.integers(0, 179),
    num_ray=st.integers(3, 24),
    center_sampling=st.booleans(),
)
def test_every_vertex_lies_on_the_mask_boundary(
    kind, corner, extent, angle, num_ray, center_sampling
):
    mask = np.zeros((32, 32), dtype=np.uint8)
    if kind == "rectangle":
        end = (corner[0] + extent[0], corner[1] + extent[1])
        cv2.rectangle(mask, corner, end, 1, thickness=-1)
    else:
        cv2.ellipse(mask, corner, extent, angle, 0, 360, 1, thickness=-1)
    vertices = sample_mask_vertices(mask, num_ray, center_sampling=center_sampling)
    valid = vertices[0] >= 0
    # Missing slots only ever trail the valid ones.
    assert not np.any(valid[1:] & ~valid[:-1])
    for x, y in vertices[:, valid].T.astype(int):
        assert on_boundary(mask, x, y), (x, y)


# --- vertices <-> tokens ---------------------------------------------------------------------


# --- point order shuffling -------------------------------------------------------------------


def batch_of_vertices(valid_counts, num_ray):
    """(B, 2, num_ray) with distinct points per sample, the first valid_counts[b] of them valid."""
    vertices = np.full((len(valid_counts), 2, num_ray), -1.0, dtype=np.float32)
    for sample, count in enumerate(valid_counts):
        vertices[sample, 0, :count] = np.arange(count) + 100 * sample
        vertices[sample, 1, :count] = np.arange(count) * 2 + 1
    return vertices


def test_fraction_zero_returns_an_unchanged_copy():
    vertices = batch_of_vertices([8, 5, 0], 8)
    shuffled = shuffle_point_order(vertices, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(shuffled, vertices)
    assert shuffled is not vertices


def test_fraction_one_permutes_every_sample_with_one_shared_permutation():
    vertices = batch_of_vertices([8, 5, 8, 0], 8)
    original = vertices.copy()
    shuffled = shuffle_point_order(vertices, 1.0, np.random.default_rng(1))
    np.testing.assert_array_equal(vertices, original)  # input untouched
    # Sample 0's x values are 0..7, so they spell out the permutation.
    permutation = shuffled[0, 0].astype(int).tolist()
    assert sorted(permutation) == list(range(8)) and permutation != list(range(8))
    np.testing.assert_array_equal(shuffled[2], original[2][:, permutation])
    # Sample 1 keeps its 3 missing slots at the end; its 5 points follow the same permutation.
    restricted = [index for index in permutation if index < 5]
    np.testing.assert_array_equal(shuffled[1, :, :5], original[1][:, restricted])
    assert np.all(shuffled[1, :, 5:] == -1)
    np.testing.assert_array_equal(shuffled[3], original[3])


def test_fraction_of_the_batch_is_rounded_to_a_sample_count():
    vertices = batch_of_vertices([10] * 6, 10)
    shuffled = shuffle_point_order(vertices, 0.6, np.random.default_rng(2))  # round(3.6) = 4
    changed = [b for b in range(6) if not np.array_equal(shuffled[b], vertices[b])]
    assert len(changed) == 4
    orders = [(shuffled[sample, 0] - 100 * sample).astype(int).tolist() for sample in changed]
    assert all(order == orders[0] for order in orders)


def test_shuffle_fraction_outside_zero_to_one_is_rejected():
    with pytest.raises(ValueError, match="fraction"):
        shuffle_point_order(batch_of_vertices([4], 4), 1.5, np.random.default_rng(0))


@settings(max_examples=40, deadline=None)
@given(
    valid_counts=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_shuffling_keeps_each_samples_points_and_trailing_missing_slots(
    valid_counts, fraction, seed
):
    vertices = batch_of_vertices(valid_counts, 9)
    shuffled = shuffle_point_order(vertices, fraction, np.random.default_rng(seed))
    for sample, count in enumerate(valid_counts):
        before = sorted(map(tuple, vertices[sample, :, :count].T.tolist()))
        after = sorted(map(tuple, shuffled[sample, :, :count].T.tolist()))
        assert before == after
        assert np.all(shuffled[sample, :, count:] == -1)


# --- polygons / tokens -> RLE ----------------------------------------------------------------


def filled_polygon_area(polygon, height, width):
    """Pixel count of cv2.fillPoly, which includes the border pixels pycocotools may leave out."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.asarray(polygon, dtype=np.int32).reshape(-1, 2)], 1)
    return int(canvas.sum())


def perimeter(polygon):
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    return float(np.linalg.norm(points - np.roll(points, 1, axis=0), axis=1).sum())


@pytest.mark.parametrize(
    "polygon",
    [
        [2, 2, 30, 2, 16, 25],  # triangle
        [3, 3, 35, 3, 35, 30, 20, 12, 3, 30],  # concave
        [0, 0, 39, 0, 39, 31, 0, 31],  # the whole image
    ],
    ids=["triangle", "concave", "full_frame"],
)
def test_polygon_rle_area_agrees_with_cv2_fill_up_to_the_border(polygon):
    rle = polygon_to_rle([polygon], 32, 40)
    assert rle["size"] == [32, 40] and isinstance(rle["counts"], bytes)
    difference = abs(int(mask_utils.area(rle)) - filled_polygon_area(polygon, 32, 40))
    assert difference <= perimeter(polygon)


PIXEL = st.integers(0, 47)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(PIXEL, PIXEL), min_size=3, max_size=8, unique=True))
def test_convex_polygon_rle_area_agrees_with_cv2_fill(points):
    hull = cv2.convexHull(np.asarray(points, dtype=np.int32))[:, 0, :]
    polygon = hull.reshape(-1).tolist()
    if len(hull) < 3:
        polygon = polygon + polygon[:2]  # collinear points: a degenerate triangle
    area = int(mask_utils.area(polygon_to_rle([polygon], 48, 48)))
    difference = abs(area - filled_polygon_area(polygon, 48, 48))
    assert difference <= perimeter(polygon) + 1


def test_several_polygons_are_merged_as_a_union():
    square_a = [2, 2, 12, 2, 12, 12, 2, 12]  # 10 x 10
    square_b = [20, 5, 26, 5, 26, 9, 20, 9]  # 6 x 4, disjoint
    assert int(mask_utils.area(polygon_to_rle([square_a, square_b], 32, 32))) == 100 + 24
    assert int(mask_utils.area(polygon_to_rle([square_a, square_a], 32, 32))) == 100


def test_two_point_polygon_is_the_box_it_spans():
    for polygon in ([2, 3, 12, 8], [12, 8, 2, 3], [12, 3, 2, 8]):
        assert int(mask_utils.area(polygon_to_rle([polygon], 20, 20))) == 10 * 5


def test_one_point_polygon_adds_nothing_and_an_odd_polygon_is_rejected():
    assert int(mask_utils.area(polygon_to_rle([[4, 4]], 20, 20))) == 0
    assert int(mask_utils.area(polygon_to_rle([], 20, 20))) == 0
    with pytest.raises(ValueError, match="polygon 1"):
        polygon_to_rle([[2, 2, 9, 2, 9, 9], [1, 2, 3]], 20, 20)


def test_mask_rle_round_trip_is_exact_with_bytes_or_str_counts():
    mask = (np.random.default_rng(3).random((17, 23)) > 0.6).astype(np.uint8)
    rle = mask_to_rle(mask)
    assert rle["size"] == [17, 23] and isinstance(rle["counts"], bytes)
    np.testing.assert_array_equal(rle_to_mask(rle), mask)
    as_json = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    np.testing.assert_array_equal(rle_to_mask(as_json), mask)
    assert int(mask_utils.area(rle)) == int(mask.sum())


def test_uncompressed_rle_counts_are_decoded():
    # Column-major runs: 3 zeros, 4 ones, 2 zeros in a 3 x 3 image.
    mask = rle_to_mask({"size": [3, 3], "counts": [3, 4, 2]})
    expected = np.zeros(9, dtype=np.uint8)
    expected[3:7] = 1
    np.testing.assert_array_equal(mask, expected.reshape(3, 3, order="F"))
