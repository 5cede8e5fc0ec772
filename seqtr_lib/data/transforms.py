"""Geometric transforms that move the box and the mask with the image: LSJ, test resize, pad to /32.

Inputs and outputs are torchvision tv_tensors: ``Image`` uint8 (3, H, W) RGB 0-255 (pixels are never
normalised: SeqTR feeds raw 0-255 values), ``BoundingBoxes`` XYXY in pixels and ``Mask`` uint8 (1, H, W).
Coordinates are pixels with the origin at the top-left corner; pixel (i, j) covers [i, i+1) x [j, j+1).

Padding to a multiple of 32 is recorded (``pad_shape``), not applied: the collate function zero-pads
each image once, to the batch maximum, which also covers its own ``pad_shape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

SIZE_DIVISOR = 32
# LSJ crop search: target visibility thresholds tried in turn, and random crops per threshold.
CROP_VISIBILITY_THRESHOLDS = (0.9, 0.8, 0.7, 0.6, 0.5)
CROP_TRIES = 100


@dataclass(frozen=True)
class Geometry:
    """How a sample's image was transformed; all shapes are (height, width) in pixels.

    A point p of the original image lands at ``p * scale_factor - crop`` in the transformed one.
    """

    ori_shape: tuple[int, int]  # decoded image
    img_shape: tuple[int, int]  # after resize (and LSJ crop): the valid region of the padded image
    pad_shape: tuple[int, int]  # img_shape rounded up to a multiple of SIZE_DIVISOR
    scale_factor: tuple[float, float]  # (sx, sy) = resized / original size
    crop: tuple[int, int] = (0, 0)  # (x, y) offset of the LSJ crop in the resized image

    @property
    def resized_shape(self) -> tuple[int, int]:
        """(height, width) of the whole image after the resize, before any crop."""
        (height, width), (sx, sy) = self.ori_shape, self.scale_factor
        return round(height * sy), round(width * sx)


@dataclass(frozen=True)
class Transformed:
    """An image with its target after a transform; ``image``, ``box`` or ``mask`` is None when not requested
    (a None image: only the geometry and the targets, for data.device_transforms)."""

    image: tv_tensors.Image | None
    box: tv_tensors.BoundingBoxes | None
    mask: tv_tensors.Mask | None
    geometry: Geometry


def to_tv_tensors(
    image: np.ndarray | None, box_xyxy: np.ndarray | None, mask: np.ndarray | None,
    ori_shape: tuple[int, int] | None = None,
) -> tuple[tv_tensors.Image | None, tv_tensors.BoundingBoxes | None, tv_tensors.Mask | None]:
    """Wrap a decoded (H, W, 3) uint8 RGB image, an optional [4] XYXY box and (H, W) mask; no copies.

    The image keeps its height-width-channel memory layout (channels-last strides), the fast layout
    for torch's uint8 resize kernels. ``image`` None (data.device_transforms): the targets only, of an
    image of ``ori_shape`` (height, width).
    """
    height, width = image.shape[:2] if image is not None else _image_shape(None, ori_shape)
    image_tv = None if image is None else tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
    box_tv = None
    if box_xyxy is not None:
        box_tv = tv_tensors.BoundingBoxes(
            torch.as_tensor(np.asarray(box_xyxy, dtype=np.float32)).reshape(1, 4),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(height, width),
        )
    mask_tv = None if mask is None else tv_tensors.Mask(torch.from_numpy(mask)[None])
    return image_tv, box_tv, mask_tv


def pad_shape_for(shape: tuple[int, int], divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``divisor``."""
    return tuple(int(math.ceil(side / divisor) * divisor) for side in shape)  # type: ignore[return-value]


def rescaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(height, width) times ``scale``, rounded half up as mmcv's imrescale does (at least 1 pixel)."""
    return tuple(max(1, int(side * scale + 0.5)) for side in shape)  # type: ignore[return-value]


def _resize(
    image: tv_tensors.Image | None,
    box: tv_tensors.BoundingBoxes | None,
    mask: tv_tensors.Mask | None,
    shape: tuple[int, int],
) -> tuple[tv_tensors.Image | None, tv_tensors.BoundingBoxes | None, tv_tensors.Mask | None]:
    size = list(shape)
    if image is not None:
        # Antialiased when shrinking (the reference's cv2 bilinear is not): LSJ zooms out to 0.3x.
        image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if box is not None:
        box = F.resize(box, size)  # scales x by new_w / w and y by new_h / h exactly
    if mask is not None:
        # Nearest pixel centre keeps the mask aligned with the bilinear image; OpenCV's kernel does it
        # in every version (torchvision's mask resize coerced NEAREST_EXACT to NEAREST in some) and faster.
        resized = cv2.resize(mask[0].numpy(), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        mask = tv_tensors.Mask(torch.from_numpy(resized)[None])
    return image, box, mask


def _clip_box(box: tv_tensors.BoundingBoxes, shape: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """Clip to [0, W-1] x [0, H-1], as the reference does after every geometric step."""
    height, width = shape
    clipped = box.as_subclass(torch.Tensor).clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width - 1)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height - 1)
    return tv_tensors.wrap(clipped, like=box)


def _geometry(ori_shape: tuple[int, int], img_shape: tuple[int, int], resized: tuple[int, int],
              crop: tuple[int, int] = (0, 0)) -> Geometry:
    return Geometry(
        ori_shape=ori_shape,
        img_shape=img_shape,
        pad_shape=pad_shape_for(img_shape),
        scale_factor=(resized[1] / ori_shape[1], resized[0] / ori_shape[0]),
        crop=crop,
    )


def resize_long_side(
    image: tv_tensors.Image | None,
    box: tv_tensors.BoundingBoxes | None = None,
    mask: tv_tensors.Mask | None = None,
    image_size: int = 640,
    ori_shape: tuple[int, int] | None = None,
) -> Transformed:
    """Test-time transform: scale so the long side is ``image_size`` (keeping the aspect ratio).

    ``image`` None: only the geometry and the targets, for an image of ``ori_shape`` (height, width)."""
    ori_shape = _image_shape(image, ori_shape)
    resized = rescaled_shape(ori_shape, image_size / max(ori_shape))
    image, box, mask = _resize(image, box, mask, resized)
    return Transformed(image, box, mask, _geometry(ori_shape, resized, resized))


def _image_shape(image: tv_tensors.Image | None, ori_shape: tuple[int, int] | None) -> tuple[int, int]:
    if image is not None:
        return tuple(image.shape[-2:])  # type: ignore[return-value]
    if ori_shape is None:
        raise ValueError("a transform without an image needs the image's ori_shape (height, width)")
    return tuple(ori_shape)  # type: ignore[return-value]


def _box_visibility(box: np.ndarray, xs: np.ndarray, ys: np.ndarray, crop_w: int, crop_h: int) -> np.ndarray:
    """Share of the XYXY ``box`` area inside each crop window with top-left (xs, ys): shape of xs."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    inside_w = np.clip(np.minimum(xs + crop_w, x2) - np.maximum(xs, x1), 0, None)
    inside_h = np.clip(np.minimum(ys + crop_h, y2) - np.maximum(ys, y1), 0, None)
    if area <= 0:  # a degenerate (clipped) box: any window will do
        return np.ones(xs.shape)
    return inside_w * inside_h / area


def _mask_visibility(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, crop_w: int, crop_h: int) -> np.ndarray:
    """Share of the mask's pixels inside each crop window, from one summed-area table."""
    table = cv2.integral(mask.astype(np.uint8, copy=False))  # (H+1, W+1) int32
    area = table[-1, -1]
    if area == 0:
        return np.ones(xs.shape)
    inside = table[ys + crop_h, xs + crop_w] - table[ys, xs + crop_w] - table[ys + crop_h, xs] + table[ys, xs]
    return inside / area


def search_crop(
    resized: tuple[int, int],
    crop_shape: tuple[int, int],
    rng: np.random.Generator,
    box: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[int, int]:
    """LSJ crop search: the (x, y) offset of a ``crop_shape`` window in a ``resized`` image.

    For each threshold of CROP_VISIBILITY_THRESHOLDS (0.9 down to 0.5) up to CROP_TRIES random
    windows are drawn; the first whose share of the target inside it reaches the threshold wins. If
    none does, the best window seen is kept. The target is the XYXY ``box`` if given, else the (H, W)
    ``mask``, else nothing (the first random window).

    Departures from the reference, which calls this share "IoU": there, a fallback to the best window
    shifts the box by the last window tried instead, and a best share under 0.3 skips the crop (an
    image larger than 640 with scale factor 1); here the chosen window always moves image and target.
    """
    (height, width), (crop_h, crop_w) = resized, crop_shape
    shape = (len(CROP_VISIBILITY_THRESHOLDS), CROP_TRIES)
    xs = rng.integers(0, width - crop_w + 1, size=shape)
    ys = rng.integers(0, height - crop_h + 1, size=shape)
    if box is not None:
        visibility = _box_visibility(np.asarray(box, dtype=np.float64), xs, ys, crop_w, crop_h)
    elif mask is not None:
        visibility = _mask_visibility(mask, xs, ys, crop_w, crop_h)
    else:
        return int(xs[0, 0]), int(ys[0, 0])
    for row, threshold in enumerate(CROP_VISIBILITY_THRESHOLDS):
        passing = np.flatnonzero(visibility[row] >= threshold)
        if len(passing):
            return int(xs[row, passing[0]]), int(ys[row, passing[0]])
    best = np.unravel_index(np.argmax(visibility), shape)
    return int(xs[best]), int(ys[best])


def large_scale_jitter(
    image: tv_tensors.Image | None,
    box: tv_tensors.BoundingBoxes | None,
    mask: tv_tensors.Mask | None,
    rng: np.random.Generator,
    image_size: int = 640,
    scale_range: tuple[float, float] = (0.3, 1.4),
    ori_shape: tuple[int, int] | None = None,
) -> Transformed:
    """SeqTR's large-scale jitter: resize by U(scale_range) x image_size / max(H, W), crop if larger.

    A jitter below 1 only shrinks the image (zoom out; the padding fills the rest). Above 1 the image
    is enlarged and an ``image_size``-limited window (the size of the plain test-time resize) is cut
    out by :func:`search_crop`, chosen by the box if there is one, else by the mask, so the target
    stays mostly visible. The box is then clipped to [0, W-1] x [0, H-1] of the result.
    ``image`` None: the same draws, geometry and targets for an image of ``ori_shape`` (height, width);
    `seqtr_lib.data.device_images` then applies the geometry to the pixels on the GPU.
    """
    ori_shape = _image_shape(image, ori_shape)
    jitter = rng.uniform(*scale_range)
    base_scale = image_size / max(ori_shape)
    resized = rescaled_shape(ori_shape, jitter * base_scale)
    image, box, mask = _resize(image, box, mask, resized)
    crop = (0, 0)
    img_shape = resized
    if jitter > 1.0:
        img_shape = tuple(min(a, b) for a, b in zip(rescaled_shape(ori_shape, base_scale), resized))
        target_box = None if box is None else box[0].numpy()
        target_mask = None if mask is None else mask[0].numpy()
        crop = search_crop(resized, img_shape, rng, box=target_box, mask=target_mask)
        left, top = crop
        if image is not None:
            image = F.crop(image, top, left, img_shape[0], img_shape[1])
        if box is not None:
            box = F.crop(box, top, left, img_shape[0], img_shape[1])
        if mask is not None:
            mask = F.crop(mask, top, left, img_shape[0], img_shape[1])
    if box is not None:
        box = _clip_box(box, img_shape)
    return Transformed(image, box, mask, _geometry(ori_shape, img_shape, resized, crop))


def transformed_targets(geometry: Geometry, boxes_xyxy: np.ndarray | None, masks: list[np.ndarray],
                        clip_boxes: bool) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Several targets through a transform already drawn (`large_scale_jitter`, `resize_long_side`): boxes
    (K, 4) XYXY and (H, W) uint8 masks of the original image, resized to the geometry's resized shape and
    cut to its crop, as those transforms move their one target; boxes clipped to [0, W-1] x [0, H-1] of the
    result with ``clip_boxes`` (LSJ clips, the test resize does not). Returns float32 (K, 4) and the masks."""
    resized, (height, width), (left, top) = geometry.resized_shape, geometry.img_shape, geometry.crop
    moved_boxes = None
    if boxes_xyxy is not None:
        boxes = tv_tensors.BoundingBoxes(torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32)).reshape(-1, 4),
                                         format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=geometry.ori_shape)
        boxes = F.resize(boxes, list(resized))
        if (left, top) != (0, 0) or (height, width) != resized:
            boxes = F.crop(boxes, top, left, height, width)
        if clip_boxes:
            boxes = _clip_box(boxes, (height, width))
        moved_boxes = boxes.as_subclass(torch.Tensor).numpy().astype(np.float32)
    moved_masks = [cv2.resize(mask, (resized[1], resized[0]), interpolation=cv2.INTER_NEAREST_EXACT)
                   [top:top + height, left:left + width] for mask in masks]
    return moved_boxes, moved_masks


@dataclass(frozen=True)
class Canvas:
    """Where a zoom-out puts an image: on a ``shape`` (height, width) canvas of one ``grey`` level, its top-left
    corner at ``offset`` (x, y). A point p of the image lands at p + offset; nothing is cropped or scaled."""

    shape: tuple[int, int]
    offset: tuple[int, int]
    grey: int


def draw_canvas(ori_shape: tuple[int, int], max_factor: float, grey_range: tuple[int, int],
                rng: np.random.Generator) -> Canvas:
    """A random zoom-out canvas for an image of ``ori_shape`` (height, width): each side independently a whole
    number of pixels from the image's side to ``max_factor`` times it (so the aspect ratio varies), the
    image at a uniform whole-pixel offset inside it, the grey uniform in ``grey_range`` (inclusive)."""
    height, width = ori_shape
    canvas_height = int(rng.integers(height, int(height * max_factor) + 1))
    canvas_width = int(rng.integers(width, int(width * max_factor) + 1))
    offset = (int(rng.integers(canvas_width - width + 1)), int(rng.integers(canvas_height - height + 1)))
    grey = int(rng.integers(grey_range[0], grey_range[1] + 1))
    return Canvas((canvas_height, canvas_width), offset, grey)


def place_on_canvas(image: np.ndarray | None, box_xyxy: np.ndarray | None, mask: np.ndarray | None,
                    canvas: Canvas) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The zoom-out itself, on a decoded (H, W, 3) uint8 image, an XYXY box and an (H, W) mask (any may be
    None): the image pasted on the grey canvas at its offset, the box shifted by the offset, the mask padded
    with zeros the same way. The later resize to data.image_size then shrinks the scene: that is the zoom."""
    left, top = canvas.offset
    if image is not None:
        placed = np.full((*canvas.shape, image.shape[2]), canvas.grey, dtype=image.dtype)
        placed[top:top + image.shape[0], left:left + image.shape[1]] = image
        image = placed
    if box_xyxy is not None:
        box_xyxy = np.asarray(box_xyxy, dtype=np.float64) + np.array([left, top, left, top], dtype=np.float64)
    if mask is not None:
        padded = np.zeros(canvas.shape, dtype=mask.dtype)
        padded[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
        mask = padded
    return image, box_xyxy, mask
