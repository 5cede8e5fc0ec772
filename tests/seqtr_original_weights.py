"""Stand-in weights for the original SeqTR's state dict, rebuilt from each key's name and shape.

Every tensor draws from a generator seeded with the CRC-32 of its key, so it depends on nothing but its
key and shape. Scales keep activations of order one through the whole network in eval mode:

- ``num_batches_tracked``: zeros;
- normalisation scales (``running_var``, 1-D ``weight``): uniform in [0.5, 1.5);
- other 1-D tensors (biases, running means, packed attention biases): normal, std 0.1;
- keys naming an ``embedding``: normal, std 0.5;
- other weights: normal, std 1 / sqrt(fan_in) (fan_in: all dimensions but the first), divided by 255
  for the stem convolution (it sees 0-255 pixels) and halved for the last layer of each residual branch
  (the second convolution of a DarkNet block, attention ``out_proj``, feed-forward ``linear2``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import torch

STEM_KEY = "vis_enc.darknet.0.conv.weight"
RESIDUAL_BRANCH_ENDS = (".1.conv.weight", "out_proj.weight", "linear2.weight")


def stand_in_tensor(key: str, shape: Sequence[int], dtype: str = "float32") -> torch.Tensor:
    shape = tuple(int(size) for size in shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    if key.endswith("running_var") or (len(shape) == 1 and key.endswith("weight")):
        values = 0.5 + torch.rand(shape, generator=generator)
    elif len(shape) <= 1:
        values = 0.1 * torch.randn(shape, generator=generator)
    elif "embedding" in key:
        values = 0.5 * torch.randn(shape, generator=generator)
    else:
        std = 1.0 / math.sqrt(math.prod(shape[1:]))
        if key == STEM_KEY:
            std /= 255.0
        elif key.endswith(RESIDUAL_BRANCH_ENDS) and (".module_list." in key or "transformer" in key):
            std *= 0.5
        values = std * torch.randn(shape, generator=generator)
    return values.to(getattr(torch, dtype))


def stand_in_state_dict(entries: Iterable[Sequence]) -> dict[str, torch.Tensor]:
    """[[key, shape(, dtype)], ...] (keys.json) -> {key: tensor}, in the given order."""
    return {key: stand_in_tensor(key, shape, *dtype) for key, shape, *dtype in entries}
