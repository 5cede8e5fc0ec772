"""Opt-in decoding of coordinate tokens to pixel-exact outlines: bin centres (``model.decode_bin_centres``) and
contours moved from the boundary pixels' centres to their edges (``model.outline_offset``)."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from seqtr_lib.codec import SequenceCodec, TokenLayout, polygon_rle
from seqtr_lib.config import ConfigError, load_params
from seqtr_lib.sequence import dequantize, offset_polygon, sample_mask_vertices
from rounding import U32


def test_bin_centres_add_half_a_bin_to_the_lower_edge():
    # (15.5) * 640 / 1000 = 9.92, 41.5 * 480 / 1000 = 19.92, 468.5 * 0.64 = 299.84, 833.5 * 0.48 = 400.08
    expected = [9.92, 19.92, 299.84, 400.08]
    # computed in float64, returned in float32: one float32 rounding (u) and a few float64 ones, below 2u
    np.testing.assert_allclose(dequantize(np.array([15, 41, 468, 833]), 640, 480, bin_centres=True), expected,
                               rtol=2 * U32)
    tokens = torch.tensor([15, 41, 468, 833])
    decoded = dequantize(tokens, 640, 480, bin_centres=True)
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, torch.tensor(expected))
    codec = SequenceCodec(TokenLayout("box", 64, 3), bin_centres=True)
    np.testing.assert_allclose(codec.box_pixels([0, 1, 62, 63], (128, 128)), [1.0, 3.0, 125.0, 127.0])


def _line_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    direction = (end - start) / np.linalg.norm(end - start)
    offset = point - start
    return abs(offset[0] * direction[1] - offset[1] * direction[0])


@pytest.mark.parametrize("reverse", [False, True])
def test_a_square_grows_by_the_distance_on_every_side_in_either_winding(reverse):
    square = np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]])
    square = square[::-1] if reverse else square
    grown = offset_polygon(square, 0.5)
    expected = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 3.5], [0.5, 3.5]])
    np.testing.assert_allclose(grown, expected[::-1] if reverse else expected)
    shrunk = np.array([[1.5, 1.5], [2.5, 1.5], [2.5, 2.5], [1.5, 2.5]])
    np.testing.assert_allclose(offset_polygon(square, -0.5), shrunk[::-1] if reverse else shrunk)


def test_every_edge_of_a_quadrilateral_moves_the_distance_outward():
    quadrilateral = np.array([[0.0, 0.0], [10.0, 0.0], [12.0, 7.0], [-1.0, 6.0]])  # every angle over 60 degrees
    grown = offset_polygon(quadrilateral, 0.7)
    centroid = quadrilateral.mean(axis=0)
    for i in range(4):
        old_start, old_end = quadrilateral[i], quadrilateral[(i + 1) % 4]
        new_start, new_end = grown[i], grown[(i + 1) % 4]
        # parallel, 0.7 apart, and the new edge lies farther from the centroid
        assert _line_distance(new_start, old_start, old_end) == pytest.approx(0.7)
        assert _line_distance(new_end, old_start, old_end) == pytest.approx(0.7)
        assert _line_distance(centroid, new_start, new_end) > _line_distance(centroid, old_start, old_end)


def test_a_spike_moves_at_most_twice_the_distance():
    # (a sharp corner would otherwise move distance / sin(half its angle): a needle's tip flies off)
    spike = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 0.2]])
    assert np.linalg.norm(offset_polygon(spike, 1.0) - spike, axis=1).max() == pytest.approx(2.0)


def test_repeated_points_move_together_and_every_point_keeps_its_place():
    square = np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]])
    grown = offset_polygon(square, 0.5)
    # a repeat mid-way, and the last point repeating the first (the run wraps round)
    repeated = square[[0, 1, 1, 2, 3, 0]]
    np.testing.assert_allclose(offset_polygon(repeated, 0.5), grown[[0, 1, 1, 2, 3, 0]])


@pytest.mark.parametrize("points", [[[1.0, 1.0], [4.0, 2.0]], [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]],
                                    [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]]])
def test_polygons_without_area_come_back_unchanged(points):
    np.testing.assert_array_equal(offset_polygon(np.array(points), 0.5), np.array(points))


def _decoded_mask(mask: np.ndarray, codec: SequenceCodec) -> np.ndarray:
    """mask -> contour vertices -> tokens -> decoded polygon -> rasterised mask, at 1 bin per pixel."""
    vertices = sample_mask_vertices(mask, codec.layout.num_ray)
    tokens = codec.encode_vertices(vertices, mask.shape)
    polygon = codec.polygon_pixels(tokens, mask.shape)
    return mask_utils.decode(polygon_rle(polygon, mask.shape))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


EXACT = SequenceCodec(TokenLayout("mask", 64, num_ray=18), bin_centres=True, outline_offset=0.5)
REFERENCE = SequenceCodec(TokenLayout("mask", 64, num_ray=18))


@pytest.mark.parametrize("top, left, height, width", [(10, 20, 4, 4), (3, 5, 9, 9), (40, 1, 5, 13), (7, 30, 17, 3)])
def test_a_rectangle_comes_back_pixel_exact(top, left, height, width):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[top:top + height, left:left + width] = 1  # sides whose contours put a sampled point on every corner
    assert np.array_equal(_decoded_mask(mask, EXACT), mask)
    vertices = sample_mask_vertices(mask, 18)
    corners = EXACT.polygon_pixels(EXACT.encode_vertices(vertices, mask.shape), mask.shape)
    assert {tuple(p) for p in corners.tolist()} >= {(left, top), (left + width, top), (left + width, top + height),
                                                   (left, top + height)}  # on the pixels' outer edges
    # The reference's polygon runs through the boundary pixels' indices: one row and one column short.
    assert _iou(_decoded_mask(mask, REFERENCE), mask) == pytest.approx((height - 1) * (width - 1) / (height * width))


def test_a_disc_comes_back_closer_than_with_the_reference_decoding():
    yy, xx = np.mgrid[:64, :64]
    for radius in (5, 8, 12, 20):
        mask = ((xx - 31.5) ** 2 + (yy - 30.5) ** 2 <= radius**2).astype(np.uint8)
        exact, reference = _iou(_decoded_mask(mask, EXACT), mask), _iou(_decoded_mask(mask, REFERENCE), mask)
        # 18 chords of a disc keep 1 - sin(2 pi / 18) / (2 pi / 18) of its area at worst (~2 %)
        assert exact > 0.93 and exact > reference + 0.5 / radius, (radius, exact, reference)


def test_paper_decoding_is_the_default_and_the_offset_is_bounded():
    model = load_params(None).model
    assert (model.decode_bin_centres, model.outline_offset) == (False, 0.0)
    for bad in ("5", "-0.5"):
        with pytest.raises(ConfigError, match="model.outline_offset"):
            load_params(None, [f"model.outline_offset={bad}"])


def test_the_synthetic_params_reach_the_codec():
    box = SequenceCodec.from_experiment(load_params("params/synthetic_det.yaml"))
    mask = SequenceCodec.from_experiment(load_params("params/synthetic_mask.yaml"))
    assert (box.bin_centres, box.outline_offset) == (True, 0.0)
    assert (mask.bin_centres, mask.outline_offset) == (True, 0.5)


def test_the_decoded_polygon_in_original_pixels_is_moved_then_scaled():
    codec = SequenceCodec(TokenLayout("mask", 64, num_ray=4), bin_centres=True, outline_offset=0.5)
    tokens = np.array([10, 10, 13, 10, 13, 13, 10, 13, 64, 64])  # a square of pixel indices 10..13, then EOS
    meta = {"scale_factor": (0.5, 0.25), "pad_shape": (64, 64), "ori_shape": (256, 128)}
    # bin centres 10.5..13.5, then half a pixel out: 10..14; original: x / 0.5, y / 0.25
    np.testing.assert_allclose(codec.polygon_in_original(tokens, meta), [[20, 40], [28, 40], [28, 56], [20, 56]])
    decoded = codec.decode({"mask_tokens": tokens[None]}, 0, meta)
    assert mask_utils.area(decoded["pred_rle"]) == 8 * 16
