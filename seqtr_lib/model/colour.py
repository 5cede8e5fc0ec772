"""Opt-in departures ``colour_pathway`` and ``attribute_prior``: colour and kind kept apart, then combined.

Trained from scratch on scenes where every kind of shape is seen in only some colours, a DarkNet on RGB
learns each colour-kind pair as one pattern. The released synthetic box model picks the right memory cell
for 89 % of val expressions but 69 % of testB ones (colour-kind pairs never seen in training); when the
cell is right its box is right 98 % of the time on both. Its scene head names the kind of a testB target
17 % of the time (95 % on val): it has learnt that a green shape is never a diamond.

``colour_pathway``: the backbone sees a grey image, so it can learn shapes but not hues, and colour enters
through per-pixel features (1 x 1 convolutions, blind to shape) max-pooled over each memory cell and added
to the fused visual map. The scene loss then classifies colour from those pooled features alone and kind
and size from the grey map alone, so neither classifier can learn which pairs occur.

``attribute_prior``: a word head reads the sentence feature and says which colour and which kind the
expression names for its target, or that it names none. Each memory cell's target score gains
``log P(colour matches) + log P(kind matches)``, the probabilities from the word head and the two scene
classifiers (detached: they learn only from their own labels). A colour and a kind never seen together then
still add up at the cell that holds both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ITU-R BT.601 luma weights of R, G, B (what OpenCV's RGB2GRAY uses).
LUMA = (0.299, 0.587, 0.114)


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) with the luma in every channel, so a 3-channel backbone reads it."""
    weights = images.new_tensor(LUMA)[None, :, None, None]
    return (images * weights).sum(dim=1, keepdim=True).expand_as(images)


class ColourPathway(nn.Module):
    """Per-pixel colour features, max-pooled over each cell of the memory grid.

    ``hidden`` features per pixel (a 1 x 1 convolution and ReLU on the 0-1 RGB values), the largest of
    each cell's pixels (`pooled`), then a 1 x 1 projection to ``out_channels``, the fused visual map's width.
    """

    def __init__(self, hidden: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pixel = nn.Conv2d(3, hidden, 1)
        self.project = nn.Conv2d(hidden, out_channels, 1)

    def pooled(self, images: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """images: float (B, 3, H, W) raw 0-255 RGB, H and W multiples of the stride; pad_mask: bool
        (B, H, W), True on padding (its pixels count as no colour). Returns (B, hidden, H/s, W/s)."""
        features = F.relu(self.pixel(images / 255)) * (~pad_mask)[:, None].to(images.dtype)
        return F.max_pool2d(features, self.stride)

    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """The pooled features projected to the visual map's width: (B, out_channels, H/s, W/s)."""
        return self.project(self.pooled(images, pad_mask))


def attribute_match(word_logits: torch.Tensor, cell_scene_logits: torch.Tensor,
                    counts: tuple[int, int]) -> torch.Tensor:
    """Log-probability (B, S) that each cell's object has the colour and the kind the expression names.

    word_logits: (B, (C + 1) + (K + 1)), for colour then kind, the last class of each "names none";
    cell_scene_logits: (B, S, >= C + K), colour then kind logits of the object in each cell; counts: (C, K).
    Per attribute, P(match) = P(names none) + sum_c P(names c) P(cell is c); the two are independent.
    """
    dtype = torch.promote_types(word_logits.dtype, torch.float32)  # float32 under autocast, float64 for float64
    total = torch.zeros(cell_scene_logits.shape[:2], dtype=dtype, device=cell_scene_logits.device)
    word_start = cell_start = 0
    for count in counts:
        named = word_logits[:, word_start:word_start + count + 1].to(dtype).softmax(dim=-1)  # (B, count + 1)
        cell = cell_scene_logits[..., cell_start:cell_start + count].to(dtype).softmax(dim=-1)  # (B, S, count)
        match = named[:, None, count] + torch.einsum("bc,bsc->bs", named[:, :count], cell)
        total = total + match.clamp_min(1e-12).log()
        word_start, cell_start = word_start + count + 1, cell_start + count
    return total
