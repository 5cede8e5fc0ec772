"""The pure steps under the token format: quantization, mask contours -> vertices, point-order
shuffling, polygons <-> RLE masks.

`seqtr_lib.codec` composes them into the sequences themselves (layout, EOS, targets, decoding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

NUM_BIN = 1000


# Accepted by quantize/dequantize; the result has the same type as the input.
ArrayLike = np.ndarray | torch.Tensor

# pycocotools rasterises a polygon only from 3 points (6 coordinates) on.
_MIN_POLYGON_COORDS = 6


def _lengths(width: Any, height: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) lengths that map onto ``num_bin`` bins, as float64 tensors on ``like``'s device."""
    return (torch.as_tensor(width, dtype=torch.float64, device=like.device),
            torch.as_tensor(height, dtype=torch.float64, device=like.device))


def _interleaved_float64(values: Any, what: str) -> torch.Tensor:
    """Any array-like (..., 2K) as a float64 tensor; numpy input shares memory where it can."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim == 0 or values.shape[-1] % 2:
        raise ValueError(
            f"{what} must be interleaved x, y pairs (last dimension even), "
            f"got shape {tuple(values.shape)}"
        )
    return values


def quantize(coords: ArrayLike, width: Any, height: Any, num_bin: int = NUM_BIN) -> ArrayLike:
    """Pixel coordinates -> coordinate tokens in [0, num_bin - 1].

    coords: (..., 2K) interleaved x1, y1, x2, y2, ... in pixels (numpy array, list or torch tensor).
    x becomes floor(x / width * num_bin) and y floor(y / height * num_bin); width and height are the
    extent the bins span (the codec passes the padded size, or the input size for the absolute
    mapping) and may be arrays broadcastable to coords[..., 0::2]. Returns int64, a torch tensor (on the
    same device) for a torch tensor and a numpy array otherwise.

    The clamp to num_bin - 1 departs from the reference, whose clamp is a no-op (it clamps a copy):
    there a coordinate equal to the padded width becomes num_bin, the EOS id.
    """
    values = _interleaved_float64(coords, "coords")
    width, height = _lengths(width, height, like=values)
    tokens = torch.empty(values.shape, dtype=torch.int64, device=values.device)
    tokens[..., 0::2] = torch.floor(values[..., 0::2] / width * num_bin)
    tokens[..., 1::2] = torch.floor(values[..., 1::2] / height * num_bin)
    tokens.clamp_(0, num_bin - 1)
    return tokens if isinstance(coords, torch.Tensor) else tokens.numpy()


def dequantize(tokens: ArrayLike, width: Any, height: Any, num_bin: int = NUM_BIN,
               bin_centres: bool = False) -> ArrayLike:
    """Coordinate tokens -> pixel coordinates, the inverse of :func:`quantize` up to one bin.

    tokens: (..., 2K) interleaved x, y tokens (numpy array, list or torch tensor). Token t becomes
    t * width / num_bin for x and t * height / num_bin for y, i.e. the bin's lower edge (the reference's
    decoding), or with ``bin_centres`` (t + 0.5) * width / num_bin, the middle of the coordinates that
    quantize to t: unbiased where the lower edge is half a bin short on average. Returns float32, a torch
    tensor (on the same device) for a torch tensor and a numpy array otherwise.
    """
    values = _interleaved_float64(tokens, "tokens")
    if bin_centres:
        values = values + 0.5
    width, height = _lengths(width, height, like=values)
    coords = torch.empty_like(values)
    coords[..., 0::2] = values[..., 0::2] * width / num_bin
    coords[..., 1::2] = values[..., 1::2] * height / num_bin
    coords = coords.to(torch.float32)
    return coords if isinstance(tokens, torch.Tensor) else coords.numpy()


def _ray_vertices(contour: np.ndarray, center: tuple[float, float], num_ray: int) -> np.ndarray:
    """Per ray from ``center``, the contour (n, 2) point best aligned with it: (num_ray, 2)."""
    offset = contour.astype(np.float64) - np.asarray(center)  # (n, 2)
    point_angle = np.arctan2(offset[:, 1], offset[:, 0])
    squared_distance = (offset**2).sum(axis=1)
    chosen = np.empty((num_ray, 2), dtype=contour.dtype)
    for ray in range(num_ray):
        ray_angle = 2.0 * math.pi * ray / num_ray
        gap = np.abs((point_angle - ray_angle + math.pi) % (2.0 * math.pi) - math.pi)
        # Points on one ray differ in angle only by rounding; among them the outermost wins.
        aligned = np.flatnonzero(gap <= gap.min() + 1e-9)
        chosen[ray] = contour[aligned[np.argmax(squared_distance[aligned])]]
    return chosen


def sample_mask_vertices(
    mask: np.ndarray,
    num_ray: int,
    pad_shape: tuple[int, int] | None = None,
    center_sampling: bool = False,
) -> np.ndarray:
    """Sample up to ``num_ray`` points of a mask's outer contour, as in SeqTR's mask targets.

    mask: (H, W) uint8 (non-zero = object), already padded. Returns float32 (2, num_ray): row 0 is
    x, row 1 is y, in pixels; missing slots are -1 and always come after the valid points.

    The contours are found with ``cv2.findContours`` (RETR_TREE, CHAIN_APPROX_NONE) and the one with
    the largest ``contourArea`` (the first of equals) is kept. If its moment m00 is 0 (an empty
    mask, a single pixel or a one-pixel-wide line) every slot is -1. Otherwise:

    - default: a contour of n <= num_ray points is used whole, in cv2's order; a longer one gives
      every ceil(n / num_ray)-th point starting with the first, so fewer than num_ray can result;
    - ``center_sampling``: from the contour's mass centre c = (m10 / m00, m01 / m00), ray k points
      at angle 2 * pi * k / num_ray, measured as atan2(dy, dx) in image axes (x right, y down, so
      k = 0 points to +x and angles grow towards +y). Ray k takes the contour point p minimising
      the wrapped angular gap |atan2(p - c) - angle_k|; points within 1e-9 rad of that minimum are
      tied and the one farthest from c wins (the first in contour order if equally far). All
      num_ray slots are filled; a point may serve several rays.

    Vertices are clipped to the padded image, x to [0, pad_w - 1] and y to [0, pad_h - 1];
    pad_shape is (pad_h, pad_w) and defaults to mask.shape.
    """
    # Imported here so that the model side (and a GPU box without OpenCV) can use the token layout.
    import cv2

    vertices = np.full((2, num_ray), -1.0, dtype=np.float32)
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE
    )
    if not contours:
        return vertices
    contour = max(contours, key=cv2.contourArea)
    moments = cv2.moments(contour)
    if moments["m00"] == 0:
        return vertices
    points = contour[:, 0, :]  # (n, 2) x, y
    if center_sampling:
        center = (moments["m10"] / moments["m00"], moments["m01"] / moments["m00"])
        points = _ray_vertices(points, center, num_ray)
    elif len(points) > num_ray:
        points = points[:: math.ceil(len(points) / num_ray)]
    pad_h, pad_w = mask.shape if pad_shape is None else pad_shape
    vertices[0, : len(points)] = np.clip(points[:, 0], 0, pad_w - 1)
    vertices[1, : len(points)] = np.clip(points[:, 1], 0, pad_h - 1)
    return vertices


def offset_polygon(points: np.ndarray, distance: float) -> np.ndarray:
    """Move every edge of a closed polygon ``distance`` pixels outward (inward when negative).

    points: (K, 2) x, y in image axes (y down), in either winding order. Returns float64 (K, 2), point k
    still the k-th (so per-point scores and attention stay aligned). Each vertex moves along the bisector of
    its two edges' outward normals, so far that both edges end up ``distance`` from where they were (at
    most twice ``distance``, so a spike does not shoot off); a repeated point moves with its first copy.
    With fewer than three distinct points, or no area, the points come back unchanged. "Outward" is the
    side the polygon's net (shoelace) area lies on, so a self-intersecting polygon's minor loop moves inward.

    Why: a contour from ``cv2.findContours`` runs through the centres of an object's boundary pixels, half
    a pixel inside its edge, so a polygon through such points rasterises half a pixel short all round.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    starts = np.flatnonzero(np.any(points != np.roll(points, 1, axis=0), axis=1))  # first point of each run
    distinct = points[starts]
    twice_area = float(np.sum(distinct[:, 0] * np.roll(distinct[:, 1], -1) - np.roll(distinct[:, 0], -1) * distinct[:, 1]))
    if len(distinct) < 3 or twice_area == 0.0:
        return points
    edges = np.roll(distinct, -1, axis=0) - distinct  # edge i runs from point i to point i + 1
    # With y down, a polygon of positive shoelace area runs clockwise on screen and (dy, -dx) points outside.
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) * np.sign(twice_area)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    before, after = np.roll(normals, 1, axis=0), normals
    bisector = before + after
    length = np.linalg.norm(bisector, axis=1, keepdims=True)
    bisector = np.where(length > 1e-9, bisector / np.maximum(length, 1e-9), after)  # a full turn: its own normal
    reach = distance / np.maximum(np.sum(bisector * after, axis=1), 0.5)
    moved = distinct + bisector * reach[:, None]
    # Point k belongs to the last run starting at or before it (the points before the first start wrap round).
    run = np.searchsorted(starts, np.arange(len(points)), side="right") - 1
    return moved[run % len(starts)]


def shuffle_point_order(
    vertices: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Permute the point order of ``round(fraction * B)`` random samples by one shared permutation.

    vertices: (B, 2, N) as returned by :func:`sample_mask_vertices` (x row, y row, -1 = missing).
    Returns a new array; the input is untouched. The samples are drawn first (without
    replacement), then the permutation of range(N).

    Departure from the reference, which permutes all N slots and so can put a missing point (EOS)
    mid-sequence: a sample's valid points are reordered by the permutation restricted to them
    (with valid slots 0..n-1, the new order is [i for i in perm if i < n]) and its missing slots
    stay at the end.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"shuffle fraction must lie in [0, 1], got {fraction}")
    batch, _, num_ray = vertices.shape
    shuffled = vertices.copy()
    chosen = rng.choice(batch, size=int(round(fraction * batch)), replace=False)
    permutation = rng.permutation(num_ray)
    for sample in chosen:
        valid = (vertices[sample] >= 0).all(axis=0)  # (N,)
        order = np.concatenate([permutation[valid[permutation]], np.flatnonzero(~valid)])
        shuffled[sample] = vertices[sample][:, order]
    return shuffled


# RLE dicts below are pycocotools' compressed form, {"size": [h, w], "counts": bytes}; counts stay
# bytes throughout (decode to str only when writing JSON). pycocotools is imported lazily because
# the GPU machines that run the model do not have it.


def mask_to_rle(mask: np.ndarray) -> dict:
    """Binary mask (H, W) uint8 -> pycocotools RLE dict with bytes counts."""
    import pycocotools.mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


def compressed_rle(rle: dict) -> dict:
    """An RLE dict with uncompressed (list), str or bytes counts -> the compressed form with bytes counts."""
    import pycocotools.mask as mask_utils

    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """pycocotools RLE dict (bytes, str or uncompressed list counts) -> (H, W) uint8 mask."""
    import pycocotools.mask as mask_utils

    return mask_utils.decode(compressed_rle(rle)).astype(np.uint8)


def _empty_rle(height: int, width: int) -> dict:
    return mask_to_rle(np.zeros((height, width), dtype=np.uint8))


def _box_polygon(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """The four corners of the box spanned by two points, as a flat polygon."""
    left, right = min(x1, x2), max(x1, x2)
    top, bottom = min(y1, y2), max(y1, y2)
    return [left, top, right, top, right, bottom, left, bottom]


def polygon_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> dict:
    """Union of flat polygons [x1, y1, x2, y2, ...] (pixels) -> one RLE dict (height, width).

    Rasterised by pycocotools (``frPyObjects`` then ``merge``), which needs 3 points: a 2-point
    polygon is taken as the box spanned by its points, a 1-point or empty polygon adds nothing.
    """
    import pycocotools.mask as mask_utils

    rasterisable = []
    for index, polygon in enumerate(polygons):
        polygon = [float(value) for value in polygon]
        if len(polygon) % 2:
            raise ValueError(
                f"polygon {index} has {len(polygon)} coordinates; it needs x, y pairs"
            )
        if len(polygon) == 4:
            polygon = _box_polygon(*polygon)
        if len(polygon) >= _MIN_POLYGON_COORDS:
            rasterisable.append(polygon)
    if not rasterisable:
        return _empty_rle(height, width)
    return mask_utils.merge(mask_utils.frPyObjects(rasterisable, height, width))
