"""SimpleFusion (bottom-up): three visual scales -> one stride-32 (or, opt-in, stride-16) map gated by the sentence."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# GroupNorm groups of the input projection (the reference's 32), fewer when d_model is not a multiple.
PROJECTION_GROUPS = 32


def conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Darknet-style convolution: conv (no bias, 'same' padding) + BatchNorm + LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.1),
    )


class FoldedBatchNorm(nn.Identity):
    """What is left of a BatchNorm once its convolution has absorbed it (`seqtr_lib.execution.fold_batchnorm`):
    nothing to compute, but `padding_zeroed` still zeroes the padding at its output, as it did at the BatchNorm's."""


@contextmanager
def padding_zeroed(module: nn.Module, pad_mask: torch.Tensor) -> Iterator[None]:
    """Within the block, zero every BatchNorm output of ``module`` outside each image.

    pad_mask: bool (B, H, W), True on padding. A map of size (h, w) is masked by nearest sampling
    (a cell is padding when the top-left pixel of its block is). The following activations map 0
    to 0, so padding stays zero through every layer.

    Departure from the reference, where a 3x3 convolution spreads image features into the padding
    (and BatchNorm shifts padded zeros away from 0) and the next layer reads them back: a sample's
    features would then depend on how far the batch pads it, and so would its prediction. Zeroed,
    the padding looks exactly like a convolution's own zero padding, whatever the batch. (In training
    mode BatchNorm's batch statistics still count the padded positions.)
    """
    if pad_mask.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(pad_mask.any()):
        # Nothing to zero (a batch of square images): the masking would cost about a twentieth of a small
        # model's CPU step. On a GPU the check would cost a synchronisation, so the masks run there regardless.
        yield
        return
    valid_pixels = (~pad_mask)[:, None].float()  # (B, 1, H, W)
    by_size: dict[tuple[int, int], torch.Tensor] = {}

    def zero_padding(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        size = (output.shape[-2], output.shape[-1])
        if torch.compiler.is_compiling():  # traced sizes are symbols, not dictionary keys (torch.export, ONNX)
            return output * F.interpolate(valid_pixels, size=size, mode="nearest").to(output.dtype)
        if size not in by_size:
            by_size[size] = F.interpolate(valid_pixels, size=size, mode="nearest").to(output.dtype)
        return output * by_size[size]

    # _BatchNorm: also a SyncBatchNorm (train.sync_batchnorm), which is no BatchNorm2d. FoldedBatchNorm: where a
    # BatchNorm was folded into its convolution (seqtr_lib.execution), the padding is zeroed all the same.
    norms = [m for m in module.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, FoldedBatchNorm))]
    handles = [norm.register_forward_hook(zero_padding) for norm in norms]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics cover only the valid (un-padded) positions of each sample.

    Departure from the reference, which normalises over the whole padded map: there a sample's
    features (and so its prediction) change with how much the batch pads it. With no padding this is
    exactly ``nn.GroupNorm``. Statistics are computed in float32 (also under autocast), in float64 for a
    float64 model.
    """

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x: (B, C, h, w); padding: bool (B, h, w), True outside the image. Returns (B, C, h, w)."""
        batch, channels, height, width = x.shape
        values = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(batch, self.num_groups, -1, height * width)  # (B, G, C/G, h*w)
        valid = (~padding).reshape(batch, 1, 1, height * width).to(values.dtype)
        count = valid.sum(dim=(2, 3), keepdim=True) * values.shape[2]
        mean = (values * valid).sum(dim=(2, 3), keepdim=True) / count
        variance = ((values - mean).square() * valid).sum(dim=(2, 3), keepdim=True) / count
        normalized = ((values - mean) / torch.sqrt(variance + self.eps)).reshape(batch, channels, height, width)
        normalized = normalized * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return normalized.to(x.dtype)


class SimpleFusion(nn.Module):
    """Bottom-up fusion of DarkNet's three maps, tanh gating by the sentence, projection to d_model.

    visual_channels: channels of the stride 8, 16 and 32 maps (256, 512, 1024 for DarkNet-53).
    sentence_channels: size of the sentence feature y (1024 = 2 x GRU 512); the fused visual map has
    this many channels so that ``tanh(visual) * tanh(y)`` is element-wise.
    """

    def __init__(
        self, visual_channels: tuple[int, int, int], sentence_channels: int, d_model: int, stride: int = 32
    ) -> None:
        super().__init__()
        if stride not in (16, 32):
            raise ValueError(f"SimpleFusion fuses at stride 32 (the paper) or 16, not {stride}")
        self.stride = stride
        large, middle, small = visual_channels
        self.down_large = nn.Sequential(nn.AvgPool2d(2, 2), conv_block(large, large, 3))
        # At stride 16 the stride-32 map is upsampled to the stride-16 one instead of the reverse, so the
        # layers after the concatenation keep their shapes and only down_middle goes away.
        self.down_middle = (
            nn.Sequential(nn.AvgPool2d(2, 2), conv_block(large + middle, large + middle, 3)) if stride == 32 else None
        )
        merged = large + middle + small
        self.project_small = nn.Sequential(conv_block(merged, merged, 3), conv_block(merged, sentence_channels, 1))
        self.input_proj = nn.Conv2d(sentence_channels, d_model, 1)
        # The gated map tanh(visual) * tanh(y) is small at initialisation when y comes from a small
        # language encoder (about 0.06 with random 64-d word vectors); the default random bias then
        # dominates what the encoder sees (memory std across images 0.18 vs 0.64 with a zero bias, and
        # a probe locating the referred cell through the encoder reached 49 % vs 84 % after 200 steps).
        nn.init.zeros_(self.input_proj.bias)
        self.input_norm = MaskedGroupNorm(math.gcd(PROJECTION_GROUPS, d_model), d_model)

    def forward(
        self, maps: tuple[torch.Tensor, torch.Tensor, torch.Tensor], sentence: torch.Tensor, padding: torch.Tensor
    ) -> torch.Tensor:
        """Fuse.

        maps: (B, C8, H/8, W/8), (B, C16, H/16, W/16), (B, C32, H/32, W/32); sentence: (B, Cy);
        padding: bool (B, H/s, W/s), True outside the image, s = ``self.stride``. Returns (B, d_model, H/s, W/s).
        """
        return self.gate(self.visual(maps), sentence, padding)

    def visual(self, maps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The merged visual map (B, Cy, H/s, W/s) before the expression gates it: what the scene loss reads."""
        large, middle, small = maps
        middle = torch.cat([self.down_large(large), middle], dim=1)  # (B, C8 + C16, H/16, W/16)
        if self.down_middle is not None:
            merged = torch.cat([self.down_middle(middle), small], dim=1)  # (B, C8 + C16 + C32, H/32, W/32)
        else:
            upsampled = F.interpolate(small, size=middle.shape[-2:], mode="nearest")
            merged = torch.cat([middle, upsampled], dim=1)  # (B, C8 + C16 + C32, H/16, W/16)
        return self.project_small(merged)

    def gate(self, visual: torch.Tensor, sentence: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``tanh(visual) * tanh(sentence)``, projected to d_model and normalised: (B, d_model, H/s, W/s)."""
        fused = torch.tanh(visual) * torch.tanh(sentence)[:, :, None, None]
        return self.input_norm(self.input_proj(fused), padding)
