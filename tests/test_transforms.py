"""Transforms move the box and the mask exactly with the image (LSJ zoom in/out, test resize, padding)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from seqtr_lib.data.refer import ReferDataset
from seqtr_lib.data.transforms import (
    large_scale_jitter,
    pad_shape_for,
    rescaled_shape,
    resize_long_side,
    search_crop,
    to_tv_tensors,
)
from seqtr_lib.text import Vocabulary
from rounding import U32

TARGET = np.array([250, 20, 200])  # a colour nothing else in the scenes has
TOLERANCE = 60  # max |channel difference| for a pixel to count as the target colour
ZOOM_OUT, ZOOM_IN = (0.3, 0.35), (1.3, 1.4)
# A star-like target: concave, so a mask that drifted or was resampled wrongly shows.
STAR = np.array([[150, 40], [165, 85], [215, 85], [175, 110], [190, 160], [150, 130], [110, 160],
                 [125, 110], [85, 85], [135, 85]], dtype=np.int32)


def scene(height: int = 200, width: int = 300, polygon: np.ndarray | None = None,
          box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) RGB image: smooth grey-green background, target painted TARGET; and its (H, W) mask."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([60 + xx * 100 // width, 90 + yy * 80 // height, np.full_like(xx, 70)], axis=-1)
    image = image.astype(np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    if polygon is not None:
        cv2.fillPoly(mask, [polygon], 1)
    if box is not None:
        x1, y1, x2, y2 = box
        mask[y1:y2, x1:x2] = 1
    image[mask > 0] = TARGET
    return image, mask


def target_pixels(image) -> np.ndarray:
    """(h, w) bool: pixels of the target colour in a (3, h, w) image tensor."""
    pixels = np.asarray(image).astype(np.int32).transpose(1, 2, 0)
    return np.abs(pixels - TARGET).max(axis=-1) <= TOLERANCE


def assert_box_covers_target(image, box: np.ndarray) -> None:
    """Within one pixel: target-coloured pixels lie inside the box, and the box holds only the target."""
    found = target_pixels(image)
    assert found.any(), "the target vanished"
    x1, y1, x2, y2 = box
    ys, xs = np.nonzero(found)
    # Pixel (i, j) covers [i, i+1) x [j, j+1).
    assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1, (xs.min(), xs.max() + 1, box)
    assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1, (ys.min(), ys.max() + 1, box)
    inner = found[int(np.ceil(y1 + 1)) : int(np.floor(y2 - 1)), int(np.ceil(x1 + 1)) : int(np.floor(x2 - 1))]
    assert inner.all(), "pixels inside the box are not the target colour"


def assert_mask_covers_target(image, mask: np.ndarray) -> None:
    """Within one pixel: target pixels lie in the dilated mask, and the eroded mask is all target."""
    found = target_pixels(image)
    mask = np.asarray(mask, dtype=np.uint8)
    assert mask.any() and found.any()
    kernel = np.ones((3, 3), np.uint8)
    assert not (found & ~cv2.dilate(mask, kernel).astype(bool)).any(), "target pixels outside the mask"
    assert not (cv2.erode(mask, kernel).astype(bool) & ~found).any(), "mask pixels that are not the target"


@pytest.mark.parametrize("scale_range", [ZOOM_OUT, ZOOM_IN], ids=["zoom_out", "zoom_in"])
def test_box_follows_image_under_large_scale_jitter(scale_range):
    box = (110, 60, 180, 130)
    image, _ = scene(box=box)
    for seed in range(6):
        out = large_scale_jitter(*to_tv_tensors(image, np.array(box, float), None), np.random.default_rng(seed),
                                 image_size=128, scale_range=scale_range)
        assert_box_covers_target(out.image, out.box[0].numpy())


@pytest.mark.parametrize("scale_range", [ZOOM_OUT, ZOOM_IN], ids=["zoom_out", "zoom_in"])
def test_mask_follows_image_under_large_scale_jitter(scale_range):
    image, mask = scene(polygon=STAR)
    for seed in range(6):
        out = large_scale_jitter(*to_tv_tensors(image, None, mask), np.random.default_rng(seed),
                                 image_size=128, scale_range=scale_range)
        assert_mask_covers_target(out.image, out.mask[0].numpy())


def test_box_and_mask_follow_image_under_test_resize():
    box = (110, 60, 180, 130)
    image, mask = scene(box=box)
    for size in (96, 160, 480):
        out = resize_long_side(*to_tv_tensors(image, np.array(box, float), mask), image_size=size)
        assert_box_covers_target(out.image, out.box[0].numpy())
        assert_mask_covers_target(out.image, out.mask[0].numpy())


def test_test_resize_scales_the_long_side_to_image_size_and_records_the_geometry():
    image, _ = scene(height=100, width=50)
    out = resize_long_side(*to_tv_tensors(image, np.array([10.0, 20.0, 30.0, 40.0]), None), image_size=64)
    g = out.geometry
    assert (g.ori_shape, g.img_shape, g.pad_shape) == ((100, 50), (64, 32), (64, 32))
    assert g.scale_factor == (32 / 50, 64 / 100) and g.crop == (0, 0)
    assert tuple(out.image.shape) == (3, 64, 32)
    # the box resized in float32: the scale's rounding, the product's and the expected decimal's, 3u
    np.testing.assert_allclose(out.box[0].numpy(), [6.4, 12.8, 19.2, 25.6], rtol=3 * U32)


def test_zoom_in_crops_to_the_test_resize_shape_and_zoom_out_only_shrinks():
    image, _ = scene(height=200, width=300)
    base = rescaled_shape((200, 300), 128 / 300)  # the plain test-time shape, (85, 128)
    assert base == (85, 128)
    for seed in range(5):
        zoom_in = large_scale_jitter(*to_tv_tensors(image, np.array([110.0, 60, 180, 130]), None),
                                     np.random.default_rng(seed), image_size=128, scale_range=ZOOM_IN)
        assert zoom_in.geometry.img_shape == base and tuple(zoom_in.image.shape[-2:]) == base
        assert 1.3 * 128 / 300 - 0.01 <= zoom_in.geometry.scale_factor[0] <= 1.4 * 128 / 300 + 0.01
        zoom_out = large_scale_jitter(*to_tv_tensors(image, None, None), np.random.default_rng(seed),
                                      image_size=128, scale_range=ZOOM_OUT)
        assert zoom_out.geometry.crop == (0, 0)
        assert max(zoom_out.geometry.img_shape) <= 0.35 * 128 + 1
        assert zoom_out.geometry.pad_shape == pad_shape_for(zoom_out.geometry.img_shape)


def test_geometry_maps_original_points_to_transformed_ones():
    box = np.array([110.0, 60.0, 180.0, 130.0])
    image, _ = scene(box=tuple(int(v) for v in box))
    out = large_scale_jitter(*to_tv_tensors(image, box, None), np.random.default_rng(1), image_size=128,
                             scale_range=ZOOM_IN)
    g = out.geometry
    expected = box * np.tile(g.scale_factor, 2) - np.tile(g.crop, 2)
    # float32: the scale's and the product's rounding, the crop's subtraction: 3u of the scaled box, 4u with
    # float64's own
    scaled = np.abs(box * np.tile(g.scale_factor, 2)).max()
    np.testing.assert_allclose(out.box[0].numpy(), expected, atol=4 * U32 * scaled)


def test_pixels_stay_raw_uint8_values():
    image, mask = scene(box=(100, 50, 200, 150))
    out = resize_long_side(*to_tv_tensors(image, None, mask), image_size=150)
    assert out.image.dtype.is_floating_point is False and int(out.image.max()) == 250
    interior = np.asarray(out.image)[:, 50:60, 80:90]
    assert (interior.reshape(3, -1).T == TARGET).all()


def test_pad_shape_rounds_up_to_multiples_of_32():
    assert pad_shape_for((1, 32)) == (32, 32)
    assert pad_shape_for((33, 640)) == (64, 640)
    assert pad_shape_for((427, 640)) == (448, 640)


def test_crop_search_keeps_a_small_target_fully_visible():
    rng = np.random.default_rng(0)
    box = np.array([700.0, 500.0, 760.0, 560.0])
    for _ in range(20):
        x, y = search_crop((800, 900), (600, 640), rng, box=box)
        assert 0 <= x <= 900 - 640 and 0 <= y <= 800 - 600
        assert x <= 700 and x + 640 >= 760 and y <= 500 and y + 600 >= 560


def test_crop_search_by_mask_prefers_windows_holding_the_mask():
    mask = np.zeros((800, 900), np.uint8)
    mask[20:80, 30:90] = 1
    for seed in range(10):
        x, y = search_crop((800, 900), (600, 640), np.random.default_rng(seed), mask=mask)
        assert mask[y : y + 600, x : x + 640].sum() >= 0.9 * mask.sum()


def test_crop_search_falls_back_to_the_most_visible_window_for_a_huge_target():
    # The target fills the whole image: no window sees more than (640 * 600) / (900 * 800) = 0.53 of it,
    # below every threshold, so the best window (any window sees exactly that share) is returned.
    x, y = search_crop((800, 900), (600, 640), np.random.default_rng(0), box=np.array([0.0, 0, 900, 800]))
    assert 0 <= x <= 260 and 0 <= y <= 200


def _write_star_dataset(root: Path) -> None:
    image, mask = scene(polygon=STAR)
    (root / "images" / "synthetic").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "synthetic" / "5.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    polygon = STAR.reshape(-1).astype(float).tolist()
    annotation = {"image_id": 5, "height": 200, "width": 300, "expressions": ["the star"], "mask": [polygon],
                  "bbox": [85, 40, 130, 120]}
    (root / "annotations" / "synthetic").mkdir(parents=True)
    (root / "annotations" / "synthetic" / "instances.json").write_text(json.dumps({"train": [annotation]}))


@pytest.mark.parametrize("center_sampling", [False, True], ids=["contour_steps", "center_rays"])
def test_every_mask_vertex_is_inside_the_padded_image_and_on_the_target_contour(tmp_path, center_sampling):
    _write_star_dataset(tmp_path)
    dataset = ReferDataset(tmp_path, "synthetic", "train", "mask", Vocabulary.build(["the star"]), training=True,
                           image_size=128, num_ray=12, center_sampling=center_sampling)
    kernel = np.ones((3, 3), np.uint8)
    for epoch in range(8):
        sample = dataset[(epoch, 0)]
        region = target_pixels(sample["image"]).astype(np.uint8)
        contour = region & ~cv2.erode(region, kernel).astype(bool)
        near_contour = cv2.dilate(contour.astype(np.uint8), kernel)  # on or next to it
        pad_h, pad_w = sample["meta"]["pad_shape"]
        points = sample["vertices"].T[(sample["vertices"] >= 0).all(axis=0)]
        assert len(points) >= 3
        for x, y in points:
            assert 0 <= x < pad_w and 0 <= y < pad_h
            assert near_contour[int(y), int(x)], (epoch, x, y)
