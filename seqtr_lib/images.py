"""Reading images: files, bytes, PIL images and arrays -> (H, W, 3) uint8 RGB, with one size limit.

Every reader measures an image from its header before decoding its pixels, so an oversized file is refused
without the memory its pixels would take. This module imports only numpy at load time (the command line
reads MAX_IMAGE_PIXELS and must start instantly); OpenCV and Pillow load on first use.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

# Larger images are refused before their pixels are decoded: a 12000 x 9000 JPEG needs about 7 GB on the way
# to a 640 px network input. Grounder(max_pixels=...), the widget's grounder and `predict --max-pixels` raise it.
MAX_IMAGE_PIXELS = 40_000_000


class ImageTooLarge(ValueError):
    """An image has more pixels than the limit; the message names it, its size and how to allow it."""


class BadImageError(RuntimeError):
    """An image file is missing or cannot be decoded; the message names the file."""


def check_image_size(width: int, height: int, max_pixels: int | None, name: str = "the image") -> None:
    """Raise ImageTooLarge when width x height exceeds ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{name} is {width} x {height} pixels ({width * height / 1e6:.0f} MP), above the limit of "
                            f"{max_pixels / 1e6:.0f} MP; downscale it, or raise the limit (Grounder(max_pixels=...), "
                            "predict --max-pixels)")


def header_size(source: str | Path | bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding its pixels; None when Pillow cannot tell."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
                return opened.size
    except Image.DecompressionBombError:  # Pillow's own cap: far above any sensible limit
        return (2**31 - 1, 1)
    except Exception:  # noqa: BLE001 - not readable by Pillow: the decoder that follows reports it
        return None


def check_header(source: str | Path | bytes, max_pixels: int | None, name: str) -> None:
    """Raise ImageTooLarge when the header of a file or of its bytes gives more than ``max_pixels`` pixels.

    An unreadable header passes: the decoder that follows reports the file.
    """
    if max_pixels is not None and (size := header_size(source)):
        check_image_size(*size, max_pixels, name)


def _decode_with_opencv(data: np.ndarray) -> np.ndarray | None:
    """Encoded bytes -> (H, W, 3) uint8 RGB, or None when OpenCV cannot decode them.

    IMREAD_COLOR honours the EXIF orientation tag, expands grayscale to three channels, drops an alpha
    channel and maps 16-bit samples to 8 bits (the high byte).
    """
    import cv2

    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB with its EXIF orientation applied.

    Raises BadImageError, and ImageTooLarge (read from the header, before decoding) above ``max_pixels``.
    """
    check_header(path, max_pixels, str(path))
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise BadImageError(f"cannot read image {path}: {error.strerror or error}") from error
    image = _decode_with_opencv(data)
    if image is None:
        raise BadImageError(f"cannot decode image {path} ({data.size} bytes): corrupt or not an image")
    return image


def decode_image_bytes(content: bytes, name: str = "the upload",
                       max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file's bytes -> (H, W, 3) uint8 RGB; gray, palette, RGBA and 16-bit images are accepted.

    Raises ImageTooLarge above ``max_pixels`` (read from the header, before decoding) and ValueError naming
    ``name`` when the bytes are no image OpenCV or Pillow can decode.
    """
    check_header(content, max_pixels, name)
    image = _decode_with_opencv(np.frombuffer(content, dtype=np.uint8))
    if image is not None:
        return image
    from PIL import Image

    try:  # formats OpenCV lacks (TGA, ICO, PCX, ...); the size was checked above
        with Image.open(io.BytesIO(content)) as opened:
            return to_rgb_uint8(opened, None)
    except Exception:  # noqa: BLE001 - Pillow raises many types for bytes that are no image
        raise ValueError(f"{name} is not an image ({len(content)} bytes that neither OpenCV nor Pillow can decode); "
                         "expected a PNG, JPEG, WebP, TIFF, BMP or GIF file") from None


def to_rgb_uint8(image: Any, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A path, PIL image or array (gray, RGB, RGBA; 8 or 16 bit) -> (H, W, 3) uint8 RGB.

    Images above ``max_pixels`` raise ImageTooLarge; a file is measured from its header, before decoding.
    """
    if isinstance(image, (str, Path)):
        return read_image(image, max_pixels)
    if not isinstance(image, np.ndarray):  # a PIL image
        from PIL import ImageOps

        check_image_size(*image.size, max_pixels)
        upright = ImageOps.exif_transpose(image)
        if upright.mode.startswith("I;16"):  # a 16-bit gray PNG or TIFF: convert("RGB") would clip it to white
            return to_rgb_uint8(np.asarray(upright).astype(np.uint16), None)
        return np.array(upright.convert("RGB"))  # a writable copy: torch warns about a read-only view
    array = image
    if array.ndim >= 2:
        check_image_size(array.shape[1], array.shape[0], max_pixels)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 or uint16, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])
