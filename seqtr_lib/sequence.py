"""Sequence construction: coordinates <-> tokens, mask contours -> vertices, tokens -> polygons -> RLE.

Token layout (one place, nowhere else computes it):

    0 .. num_bin-1   quantized coordinates (x or y, interleaved x1, y1, x2, y2, ...)
    num_bin          EOS (end of sequence; also the target of every missing mask vertex)

so the decoder's output vocabulary has ``num_bin + 1`` entries. Task identity in multi-task
sequences is a separate learned 2-entry embedding, not a token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

NUM_BIN = 1000


def eos_token(num_bin: int = NUM_BIN) -> int:
    """The EOS id: one past the last coordinate bin."""
    return num_bin


def token_vocab_size(num_bin: int = NUM_BIN) -> int:
    """Number of decoder output classes: the coordinate bins plus EOS."""
    return num_bin + 1


# Accepted by quantize/dequantize; the result has the same type as the input.
ArrayLike = np.ndarray | torch.Tensor

# pycocotools rasterises a polygon only from 3 points (6 coordinates) on.
_MIN_POLYGON_COORDS = 6


def _extent(
    pad_w: Any, pad_h: Any, mapping: str, image_size: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) lengths that map onto ``num_bin`` bins: float64 tensors on ``like``'s device."""
    if mapping == "relative":
        width, height = pad_w, pad_h
    elif mapping == "absolute":
        width, height = image_size, image_size
    else:
        raise ValueError(f"coordinate mapping {mapping!r} is unknown; use 'relative' or 'absolute'")
    return (
        torch.as_tensor(width, dtype=torch.float64, device=like.device),
        torch.as_tensor(height, dtype=torch.float64, device=like.device),
    )


def _interleaved_float64(values: Any, what: str) -> torch.Tensor:
    """Any array-like (..., 2K) as a float64 tensor; numpy input shares memory where it can."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim == 0 or values.shape[-1] % 2:
        raise ValueError(
            f"{what} must be interleaved x, y pairs (last dimension even), "
            f"got shape {tuple(values.shape)}"
        )
    return values


def quantize(
    coords: ArrayLike,
    pad_w: float,
    pad_h: float,
    num_bin: int = NUM_BIN,
    mapping: str = "relative",
    image_size: int = 640,
) -> ArrayLike:
    """Pixel coordinates -> coordinate tokens in [0, num_bin - 1].

    coords: (..., 2K) interleaved x1, y1, x2, y2, ... in pixels of the padded image (numpy array,
    list or torch tensor). ``relative`` maps x by floor(x / pad_w * num_bin) and y by
    floor(y / pad_h * num_bin); ``absolute`` divides both by ``image_size``. pad_w and pad_h may
    also be arrays broadcastable to coords[..., 0::2]. Returns int64, a torch tensor (on the same
    device) for a torch tensor and a numpy array otherwise.

    The clamp to num_bin - 1 departs from the reference, whose clamp is a no-op (it clamps a copy):
    there a coordinate equal to the padded width becomes num_bin, the EOS id.
    """
    values = _interleaved_float64(coords, "coords")
    width, height = _extent(pad_w, pad_h, mapping, image_size, like=values)
    tokens = torch.empty(values.shape, dtype=torch.int64, device=values.device)
    tokens[..., 0::2] = torch.floor(values[..., 0::2] / width * num_bin)
    tokens[..., 1::2] = torch.floor(values[..., 1::2] / height * num_bin)
    tokens.clamp_(0, num_bin - 1)
    return tokens if isinstance(coords, torch.Tensor) else tokens.numpy()


def dequantize(
    tokens: ArrayLike,
    pad_w: float,
    pad_h: float,
    num_bin: int = NUM_BIN,
    mapping: str = "relative",
    image_size: int = 640,
) -> ArrayLike:
    """Coordinate tokens -> pixel coordinates, the inverse of :func:`quantize` up to one bin.

    tokens: (..., 2K) interleaved x, y tokens (numpy array, list or torch tensor). Token t becomes
    t * pad_w / num_bin for x and t * pad_h / num_bin for y (``image_size`` for both when
    ``absolute``), i.e. the bin's lower edge. Returns float32, a torch tensor (on the same device)
    for a torch tensor and a numpy array otherwise.
    """
    values = _interleaved_float64(tokens, "tokens")
    width, height = _extent(pad_w, pad_h, mapping, image_size, like=values)
    coords = torch.empty_like(values)
    coords[..., 0::2] = values[..., 0::2] * width / num_bin
    coords[..., 1::2] = values[..., 1::2] * height / num_bin
    coords = coords.to(torch.float32)
    return coords if isinstance(tokens, torch.Tensor) else coords.numpy()


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def box_to_tokens(
    box_xyxy: Sequence[float] | np.ndarray, pad_shape: tuple[int, int], num_bin: int = NUM_BIN
) -> np.ndarray:
    """Box [x1, y1, x2, y2] in pixels of the padded image (pad_h, pad_w) -> int64[4] tokens."""
    box = np.asarray(box_xyxy, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"box_xyxy must hold 4 values x1, y1, x2, y2, got shape {box.shape}")
    pad_h, pad_w = pad_shape
    return quantize(box, pad_w, pad_h, num_bin)


def tokens_to_box(
    tokens: Sequence[int] | np.ndarray, pad_shape: tuple[int, int], num_bin: int = NUM_BIN
) -> np.ndarray:
    """Four tokens -> float32[4] box [x1, y1, x2, y2] in pixels of the padded image."""
    values = _to_numpy(tokens)
    if values.shape != (4,):
        raise ValueError(f"a box is 4 tokens x1, y1, x2, y2, got shape {values.shape}")
    pad_h, pad_w = pad_shape
    return dequantize(values, pad_w, pad_h, num_bin)


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


def vertices_to_tokens(
    vertices: np.ndarray, pad_shape: tuple[int, int], num_bin: int = NUM_BIN
) -> np.ndarray:
    """Contour vertices (..., 2, N) (x row, y row) -> int64 tokens (..., 2N) x1, y1, x2, y2, ...

    A vertex with a negative coordinate (the -1 of a missing slot) becomes two EOS tokens.
    pad_shape is (pad_h, pad_w).
    """
    vertices = np.asarray(vertices)
    if vertices.ndim < 2 or vertices.shape[-2] != 2:
        raise ValueError(f"vertices must be (..., 2, N) (x row, y row), got {vertices.shape}")
    points = np.swapaxes(vertices, -1, -2)  # (..., N, 2)
    pad_h, pad_w = pad_shape
    tokens = quantize(points, pad_w, pad_h, num_bin)
    tokens[(points < 0).any(axis=-1)] = eos_token(num_bin)
    return tokens.reshape(*points.shape[:-2], -1)


def _valid_coordinate_tokens(tokens: Any, num_bin: int) -> np.ndarray:
    """Tokens up to the first EOS, without an odd trailing token: (2K,) int64."""
    tokens = _to_numpy(tokens).astype(np.int64).reshape(-1)
    eos_at = np.flatnonzero(tokens == eos_token(num_bin))
    if len(eos_at):
        tokens = tokens[: eos_at[0]]
    return tokens[: len(tokens) // 2 * 2]


def tokens_to_vertices(
    tokens: Any, pad_shape: tuple[int, int], num_bin: int = NUM_BIN, mapping: str = "relative",
    image_size: int = 640,
) -> np.ndarray:
    """Generated mask tokens (T,) -> float32 (K, 2) x, y points in pixels of the padded image.

    The sequence is cut at its first EOS and an odd trailing token is dropped, so K <= T // 2.
    pad_shape is (pad_h, pad_w); ``mapping``/``image_size`` as for :func:`dequantize`. Accepts a numpy
    array, list or torch tensor.
    """
    pad_h, pad_w = pad_shape
    coords = dequantize(_valid_coordinate_tokens(tokens, num_bin), pad_w, pad_h, num_bin, mapping, image_size)
    return coords.reshape(-1, 2)


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


def rle_to_mask(rle: dict) -> np.ndarray:
    """pycocotools RLE dict (bytes, str or uncompressed list counts) -> (H, W) uint8 mask."""
    import pycocotools.mask as mask_utils

    if isinstance(rle["counts"], list):
        height, width = rle["size"]
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(np.uint8)


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


def tokens_to_rle(tokens: Any, pad_shape: tuple[int, int], num_bin: int = NUM_BIN) -> dict:
    """Generated mask tokens (T,) -> RLE dict of the padded image size (pad_h, pad_w).

    Cut at the first EOS, drop an odd trailing token, dequantize; fewer than 2 points give an
    empty mask, exactly 2 points the box they span, more a polygon.
    """
    pad_h, pad_w = pad_shape
    points = tokens_to_vertices(tokens, pad_shape, num_bin)
    if len(points) < 2:
        return _empty_rle(pad_h, pad_w)
    return polygon_to_rle([points.reshape(-1).tolist()], pad_h, pad_w)
