"""DarkNet-53 visual backbone, as SeqTR uses it, and the Darknet `.weights` reader and writer.

SeqTR's "DarkNet-53" is the YOLOv3 network up to its first detection output: the 52 convolutions
of DarkNet-53 followed by the 6 convolutions of YOLOv3's stride-32 head (alternating 1x1 to half
channels and 3x3 back, no shortcuts), 58 conv+BN+LeakyReLU layers in all. It returns three maps:

    stage3       (B, 256,  ceil(H/8),  ceil(W/8))
    stage4       (B, 512,  ceil(H/16), ceil(W/16))
    neck_expand  (B, 1024, ceil(H/32), ceil(W/32))

(channels at width 1). The layers sit in one `nn.Sequential` of 14 modules, in network order and at
the reference's granularity (a downsampling conv and its residual blocks are separate modules), so
"freeze all but the last k modules" means what the reference's `freeze_layer=k` means.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqtr_lib.atomic import atomic_write

logger = logging.getLogger(__name__)

LEAKY_SLOPE = 0.1
# (output channels at width 1, residual blocks) of the five stride-2 stages.
STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))
# Modules whose outputs are the stride 8, 16 and 32 feature maps.
OUTPUT_MODULES = ("stage3", "stage4", "neck_expand")
MIN_CHANNELS = 8


class DarknetWeightsError(ValueError):
    """A Darknet `.weights` file that is not one, is damaged, or does not fit the model."""


def scaled_channels(channels: int, width: float) -> int:
    """Channel count `channels * width` rounded to a multiple of 8, never below 8.

    Multiples of 8 keep the halved channels of residual blocks whole; width 1 returns `channels`.
    """
    return max(MIN_CHANNELS, MIN_CHANNELS * round(channels * width / MIN_CHANNELS))


class ConvBNLeaky(nn.Module):
    """Darknet convolution: Conv2d (no bias, 'same' padding) -> BatchNorm2d -> LeakyReLU(0.1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        # The reference (mmcv ConvModule) initialises convs this way before any weights file.
        nn.init.kaiming_normal_(self.conv.weight, a=LEAKY_SLOPE, mode="fan_out",
                                nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """x + 3x3(1x1(x)): the 1x1 conv narrows to `hidden` channels, the 3x3 conv restores them."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.reduce = ConvBNLeaky(channels, hidden, 1)
        self.expand = ConvBNLeaky(hidden, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.reduce(x))


class DarkNet53(nn.Module):
    """DarkNet-53 with YOLOv3's stride-32 head convs; `width` scales every channel count.

    Modules of `self.layers`, in order: stem, down1, stage1, ..., down5, stage5, neck (four head
    convs), neck_reduce (1x1 to half), neck_expand (3x3 back; the stride-32 output).
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"DarkNet53 width must be positive, got {width}")

        def channels(n: int) -> int:
            return scaled_channels(n, width)

        modules: OrderedDict[str, nn.Module] = OrderedDict(stem=ConvBNLeaky(3, channels(32), 3))
        in_channels = channels(32)
        for index, (out, num_blocks) in enumerate(STAGES, start=1):
            modules[f"down{index}"] = ConvBNLeaky(in_channels, channels(out), 3, stride=2)
            modules[f"stage{index}"] = nn.Sequential(
                *(ResidualBlock(channels(out), channels(out // 2)) for _ in range(num_blocks)))
            in_channels = channels(out)
        wide, narrow = channels(1024), channels(512)
        modules["neck"] = nn.Sequential(
            ConvBNLeaky(wide, narrow, 1), ConvBNLeaky(narrow, wide, 3),
            ConvBNLeaky(wide, narrow, 1), ConvBNLeaky(narrow, wide, 3))
        modules["neck_reduce"] = ConvBNLeaky(wide, narrow, 1)
        modules["neck_expand"] = ConvBNLeaky(narrow, wide, 3)
        self.layers = nn.Sequential(modules)
        self.out_channels = (channels(256), channels(512), channels(1024))
        # Names of the modules `freeze` froze; `train()` keeps them in eval mode.
        self.frozen_modules: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feature maps at strides 8, 16 and 32.

        x: (B, 3, H, W) float, raw 0-255 RGB. Returns maps of `self.out_channels` channels and sizes
        ceil(H/s) x ceil(W/s) for s = 8, 16, 32 (any H, W; each stride-2 conv pads by 1).
        """
        features = []
        for name, module in self.layers.named_children():
            x = module(x)
            if name in OUTPUT_MODULES:
                features.append(x)
        stride8, stride16, stride32 = features
        return stride8, stride16, stride32

    def train(self, mode: bool = True) -> DarkNet53:
        """Set training mode, except that frozen modules (their BatchNorm) always stay in eval."""
        super().train(mode)
        for name in self.frozen_modules:
            self.layers.get_submodule(name).eval()
        return self


def freeze(model: DarkNet53, trainable_last: int) -> None:
    """Freeze every module of `model.layers` except the last `trainable_last` (-1: freeze nothing).

    Frozen parameters get requires_grad False and frozen BatchNorm layers stay in eval mode, so their
    running statistics keep the pretrained values. The reference's default, 2, leaves exactly two
    conv layers trainable: neck_reduce (1x1, 1024 -> 512) and neck_expand (3x3, 512 -> 1024, the
    stride-32 output); all 52 DarkNet-53 convs and the first four head convs are frozen, as with the
    reference's `freeze_params(self.darknet[:-2])` over the same 14 modules.
    Departure: the reference only clears requires_grad, so its frozen BatchNorm statistics still drift
    with every training batch; here frozen means frozen.
    """
    names = [name for name, _ in model.layers.named_children()]
    if not -1 <= trainable_last <= len(names):
        raise ValueError(f"trainable_last must be -1 (nothing frozen) or 0..{len(names)} "
                         f"(the backbone has {len(names)} modules), got {trainable_last}")
    frozen = () if trainable_last == -1 else tuple(names[:len(names) - trainable_last])
    for name, module in model.layers.named_children():
        module.requires_grad_(name not in frozen)
    model.frozen_modules = frozen
    model.train(model.training)


def conv_layers(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """(module name, conv, batch norm or None) for every Darknet layer of `model`, in file order.

    A `ConvBNLeaky` is a conv with batch norm; any other `nn.Conv2d` is a conv without one (a
    detection layer). Registration order is network order for every module in this file, and it
    matches darknet53.cfg/yolov3.cfg: stem, then per stage the stride-2 conv and each block's 1x1
    then 3x3 conv, then the head convs.
    """
    owned: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, ConvBNLeaky):
            owned.add(id(module.conv))
            yield name, module.conv, module.bn
        elif isinstance(module, nn.Conv2d) and id(module) not in owned:
            yield name, module, None


def _layer_tensors(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> list[torch.Tensor]:
    """Tensors of one layer in Darknet file order."""
    if bn is not None:
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
    if conv.bias is None:
        raise ValueError(f"layer '{name}': a Darknet conv without batch norm stores a bias, "
                         "but this Conv2d has none; build it with bias=True")
    return [conv.bias, conv.weight]


def _seen_dtype(major: int, minor: int) -> str:
    """Darknet stores the `seen` image counter as int64 from version 0.2 on, int32 before."""
    return "<i8" if major * 10 + minor >= 2 else "<i4"


def _is_darknet_version(version: tuple[int, int, int]) -> bool:
    return all(0 <= part < 1000 for part in version)


def _read_weights_file(path: Path) -> np.ndarray:
    """The float32 values of a Darknet `.weights` file, after checking its header and size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise DarknetWeightsError(
                f"{path}: {size} bytes is too short for a Darknet .weights header (16 or 20 bytes); "
                "is it a Darknet weights file?")
        version = tuple(int(part) for part in np.frombuffer(head, dtype="<i4"))
        if not _is_darknet_version(version):
            raise DarknetWeightsError(
                f"{path}: header version {'.'.join(map(str, version))} is not a Darknet version "
                "(major, minor, revision each in 0..999); this is not a Darknet .weights file")
        seen_dtype = np.dtype(_seen_dtype(version[0], version[1]))
        header_bytes = 12 + seen_dtype.itemsize
        if size < header_bytes:
            raise DarknetWeightsError(
                f"{path}: {size} bytes is too short for the {header_bytes}-byte header of a "
                f"version {'.'.join(map(str, version))} Darknet .weights file")
        if (size - header_bytes) % 4:
            raise DarknetWeightsError(
                f"{path}: {size - header_bytes} bytes after the {header_bytes}-byte header is not a "
                "whole number of float32 values (a multiple of 4); the file is truncated or damaged")
        f.seek(header_bytes)
        return np.fromfile(f, dtype="<f4")


def load_darknet_weights(model: nn.Module, path: str | Path) -> int:
    """Copy a Darknet `.weights` file into `model`'s conv layers, in `conv_layers` order.

    A file covering only the first layers (darknet53.conv.74) loads those, stopping at a layer
    boundary; the other layers keep their values. A file with more layers than the model (yolov3.weights
    holds detection layers past the head) loads every model layer and leaves the rest unread. Both
    are logged. Returns the number of float32 values consumed. Raises `DarknetWeightsError` for a
    file that is not Darknet weights or that ends inside a layer; the model is then left unchanged.
    """
    path = Path(path)
    values = _read_weights_file(path)
    layers = [(name, _layer_tensors(name, conv, bn)) for name, conv, bn in conv_layers(model)]
    # Find where the file stops before copying anything, so a bad file changes nothing.
    consumed, loaded = 0, 0
    for name, tensors in layers:
        remaining = values.size - consumed
        if remaining == 0:
            break
        needed = sum(t.numel() for t in tensors)
        if remaining < needed:
            raise DarknetWeightsError(
                f"{path}: ends inside Darknet layer {loaded} ('{name}'), which needs {needed} float32 "
                f"values but only {remaining} remain; the file is truncated or was written for another "
                f"architecture or width (this model has {len(layers)} conv layers)")
        consumed += needed
        loaded += 1
    offset = 0
    with torch.no_grad():
        for _, tensors in layers[:loaded]:
            for tensor in tensors:
                chunk = values[offset:offset + tensor.numel()]
                tensor.copy_(torch.from_numpy(chunk).view_as(tensor))
                offset += tensor.numel()
    logger.info("%s: loaded %d of %d Darknet conv layers (%d float32 values)",
                path, loaded, len(layers), consumed)
    if loaded < len(layers):
        logger.warning("%s: covers only the first %d conv layers; layers from '%s' on keep their "
                       "initialisation", path, loaded, layers[loaded][0])
    if consumed < values.size:
        logger.info("%s: %d float32 values left unread after the model's last layer "
                    "(layers the model does not have, e.g. YOLOv3 detection layers)",
                    path, values.size - consumed)
    return consumed


def save_darknet_weights(model: nn.Module, path: str | Path,
                         version: tuple[int, int, int] = (0, 2, 0), seen: int = 0) -> None:
    """Write `model`'s conv layers as a Darknet `.weights` file that `load_darknet_weights` reads back
    (atomically: a crash leaves the previous file, never half of one)."""
    if not _is_darknet_version(version):
        raise ValueError(f"Darknet version parts must each be in 0..999, got {version}")
    with atomic_write(path, "wb") as f:
        np.asarray(version, dtype="<i4").tofile(f)
        np.asarray([seen], dtype=_seen_dtype(version[0], version[1])).tofile(f)
        for name, conv, bn in conv_layers(model):
            for tensor in _layer_tensors(name, conv, bn):
                tensor.detach().to("cpu", torch.float32).numpy().astype("<f4").tofile(f)
