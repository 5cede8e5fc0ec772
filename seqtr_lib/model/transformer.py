"""Post-norm transformer encoder and decoder, positional encodings, and the decoder's key/value cache.

Attention is written on ``F.scaled_dot_product_attention`` rather than ``nn.MultiheadAttention`` so
that the incremental decoder can keep projected keys and values: self-attention keys/values grow by
the new tokens at each step, cross-attention keys/values over the image memory are projected once.
Masks follow SDPA: a boolean ``attend`` tensor is True where a query may look at a key.
The decoder can also hand out its cross-attention weights (``cross_attention``, a list it appends one
tensor per layer to); only then is attention computed as an explicit softmax, so the default path
keeps SDPA's fused kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_2d(padding: torch.Tensor, channels: int, temperature: float = 10000.0,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalized 2-D sine position of a padded feature map (DETR's ``PositionEmbeddingSine``).

    padding: bool (B, h, w), True outside the image. Rows and columns are counted over the valid
    area only and scaled to (0, 2 pi], so the encoding of a position does not depend on how much the
    batch pads the image. Returns (B, h * w, channels) of ``dtype``: the first half encodes y, the second x,
    each as interleaved sin, cos pairs.
    """
    if channels % 2:
        raise ValueError(f"the 2-D sine position needs an even number of channels, got {channels}")
    valid = (~padding).to(dtype)
    y = valid.cumsum(dim=1)
    x = valid.cumsum(dim=2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    half = channels // 2
    steps = torch.arange(half, dtype=dtype, device=padding.device)
    frequencies = temperature ** (2 * (steps // 2) / half)

    def encode(coordinate: torch.Tensor) -> torch.Tensor:
        phase = coordinate[..., None] / frequencies  # (B, h, w, half)
        return torch.stack([phase[..., 0::2].sin(), phase[..., 1::2].cos()], dim=-1).flatten(3)

    position = torch.cat([encode(y), encode(x)], dim=-1)  # (B, h, w, channels)
    return position.flatten(1, 2)


def downsample_padding(pad_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel padding mask (B, H, W) -> (B, h, w) by nearest sampling, as the reference.

    A cell is padding when the top-left pixel of its stride block is; True = padding.
    """
    return F.interpolate(pad_mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()


class Attention(nn.Module):
    """Multi-head attention with separate query/key/value projections (biases, as nn.MultiheadAttention)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        return x.view(batch, length, self.num_heads, d_model // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)

    def project_keys(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """key, value: (B, S, D) -> per-head projections, each (B, nh, S, hs)."""
        return self.split_heads(self.key(key)), self.split_heads(self.value(value))

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attend: torch.Tensor | None,
        weights_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """query: (B, T, D); keys, values: (B, nh, S, hs) from `project_keys`; attend: bool,
        broadcastable to (B, nh, T, S), or None for all. Returns (B, T, D).

        Given ``weights_out``, appends the attention weights (B, nh, T, S) (before dropout) to it.
        """
        queries = self.split_heads(self.query(query))
        dropout = self.dropout if self.training else 0.0
        if weights_out is None:
            heads = F.scaled_dot_product_attention(queries, keys, values, attn_mask=attend, dropout_p=dropout)
        else:
            scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
            if attend is not None:
                scores = scores.masked_fill(~attend, -math.inf)
            weights = scores.softmax(dim=-1)
            weights_out.append(weights)
            heads = F.dropout(weights, dropout, self.training) @ values  # (B, nh, T, hs)
        return self.out(heads.transpose(1, 2).flatten(2))

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attend: torch.Tensor | None
    ) -> torch.Tensor:
        return self.attend(query, *self.project_keys(key, value), attend)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model))


class EncoderLayer(nn.Module):
    """Post-norm encoder layer; the position is added to queries and keys, not values."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = Attention(d_model, num_heads, dropout)
        self.feed_forward = FeedForward(d_model, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, position: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        with_position = x + position
        x = self.norm1(x + self.dropout(self.self_attention(with_position, with_position, x, attend)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class Encoder(nn.Module):
    """Stack of post-norm encoder layers over the flattened fused map (no final norm, as the reference)."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        _xavier_init(self)

    def forward(self, x: torch.Tensor, position: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x, position: (B, S, D); padding: bool (B, S), True = padding (never attended). Returns (B, S, D)."""
        attend = ~padding[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, position, attend)
        return x


@dataclass
class LayerCache:
    """One decoder layer's keys and values, each (B, nh, length, hs)."""

    self_keys: torch.Tensor | None = None
    self_values: torch.Tensor | None = None
    memory_keys: torch.Tensor | None = None
    memory_values: torch.Tensor | None = None


@dataclass
class DecoderCache:
    """Key/value cache of an incremental decode: per layer, and how many positions it holds."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0


@dataclass
class StaticCache:
    """Fixed-size key/value buffers of an incremental decode, written in place at a position held in a
    device tensor, so that a decoding step has static shapes and addresses (a CUDA graph can replay it).

    Per layer: ``self_keys``/``self_values`` (B, nh, max_length, hs), filled up to the current position;
    ``memory_keys``/``memory_values`` (B, nh, S, hs); ``memory_attend`` bool (B, 1, 1, S).
    """

    self_keys: list[torch.Tensor]
    self_values: list[torch.Tensor]
    memory_keys: list[torch.Tensor]
    memory_values: list[torch.Tensor]
    memory_attend: torch.Tensor


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: causal self-attention, cross-attention to the memory, feed-forward.

    The learned sequence position is added to the self-attention queries and keys and to the
    cross-attention queries; the memory's sine position to the cross-attention keys.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = Attention(d_model, num_heads, dropout)
        self.cross_attention = Attention(d_model, num_heads, dropout)
        self.feed_forward = FeedForward(d_model, ffn_dim, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        position: torch.Tensor,
        memory: torch.Tensor,
        memory_position: torch.Tensor,
        memory_attend: torch.Tensor,
        causal: torch.Tensor | None,
        cache: LayerCache | None,
        cross_attention: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x, position: (B, T, D) new positions; memory, memory_position: (B, S, D); memory_attend:
        bool (B, 1, 1, S); causal: bool (T, past + T) or None when every key may be seen;
        cross_attention: a list to append the cross-attention weights (B, nh, T, S) to, or None."""
        with_position = x + position
        keys, values = self.self_attention.project_keys(with_position, x)
        if cache is not None:
            if cache.self_keys is not None:
                keys = torch.cat([cache.self_keys, keys], dim=2)  # (B, nh, past + T, hs)
                values = torch.cat([cache.self_values, values], dim=2)
            cache.self_keys, cache.self_values = keys, values
        x = self.norm1(x + self.dropout(self.self_attention.attend(with_position, keys, values, causal)))

        if cache is None:
            memory_keys, memory_values = self.cross_attention.project_keys(memory + memory_position, memory)
        elif cache.memory_keys is not None:
            memory_keys, memory_values = cache.memory_keys, cache.memory_values
        else:
            memory_keys, memory_values = self.memory_keys(memory, memory_position)
            cache.memory_keys, cache.memory_values = memory_keys, memory_values
        return self._cross_and_feed_forward(x, position, memory_keys, memory_values, memory_attend, cross_attention)

    def memory_keys(self, memory: torch.Tensor, memory_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention keys and values of the memory, each (B, nh, S, hs), contiguous: projected once
        per decode rather than copied by every step's attention."""
        keys, values = self.cross_attention.project_keys(memory + memory_position, memory)
        return keys.contiguous(), values.contiguous()

    def _cross_and_feed_forward(self, x: torch.Tensor, position: torch.Tensor, memory_keys: torch.Tensor,
                                memory_values: torch.Tensor, memory_attend: torch.Tensor,
                                cross_attention: list[torch.Tensor] | None = None) -> torch.Tensor:
        attended = self.cross_attention.attend(x + position, memory_keys, memory_values, memory_attend,
                                               cross_attention)
        x = self.norm2(x + self.dropout(attended))
        return self.norm3(x + self.dropout(self.feed_forward(x)))

    def step(self, x: torch.Tensor, position: torch.Tensor, index: torch.Tensor, self_attend: torch.Tensor,
             cache: StaticCache, layer: int) -> torch.Tensor:
        """`forward` for one new position with a StaticCache: x, position (B or 1, 1, D); index int64 (1,), the
        position's slot; self_attend bool (1, max_length), the slots filled so far. Returns (B, 1, D)."""
        keys, values = self.self_attention.project_keys(x + position, x)  # (B, nh, 1, hs)
        cache.self_keys[layer].index_copy_(2, index, keys)
        cache.self_values[layer].index_copy_(2, index, values)
        return self.attend_step(x, position, cache.self_keys[layer], cache.self_values[layer], self_attend,
                                cache.memory_keys[layer], cache.memory_values[layer], cache.memory_attend)

    def attend_step(self, x: torch.Tensor, position: torch.Tensor, self_keys: torch.Tensor, self_values: torch.Tensor,
                    self_attend: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                    memory_attend: torch.Tensor) -> torch.Tensor:
        """The rest of `step` once the new position's key and value are in ``self_keys``/``self_values``
        (B, nh, max_length, hs); the exported decoder step (`seqtr_lib.export`) writes them out of place."""
        attended = self.self_attention.attend(x + position, self_keys, self_values, self_attend)
        x = self.norm1(x + self.dropout(attended))
        return self._cross_and_feed_forward(x, position, memory_keys, memory_values, memory_attend)


class Decoder(nn.Module):
    """Post-norm decoder stack with learned 1-D positions and a final LayerNorm.

    max_length: number of learned positions (5 for a box, 2N + 1 for a mask, 2N + 6 multi-task).
    """

    def __init__(
        self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, num_layers: int, max_length: int
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)
        # Created after the Xavier pass: the reference initialises its positions as nn.Embedding does.
        self.position = nn.Embedding(max_length, d_model)

    @property
    def max_length(self) -> int:
        return self.position.num_embeddings

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_position: torch.Tensor,
        memory_padding: torch.Tensor,
        cache: DecoderCache | None = None,
        cross_attention: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Decode the next positions.

        x: (B, T, D) input embeddings of sequence positions [past, past + T), where past is
        ``cache.length`` (0 without a cache: the whole sequence). memory, memory_position: (B, S, D);
        memory_padding: bool (B, S), True = padding. The cache, when given, is extended in place.
        Given a list ``cross_attention``, each layer appends its cross-attention weights (B, nh, T, S),
        which sum to 1 over the memory cells and are 0 on padding. Returns (B, T, D) hidden states.
        """
        past = cache.length if cache is not None else 0
        length = x.shape[1]
        if past + length > self.max_length:
            raise ValueError(
                f"the decoder has {self.max_length} learned positions; cannot decode position {past + length - 1}"
            )
        position = self.position.weight[past : past + length][None]  # (1, T, D)
        causal = None
        if length > 1:
            query_at = torch.arange(past, past + length, device=x.device)
            causal = torch.arange(past + length, device=x.device)[None, :] <= query_at[:, None]  # (T, past + T)
        memory_attend = ~memory_padding[:, None, None, :]  # (B, 1, 1, S)
        if cache is not None and not cache.layers:
            cache.layers = [LayerCache() for _ in self.layers]
        for index, layer in enumerate(self.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            x = layer(x, position, memory, memory_position, memory_attend, causal, layer_cache, cross_attention)
        if cache is not None:
            cache.length = past + length
        return self.norm(x)

    def static_cache(self, memory: torch.Tensor, memory_position: torch.Tensor,
                     memory_padding: torch.Tensor) -> StaticCache:
        """Empty self-attention buffers for ``max_length`` positions, holding the memory's keys (`load_memory`)."""
        batch, cells, d_model = memory.shape
        num_heads = self.layers[0].self_attention.num_heads
        shape = (batch, num_heads, self.max_length, d_model // num_heads)
        memory_shape = (batch, num_heads, cells, d_model // num_heads)
        cache = StaticCache(self_keys=[memory.new_zeros(shape) for _ in self.layers],
                            self_values=[memory.new_zeros(shape) for _ in self.layers],
                            memory_keys=[memory.new_zeros(memory_shape) for _ in self.layers],
                            memory_values=[memory.new_zeros(memory_shape) for _ in self.layers],
                            memory_attend=memory_padding.new_zeros(batch, 1, 1, cells))
        self.load_memory(cache, memory, memory_position, memory_padding)
        return cache

    def load_memory(self, cache: StaticCache, memory: torch.Tensor, memory_position: torch.Tensor,
                    memory_padding: torch.Tensor) -> None:
        """Write the cross-attention keys, values and padding of a memory of the cache's shape into it, in place."""
        for layer, keys, values in zip(self.layers, cache.memory_keys, cache.memory_values):
            projected_keys, projected_values = layer.cross_attention.project_keys(memory + memory_position, memory)
            keys.copy_(projected_keys)
            values.copy_(projected_values)
        cache.memory_attend.copy_(~memory_padding[:, None, None, :])

    def step(self, x: torch.Tensor, index: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """Decode one position with a StaticCache: x (B, 1, D) its input embedding, index int64 (1,) its
        position (a device tensor, so the step's shapes never change). Returns (B, 1, D), as `forward`."""
        position = self.position(index)[None]  # (1, 1, D)
        self_attend = torch.arange(self.max_length, device=x.device)[None, :] <= index  # (1, max_length)
        for number, layer in enumerate(self.layers):
            x = layer.step(x, position, index, self_attend, cache, number)
        return self.norm(x)


def _xavier_init(module: nn.Module) -> None:
    """Xavier-uniform every weight matrix, as the reference does for its transformer."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)
