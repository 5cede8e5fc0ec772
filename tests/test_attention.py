"""Cross-attention maps: the decoder's weights on request, per emitted token, mapped onto the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqtr_lib.config import ModelConfig
from seqtr_lib.model.seqtr import build_model
from seqtr_lib.model.transformer import Decoder
from seqtr_lib.predict import attention_in_original_pixels
from seqtr_lib.text import Vocabulary
from rounding import assert_same_function, double

D_MODEL, HEADS = 16, 2
EXPRESSIONS = ["the red circle", "the small blue square on the left"]


def _memory(batch: int = 2, cells: int = 12, padded: int = 4):
    torch.manual_seed(3)
    memory = torch.randn(batch, cells, D_MODEL, dtype=torch.float64)
    position = torch.randn(batch, cells, D_MODEL, dtype=torch.float64)
    padding = torch.zeros(batch, cells, dtype=torch.bool)
    padding[1, -padded:] = True  # the second sample's last cells are padding
    return memory, position, padding


@pytest.mark.parametrize("num_layers", [1, 2])
def test_recording_attention_changes_no_output_and_weights_are_distributions(num_layers):
    torch.manual_seed(0)
    decoder = Decoder(D_MODEL, HEADS, 32, 0.0, num_layers, max_length=5).double().eval()
    memory, position, padding = _memory()
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    fast = decoder(x, memory, position, padding)
    weights: list[torch.Tensor] = []
    recorded = decoder(x, memory, position, padding, cross_attention=weights)
    # Fused and explicit attention: one function summed in two orders (float64, tests/rounding.py)
    assert_same_function(recorded, fast)
    assert len(weights) == num_layers
    for layer in weights:
        assert layer.shape == (2, HEADS, 5, 12)
        assert_same_function(layer.sum(dim=-1), torch.ones(2, HEADS, 5, dtype=torch.float64))
        assert torch.all(layer[1, :, :, -4:] == 0)


def test_weights_are_softmax_of_scaled_query_key_products_computed_by_hand():
    torch.manual_seed(0)
    decoder = Decoder(D_MODEL, HEADS, 32, 0.0, 1, max_length=5).double().eval()
    layer = decoder.layers[0]
    memory, position, padding = _memory()
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    after_self_attention = []  # the cross-attention's input, as the layer computes it
    hook = layer.norm1.register_forward_hook(lambda module, args, output: after_self_attention.append(output))
    weights: list[torch.Tensor] = []
    decoder(x, memory, position, padding, cross_attention=weights)
    hook.remove()
    attention = layer.cross_attention
    queries = attention.query(after_self_attention[0] + decoder.position.weight[None])
    keys = attention.key(memory + position)
    head_size = D_MODEL // HEADS
    for sample in range(2):
        valid = ~padding[sample]
        for head in range(HEADS):
            columns = slice(head * head_size, (head + 1) * head_size)
            scores = queries[sample, :, columns] @ keys[sample, valid, columns].T / math.sqrt(head_size)
            expected = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            expected = expected / expected.sum(dim=1, keepdim=True)
            assert_same_function(weights[0][sample, head][:, valid], expected, scale=1.0)  # probabilities


def _tiny_model(task: str, **options):
    torch.manual_seed(0)
    config = ModelConfig(task=task, darknet_width=0.125, trainable_backbone_modules=-1, word_dim=16, gru_hidden=16,
                         d_model=D_MODEL, num_heads=HEADS, num_encoder_layers=1, num_decoder_layers=2, ffn_dim=32,
                         num_ray=4, num_bin=32, dropout=0.0, **options)
    return build_model(config, Vocabulary.build(EXPRESSIONS)).double().eval()


def _inputs():
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 96) * 255
    pad_mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    pad_mask[1, :, 64:] = True  # the second image is 64 x 64, padded on the right
    vocabulary = Vocabulary.build(EXPRESSIONS)
    ids = torch.from_numpy(np.stack([vocabulary.encode(e, 8) for e in EXPRESSIONS]))
    return double(images, pad_mask, ids)


@pytest.mark.parametrize("task", ["box", "mask", "multi"])
@pytest.mark.parametrize("options", [{}, {"memory_stride": 16, "target_cell_loss": 1.0, "query_selection": True}])
def test_generated_maps_equal_the_teacher_forced_pass_on_the_generated_tokens(task, options):
    model = _tiny_model(task, **options)
    images, pad_mask, ids = _inputs()
    with torch.no_grad():
        generated = model.generate(images, pad_mask, ids, return_attention=True)
        recomputed = model.generate(images, pad_mask, ids, return_attention=True, use_cache=False)
        plain = model.generate(images, pad_mask, ids)
        teacher = model(images, pad_mask, ids, box_tokens=generated.get("box_tokens"),
                        mask_tokens=generated.get("mask_tokens"), return_attention=True)
    # float64 throughout: the explicit softmax and the fused kernel, the cache and the whole prefix, are one
    # function in different orders (tests/rounding.py); tokens equal, probabilities within ORDER
    for key, value in plain.items():
        assert_same_function(generated[key], value, scale=1.0, msg=key)
    forced = teacher["cross_attention"]  # (B, L, nh, T, S)
    if "box_attention" in generated:
        assert_same_function(generated["box_attention"], forced[:, :, :, :4], scale=1.0)
    if "mask_attention" in generated:
        start = 5 if task == "multi" else 0  # multi: x1, y1, x2, y2, EOS, then the mask's positions
        steps = generated["mask_attention"].shape[3]
        emitted = torch.cat([torch.ones(2, 1, dtype=torch.bool),
                             generated["mask_tokens"][:, :-1] != model.layout.eos], dim=1).cumprod(dim=1).bool()
        expected = forced[:, :, :, start : start + steps] * emitted[:, None, None, :, None]
        assert_same_function(generated["mask_attention"], expected, scale=1.0)
    for key in ("box_attention", "mask_attention"):
        if key in generated:
            assert_same_function(recomputed[key], generated[key], scale=1.0)


@pytest.mark.parametrize("row, column", [(0, 0), (1, 1), (2, 0)])
def test_one_hot_cell_lands_on_that_cell_of_a_padded_non_square_image(row, column):
    # A 150 x 100 (H x W) original resized to 96 x 64 and padded to 96 x 96; stride 32: a 3 x 3 grid whose
    # last column is padding.
    meta = {"ori_shape": (150, 100), "img_shape": (96, 64), "pad_shape": (96, 96)}
    grid = torch.zeros(1, 3, 3)
    grid[0, row, column] = 1.0
    mapped = attention_in_original_pixels(grid, meta, stride=32)
    assert mapped.shape == (1, 150, 100)
    scale_y, scale_x = 150 / 96, 100 / 64  # original pixels per network-input pixel
    top, bottom = row * 32 * scale_y, (row + 1) * 32 * scale_y
    left, right = column * 32 * scale_x, (column + 1) * 32 * scale_x
    peak_y, peak_x = np.unravel_index(mapped[0].argmax(), mapped[0].shape)
    assert top <= peak_y < bottom and left <= peak_x < right
    inside = mapped[0, math.ceil(top):math.floor(bottom), math.ceil(left):math.floor(right)]
    assert inside.min() > mapped[0].max() * 0.2  # the whole cell is warm, not only its centre
    assert inside.sum() > 0.45 * mapped[0].sum()  # a bilinear tent keeps about 9/16 of its mass in the cell


def test_no_emitted_token_maps_to_no_map():
    meta = {"ori_shape": (150, 100), "img_shape": (96, 64), "pad_shape": (96, 96)}
    assert attention_in_original_pixels(torch.zeros(0, 3, 3), meta, stride=32).shape == (0, 150, 100)
