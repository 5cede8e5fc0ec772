"""Image decoding and resizing on the training device (``data.device_transforms: true``).

With the option on, a loader worker no longer decodes or resizes pixels: it reads the image file's bytes,
measures the image from its header, and draws the sample's geometry (LSJ scale and crop, or the test
resize) and targets exactly as the host path does (`seqtr_lib.data.transforms` with no image). The
training process then decodes the whole batch at once (`torchvision.io.decode_jpeg`, batched on a CUDA
device), resizes and crops each image to its recorded geometry and pads the batch, all on the device.
So the host only moves compressed bytes, and the pixels never pass through shared or pinned memory.

Equal to the host path: the same geometry and targets (same random draws), and pixels within
resampling tolerance (another JPEG decoder, and bilinear antialiased resizing in float instead of
torchvision's fixed-point uint8 kernel: a level or two at a few pixels, well under one on average).

Images a device decoder cannot take as they are (not JPEG, CMYK, or an EXIF orientation to apply) are
decoded in the worker as before and travel as pixels; the device step only resizes them.
Mask targets (decoding the mask, its LSJ resize and crop, contour sampling) stay in the worker: they are
one channel at nearest-neighbour, a small part of a worker's time, and tracing a contour has no GPU kernel.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seqtr_lib.images import BadImageError, read_image

# PIL modes a JPEG decoder turns into RGB itself (gray is expanded); CMYK and others are decoded on the host.
DEVICE_MODES = frozenset({"RGB", "L"})
EXIF_ORIENTATION = 0x0112


def read_encoded_image(path: str | Path) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file for the device path: (payload, (height, width)).

    The payload is the file's bytes, uint8 (N,), when it is a JPEG the device can decode as it is;
    otherwise the decoded (H, W, 3) uint8 RGB pixels (EXIF orientation applied). Raises BadImageError.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise BadImageError(f"cannot read image {path}: {error.strerror or error}") from error
    shape = _device_decodable_shape(data)
    if shape is not None:
        return torch.from_numpy(data), shape
    pixels = read_image(path)
    return torch.from_numpy(pixels), pixels.shape[:2]


def _device_decodable_shape(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) of a JPEG that needs no conversion but to RGB, read from its header; else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.tobytes())) as opened:
            orientation = opened.getexif().get(EXIF_ORIENTATION, 1)
            if opened.format != "JPEG" or opened.mode not in DEVICE_MODES or orientation != 1:
                return None
            width, height = opened.size
            return height, width
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def decode_images(payloads: Sequence[torch.Tensor], device: torch.device,
                  names: Sequence[str] = ()) -> list[torch.Tensor]:
    """Payloads of `read_encoded_image` -> (3, H, W) uint8 RGB images on ``device``.

    The JPEG bytes are decoded in one batched call (nvJPEG on a CUDA device). A batch that fails is
    decoded image by image to name the file (``names[i]``) in the BadImageError.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    images: list[torch.Tensor | None] = [None] * len(payloads)
    encoded = [i for i, payload in enumerate(payloads) if payload.ndim == 1]
    for i, payload in enumerate(payloads):
        if payload.ndim == 3:
            images[i] = payload.to(device, non_blocking=True).permute(2, 0, 1)
    if not encoded:
        return images  # type: ignore[return-value]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec, which the pinned stack does not include.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded = decode_jpeg([payloads[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = []
            for i in encoded:
                try:
                    decoded.append(decode_jpeg(payloads[i], mode=ImageReadMode.RGB, device=device))
                except RuntimeError as error:
                    name = names[i] if i < len(names) else f"image {i} of the batch"
                    raise BadImageError(f"cannot decode {name} on {device}: {error}") from error
    for i, image in zip(encoded, decoded):
        images[i] = image
    return images  # type: ignore[return-value]


def transform_image(image: torch.Tensor, resized: tuple[int, int], crop: tuple[int, int],
                    img_shape: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, *img_shape) uint8: bilinear antialiased resize to ``resized``, then the
    ``img_shape`` window at ``crop`` (x, y), as `transforms.large_scale_jitter` does on the host."""
    if tuple(image.shape[-2:]) != tuple(resized):
        scaled = F.interpolate(image[None].float(), size=resized, mode="bilinear", align_corners=False,
                               antialias=True)[0]
        image = scaled.round_().clamp_(0, 255).to(torch.uint8)
    left, top = crop
    return image[:, top:top + img_shape[0], left:left + img_shape[1]]


def batch_images(payloads: Sequence[torch.Tensor], metas: Sequence[dict[str, Any]], pad_shape: tuple[int, int],
                 device: torch.device) -> torch.Tensor:
    """A collated batch's payloads and metas -> uint8 (B, 3, *pad_shape) on ``device``, zero-padded below
    and right of each image, as `loader.pad_images` lays out the host path's batch."""
    from seqtr_lib.data.transforms import Geometry

    images = decode_images(payloads, device, [meta["image_path"] for meta in metas])
    batch = torch.zeros(len(images), 3, *pad_shape, dtype=torch.uint8, device=device)
    for i, (image, meta) in enumerate(zip(images, metas)):
        geometry = Geometry(tuple(meta["ori_shape"]), tuple(meta["img_shape"]), tuple(meta["pad_shape"]),
                            tuple(meta["scale_factor"]), tuple(meta["crop"]))
        if tuple(image.shape[-2:]) != geometry.ori_shape:
            raise BadImageError(f"{meta['image_path']} decoded to {tuple(image.shape[-2:])} pixels, but its header "
                                f"says {geometry.ori_shape}; set data.device_transforms: false for this dataset")
        height, width = geometry.img_shape
        batch[i, :, :height, :width] = transform_image(image, geometry.resized_shape, geometry.crop, geometry.img_shape)
    return batch
