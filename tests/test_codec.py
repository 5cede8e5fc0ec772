"""Specifications for seqtr_lib.codec: the sequence layout, targets and weights, pixels <-> tokens."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from seqtr_lib.codec import SequenceCodec, TokenLayout, polygon_rle
from seqtr_lib.sequence import polygon_to_rle, rle_to_mask, sample_mask_vertices
from rounding import U32

NUM_BIN = 1000
EOS = NUM_BIN
BOX = SequenceCodec(TokenLayout("box", NUM_BIN, num_ray=18))
MASK = SequenceCodec(TokenLayout("mask", NUM_BIN, num_ray=3))


# --- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task, parts, length", [("box", ("box",), 5), ("mask", ("mask",), 2 * 7 + 1),
                                                 ("multi", ("box", "mask"), 5 + 2 * 7 + 1)])
def test_layout_of_each_task(task, parts, length):
    layout = TokenLayout(task, num_bin=64, num_ray=7)
    assert layout.parts == parts and layout.decoder_length == length
    assert (layout.eos, layout.vocab_size) == (64, 65)
    assert [layout.length(part) for part in parts] == [{"box": 4, "mask": 14}[part] for part in parts]
    assert [layout.stops_at_eos(part) for part in parts] == [part == "mask" for part in parts]


def test_split_cuts_a_joint_sequence_into_its_parts():
    layout = TokenLayout("multi", num_bin=8, num_ray=3)  # 5 box positions, then 7 mask positions
    joint = torch.arange(12)[None, :, None].expand(2, 12, 4)
    parts = layout.split(joint)
    assert list(parts) == ["box", "mask"]
    assert parts["box"][0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert parts["mask"][1, :, 0].tolist() == [5, 6, 7, 8, 9, 10, 11]


def test_what_a_model_can_generate():
    multi = TokenLayout("multi", 8, 3)
    assert multi.parts_to_generate("box") == ("box",)
    assert multi.parts_to_generate("mask") == multi.parts_to_generate(None) == ("box", "mask")
    assert TokenLayout("mask", 8, 3).parts_to_generate() == ("mask",)
    with pytest.raises(ValueError, match="built for task 'box'.*not 'mask'"):
        TokenLayout("box", 8, 3).parts_to_generate("mask")
    with pytest.raises(ValueError, match="task 'boxes' is unknown"):
        TokenLayout("boxes", 8, 3)


def test_targets_are_the_tokens_then_eos():
    assert TokenLayout("box", 5, 3).targets(torch.tensor([[3, 1, 4, 2]])).tolist() == [[3, 1, 4, 2, 5]]
    assert TokenLayout("mask", 5, 3).targets(torch.tensor([[3, 1, 4, 2, 5, 5]])).tolist() == [[3, 1, 4, 2, 5, 5, 5]]


def test_points_are_cut_at_the_first_eos_and_an_odd_token_is_dropped():
    layout = TokenLayout("mask", NUM_BIN, 4)
    assert layout.num_emitted([50, 100, 150, EOS, 7]) == 3
    assert layout.num_emitted(torch.tensor([1, 2, 3, 4])) == 4
    assert layout.valid_points([50, 100, 150, EOS, 7, 7]).tolist() == [[50, 100]]
    assert layout.valid_points([EOS, 50, 100]).shape == (0, 2)


# --- encoding --------------------------------------------------------------------------------


def test_box_tokens_are_floor_of_coordinate_over_padded_side_times_num_bin():
    # pad (480, 640): x1 10/640*1000 = 15.625 -> 15, y1 20/480*1000 = 41.67 -> 41,
    # x2 300/640*1000 = 468.75 -> 468, y2 400/480*1000 = 833.33 -> 833.
    tokens = BOX.encode_box([10, 20, 300, 400], (480, 640))
    assert tokens.tolist() == [15, 41, 468, 833] and tokens.dtype == np.int64
    # 639/640*1000 = 998.44 -> 998, 479/480*1000 = 997.92 -> 997.
    assert BOX.encode_box([0, 0, 639, 479], (480, 640)).tolist() == [0, 0, 998, 997]
    # Non-square bins: pad (100, 200): x 50/200*1000 = 250, y 50/100*1000 = 500.
    assert BOX.encode_box([50, 50, 50, 50], (100, 200)).tolist() == [250, 500, 250, 500]
    with pytest.raises(ValueError, match="4 values"):
        BOX.encode_box([1, 2, 3], (100, 200))


def test_vertices_become_interleaved_tokens_with_eos_for_missing_points():
    # pad (100, 200): x 10 -> 10/200*1000 = 50, 30 -> 150; y 10 -> 100, 40 -> 400.
    vertices = np.array([[10.0, 30.0, -1.0], [10.0, 40.0, -1.0]], dtype=np.float32)
    tokens = MASK.encode_vertices(vertices, (100, 200))
    assert tokens.dtype == np.int64
    assert tokens.tolist() == [50, 100, 150, 400, EOS, EOS]
    with pytest.raises(ValueError, match=r"\(2, N\)"):
        MASK.encode_vertices(vertices.T, (100, 200))


def test_absolute_mapping_divides_both_axes_by_image_size_both_ways():
    codec = SequenceCodec(TokenLayout("box", NUM_BIN, 3), "absolute", image_size=640)
    # 320 / 640 * 1000 = 500 and 100 / 640 * 1000 = 156.25, whatever the padded size.
    assert codec.encode_box([320, 100, 320, 100], (64, 1000)).tolist() == [500, 156, 500, 156]
    np.testing.assert_allclose(codec.box_pixels([500, 156, 500, 156], (64, 1000)), [320, 99.84, 320, 99.84])
    with pytest.raises(ValueError, match="mapping 'polar' is unknown"):
        SequenceCodec(TokenLayout("box", NUM_BIN, 3), "polar")


# --- decoding --------------------------------------------------------------------------------


def test_polygon_pixels_cut_at_first_eos_and_drop_an_odd_token():
    # pad (100, 200): x = t / 5, y = t / 10.
    expected = [[10.0, 10.0], [30.0, 40.0]]
    for tail in ([EOS, 500, 500], [700], []):
        points = MASK.polygon_pixels([50, 100, 150, 400] + tail, (100, 200))
        assert points.dtype == np.float32
        np.testing.assert_allclose(points, expected)
    assert MASK.polygon_pixels([EOS, 50, 100], (100, 200)).shape == (0, 2)
    np.testing.assert_allclose(MASK.polygon_pixels(torch.tensor([50, 100, EOS]), (100, 200)), [[10.0, 10.0]])


def test_mask_vertices_survive_the_token_round_trip_within_one_bin():
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[7:41, 7:41] = 1
    pad_shape = (64, 80)
    codec = SequenceCodec(TokenLayout("mask", NUM_BIN, 12))
    vertices = sample_mask_vertices(mask, 12, pad_shape=pad_shape)
    decoded = codec.polygon_pixels(codec.encode_vertices(vertices, pad_shape), pad_shape)
    assert decoded.shape == (12, 2)
    error = vertices.T - decoded
    # a bin, and the float32 output's rounding (u of the side, 2u with float64's)
    assert np.all(error >= 0) and np.all(error <= np.array([80, 64]) * (1 / NUM_BIN + 2 * U32))


def test_original_pixels_undo_the_resize_and_clip_boxes_to_the_image():
    # A 200 x 100 image resized by 0.32 to 64 x 32, padded to 64 x 64; 64 bins.
    codec = SequenceCodec(TokenLayout("multi", 64, 3))
    meta = {"ori_shape": (100, 200), "pad_shape": (64, 64), "scale_factor": (0.32, 0.32)}
    # Token t is t pixels of the padded input, t / 0.32 original pixels.
    np.testing.assert_allclose(codec.box_in_original([16, 8, 48, 63], meta), [50, 25, 150, 100])  # y2 196.9 clipped
    np.testing.assert_allclose(codec.polygon_in_original([16, 8, 48, 8, 48, 24, EOS], meta),
                               [[50, 25], [150, 25], [150, 75]])
    decoded = codec.decode({"box_tokens": np.array([[16, 8, 48, 24]]), "mask_tokens": np.array([[16, 8, 48, 8, 48, 24]])},
                           0, meta)
    assert decoded["pred_box"] == pytest.approx([50, 25, 150, 75])
    assert decoded["pred_polygon"] == pytest.approx([50, 25, 150, 25, 150, 75])
    assert decoded["pred_rle"]["size"] == [100, 200]
    assert int(mask_utils.area(decoded["pred_rle"])) == pytest.approx(100 * 50 / 2, rel=0.05)


# pad (100, 200): x = t / 5, y = t / 10; tokens 50, 100, 150, 400 span x 10..30, y 10..40.
TWO_POINTS = [50, 100, 150, 400]


def _rle(tokens):
    return polygon_rle(MASK.polygon_pixels(tokens, (100, 200)), (100, 200))


@pytest.mark.parametrize(
    "tokens",
    [[], [EOS], [50, 100], [50, 100, EOS, 150, 400, 500, 500], [50, 100, 150]],
    ids=["nothing", "eos_only", "one_point", "one_point_before_eos", "one_point_and_odd_token"],
)
def test_fewer_than_two_points_decode_to_an_empty_mask(tokens):
    rle = _rle(tokens)
    assert rle["size"] == [100, 200]
    assert int(mask_utils.area(rle)) == 0


@pytest.mark.parametrize(
    "tokens",
    [TWO_POINTS, TWO_POINTS + [EOS, 500, 900, 700, 100], TWO_POINTS + [500], TWO_POINTS + [500, EOS]],
    ids=["two_points", "points_after_eos_ignored", "odd_token_dropped", "odd_token_before_eos"],
)
def test_exactly_two_points_decode_to_their_box(tokens):
    assert int(mask_utils.area(_rle(tokens))) == 20 * 30


def test_three_or_more_points_decode_to_the_polygon():
    # Triangle (10, 10), (50, 10), (10, 50): the same pixels as pycocotools rasterising it directly.
    rle = _rle(torch.tensor([50, 100, 250, 100, 50, 500, EOS, EOS]))
    same_polygon = polygon_to_rle([[10, 10, 50, 10, 10, 50]], 100, 200)
    np.testing.assert_array_equal(rle_to_mask(rle), rle_to_mask(same_polygon))


@pytest.mark.parametrize("mapping, extent", [("relative", (64, 96)), ("absolute", (96, 96))])
def test_both_mappings_encode_and_decode_a_non_square_image_by_hand(mapping, extent):
    """A 200 x 100 image at image_size 96: scale 0.48, a 96 x 48 input padded to 96 x 64 (img_shape differs
    from pad_shape). Relative tokens divide by the padded size (96 wide, 64 high), absolute ones by 96 both ways."""
    codec = SequenceCodec(TokenLayout("multi", num_bin=96, num_ray=3), mapping, image_size=96)
    meta = {"ori_shape": (100, 200), "img_shape": (48, 96), "pad_shape": (64, 96), "scale_factor": (0.48, 0.48)}
    assert codec.extent(meta["pad_shape"]) == extent
    height, width = extent
    # The box 50, 25, 150, 75 of the original is 24, 12, 72, 36 in input pixels; 96 bins over width / height.
    box_tokens = [24 * 96 // width, 12 * 96 // height, 72 * 96 // width, 36 * 96 // height]
    assert box_tokens == ([24, 18, 72, 54] if mapping == "relative" else [24, 12, 72, 36])
    np.testing.assert_array_equal(codec.encode_box([24, 12, 72, 36], meta["pad_shape"]), box_tokens)
    np.testing.assert_allclose(codec.box_in_original(box_tokens, meta), [50, 25, 150, 75], atol=1e-4)
    # A triangle (24, 12), (72, 12), (72, 36) of the input, and its original pixels.
    vertices = np.array([[24, 72, 72], [12, 12, 36]], dtype=np.float32)  # x row, y row
    mask_tokens = codec.encode_vertices(vertices, meta["pad_shape"])
    assert mask_tokens.tolist() == [box_tokens[0], box_tokens[1], box_tokens[2], box_tokens[1], box_tokens[2],
                                    box_tokens[3]]
    np.testing.assert_allclose(codec.polygon_in_original(mask_tokens, meta), [[50, 25], [150, 25], [150, 75]],
                               atol=1e-4)


# A 128 x 256 image (w x h) resized to 64 x 64 scales x by 1/2 and y by 1/4, and a 256 x 128 one the other way;
# padded to 64 x 64 with 64 bins, token t is t input pixels, so x = t / sx and y = t / sy, exact in binary.
@pytest.mark.parametrize("ori_shape, scale_factor, box, polygon", [
    ((256, 128), (0.5, 0.25), [32, 32, 96, 240], [[32, 32], [96, 32], [96, 240]]),
    ((128, 256), (0.25, 0.5), [64, 16, 192, 120], [[64, 16], [192, 16], [192, 120]]),
], ids=["x_halved_y_quartered", "x_quartered_y_halved"])
def test_original_pixels_divide_x_and_y_by_their_own_scale_factors(ori_shape, scale_factor, box, polygon):
    codec = SequenceCodec(TokenLayout("multi", 64, 3))
    meta = {"ori_shape": ori_shape, "pad_shape": (64, 64), "scale_factor": scale_factor}
    tokens = [16, 8, 48, 60]  # x1, y1, x2, y2 tokens; the polygon (16, 8), (48, 8), (48, 60)
    np.testing.assert_array_equal(codec.box_in_original(tokens, meta), box)
    np.testing.assert_array_equal(codec.polygon_in_original([16, 8, 48, 8, 48, 60, codec.layout.eos], meta), polygon)
    decoded = codec.decode({"box_tokens": np.array([tokens]), "mask_tokens": np.array([[16, 8, 48, 8, 48, 60]])},
                           0, meta)
    assert decoded["pred_box"] == box
    assert decoded["pred_polygon"] == [value for point in polygon for value in point]
    # Padded to 128 x 128, token 63 is 126 input pixels: 252 or 504 original ones, beyond both sides, so the
    # box is clipped to the width along x and the height along y.
    height, width = ori_shape
    clipped = codec.box_in_original([63, 63, 63, 63], {**meta, "pad_shape": (128, 128)})
    np.testing.assert_array_equal(clipped, [width, height, width, height])
