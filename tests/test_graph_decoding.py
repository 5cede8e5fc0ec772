"""GraphDecoder: greedy decoding with a static cache gives the cached decoder's tokens (eager here; the
CUDA graphs themselves are tested in tests/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch

from seqtr_lib.config import ModelConfig
from seqtr_lib.model.graph_decoding import GraphDecoder
from seqtr_lib.model.seqtr import build_model
from seqtr_lib.text import PAD_ID, Vocabulary
from rounding import assert_same_function

VOCABULARY = Vocabulary.build(["the red square left of a blue circle"])


def model_and_memory(task: str, batch: int, seed: int = 0, **options):
    """A tiny random model in float64 (no near-ties between float orders) and the memory of random inputs."""
    torch.manual_seed(seed)
    config = ModelConfig(task=task, num_bin=32, num_ray=5, darknet_width=0.125, word_dim=16, gru_hidden=16,
                         d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2, ffn_dim=64,
                         trainable_backbone_modules=-1, **options)
    model = build_model(config, VOCABULARY).double().eval()
    images = torch.rand(batch, 3, 64, 96, dtype=torch.float64) * 255
    pad_mask = torch.zeros(batch, 64, 96, dtype=torch.bool)
    pad_mask[0, :, 64:] = True
    words = torch.randint(PAD_ID + 1, len(VOCABULARY), (batch, 5))
    with torch.no_grad():
        return model, model.encode(images, pad_mask, words)


@pytest.mark.parametrize("task, options", [("box", {}), ("mask", {}), ("multi", {}),
                                           ("box", {"memory_stride": 16, "target_cell_loss": 1.0,
                                                    "query_selection": True})])
def test_static_decoding_gives_the_cached_decoders_tokens_and_scores(task, options):
    model, memory = model_and_memory(task, batch=3, **options)
    with torch.no_grad():
        cached = model.generate_from_memory(memory)
    decoder = GraphDecoder(model, use_graphs=False)
    static = decoder.generate_from_memory(memory)
    assert static.keys() == cached.keys()
    for key in cached:
        # float64: the static and the cached decoder, one function in two orders; tokens equal
        assert_same_function(static[key], cached[key], scale=1.0, msg=key)


def test_a_multi_task_model_can_stop_after_the_box():
    model, memory = model_and_memory("multi", batch=2)
    with torch.no_grad():
        cached = model.generate_from_memory(memory, task="box")
    static = GraphDecoder(model, use_graphs=False).generate_from_memory(memory, task="box")
    assert static.keys() == {"box_tokens", "box_scores"} and torch.equal(static["box_tokens"], cached["box_tokens"])


def test_buffers_are_reused_for_the_next_batch_of_a_shape_and_made_for_a_new_shape():
    model, first = model_and_memory("mask", batch=2, seed=1)
    _, second = model_and_memory("mask", batch=2, seed=2)
    _, other_shape = model_and_memory("mask", batch=3, seed=3)
    decoder = GraphDecoder(model, use_graphs=False)
    for memory in (first, second, other_shape, first):
        with torch.no_grad():
            expected = model.generate_from_memory(memory)["mask_tokens"]
        assert torch.equal(decoder.generate_from_memory(memory)["mask_tokens"], expected)
    assert len(decoder._states) == 2


def test_decoding_in_training_mode_is_refused():
    model, memory = model_and_memory("box", batch=1)
    with pytest.raises(ValueError, match="eval"):
        GraphDecoder(model.train(), use_graphs=False).generate_from_memory(memory)
