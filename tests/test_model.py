"""SeqTR model: shapes, key/value-cached decoding, padding invariance, parts, training on toy data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqtr_lib.config import ModelConfig
from seqtr_lib.loss import Criterion
from seqtr_lib.metrics import box_metrics
from seqtr_lib.model.fusion import MaskedGroupNorm
from seqtr_lib.model.language import LanguageEncoder
from seqtr_lib.model.decoding import top_p_sample
from seqtr_lib.model.seqtr import build_model, count_parameters
from seqtr_lib.model.transformer import Decoder, DecoderCache, sine_position_2d
from seqtr_lib.sequence import dequantize, quantize
from seqtr_lib.text import PAD_ID, UNK_ID, Vocabulary
from rounding import U32, assert_same_function, double

NUM_BIN = 50
NUM_RAY = 5
EOS = NUM_BIN  # the token after the coordinate bins
VOCABULARY = Vocabulary.build(["red square", "blue circle on the left", "big green thing"])


def tiny_config(task: str, **overrides) -> ModelConfig:
    values = dict(
        task=task, num_bin=NUM_BIN, num_ray=NUM_RAY, darknet_width=0.125, word_dim=16, gru_hidden=16,
        d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2, ffn_dim=64,
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(task: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(task, **overrides), VOCABULARY).eval()


def make_batch(image_shapes: list[tuple[int, int]], seed: int = 0):
    """Random images of the given (h, w), zero-padded to the batch maximum rounded up to 32."""
    generator = torch.Generator().manual_seed(seed)
    pad_h = -(-max(h for h, _ in image_shapes) // 32) * 32
    pad_w = -(-max(w for _, w in image_shapes) // 32) * 32
    batch = len(image_shapes)
    images = torch.zeros(batch, 3, pad_h, pad_w)
    pad_mask = torch.ones(batch, pad_h, pad_w, dtype=torch.bool)
    for i, (h, w) in enumerate(image_shapes):
        images[i, :, :h, :w] = torch.rand(3, h, w, generator=generator) * 255
        pad_mask[i, :h, :w] = False
    expression_ids = torch.randint(3, len(VOCABULARY), (batch, 6), generator=generator)
    lengths = torch.randint(1, 7, (batch,), generator=generator)
    expression_ids[torch.arange(6)[None, :] >= lengths[:, None]] = PAD_ID
    return images, pad_mask, expression_ids


def random_targets(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    box_tokens = torch.randint(0, NUM_BIN, (batch, 4), generator=generator)
    mask_tokens = torch.randint(0, NUM_BIN, (batch, 2 * NUM_RAY), generator=generator)
    mask_tokens[:, -4:] = EOS  # two missing vertices
    return box_tokens, mask_tokens


# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------

# Odd image sizes in a padded batch: the last is the largest and sets the padded size (96 x 128).
SHAPES = {1: [(45, 77)], 3: [(45, 77), (64, 31), (90, 100)]}


@pytest.mark.parametrize("task", ["box", "mask", "multi"])
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_returns_teacher_forced_logits_per_task(task, batch):
    model = tiny_model(task)
    images, pad_mask, expression_ids = make_batch(SHAPES[batch])
    box_tokens, mask_tokens = random_targets(batch)
    outputs = model(images, pad_mask, expression_ids, box_tokens, mask_tokens)
    expected = {"box": {"box_logits": 5}, "mask": {"mask_logits": 2 * NUM_RAY + 1},
                "multi": {"box_logits": 5, "mask_logits": 2 * NUM_RAY + 1}}[task]
    assert {key: tuple(value.shape) for key, value in outputs.items()} == {
        key: (batch, length, NUM_BIN + 1) for key, length in expected.items()
    }
    assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in outputs.values())


@pytest.mark.parametrize("task", ["box", "mask", "multi"])
@pytest.mark.parametrize("batch", [1, 3])
def test_generate_returns_tokens_and_scores_per_task(task, batch):
    model = tiny_model(task)
    result = model.generate(*make_batch(SHAPES[batch]))
    keys = {"box": {"box_tokens", "box_scores"}, "mask": {"mask_tokens", "mask_scores"}}
    expected_keys = keys["box"] | keys["mask"] if task == "multi" else keys[task]
    assert set(result) == expected_keys
    if "box_tokens" in result:
        assert result["box_tokens"].shape == (batch, 4) and result["box_tokens"].dtype == torch.int64
        assert ((result["box_tokens"] >= 0) & (result["box_tokens"] < NUM_BIN)).all()
        assert result["box_scores"].shape == (batch, 4) and result["box_scores"].dtype == torch.float32
    if "mask_tokens" in result:
        tokens, scores = result["mask_tokens"], result["mask_scores"]
        assert tokens.shape == scores.shape == (batch, 2 * NUM_RAY) and tokens.dtype == torch.int64
        assert ((tokens >= 0) & (tokens <= EOS)).all()
    assert all(((value >= 0) & (value <= 1)).all() for key, value in result.items() if key.endswith("scores"))


def test_multi_task_model_generates_only_the_box_when_asked():
    model = tiny_model("multi")
    assert set(model.generate(*make_batch(SHAPES[1]), task="box")) == {"box_tokens", "box_scores"}
    with pytest.raises(ValueError, match="built for task 'box'"):
        tiny_model("box").generate(*make_batch(SHAPES[1]), task="mask")


# ------------------------------------------------------------------------------------------------
# Cached decoding
# ------------------------------------------------------------------------------------------------


def test_decoder_cache_fed_in_chunks_matches_full_sequence_decoding():
    torch.manual_seed(0)
    decoder = Decoder(32, 4, 64, 0.1, num_layers=3, max_length=9).double().eval()
    inputs, memory, memory_position = (torch.randn(2, n, 32, dtype=torch.float64) for n in (9, 7, 7))
    memory_padding = torch.zeros(2, 7, dtype=torch.bool)
    memory_padding[1, 4:] = True
    full = decoder(inputs, memory, memory_position, memory_padding)
    cache, outputs, start = DecoderCache(), [], 0
    for size in (1, 1, 2, 1, 3, 1):  # multi-task decoding feeds two inputs at once
        outputs.append(decoder(inputs[:, start : start + size], memory, memory_position, memory_padding, cache))
        start += size
    assert cache.length == 9
    assert_same_function(torch.cat(outputs, dim=1), full)  # float64: one function in two orders


@pytest.mark.parametrize("task", ["box", "mask", "multi"])
def test_cached_greedy_generation_equals_recomputing_the_prefix(task):
    model = tiny_model(task, seed=1).double()  # float64: one function in two orders, tokens equal
    batch = double(*make_batch(SHAPES[3], seed=1))
    cached = model.generate(*batch, use_cache=True)
    recomputed = model.generate(*batch, use_cache=False)
    for key in cached:
        assert_same_function(cached[key], recomputed[key], scale=1.0, msg=key)  # tokens; scores: probabilities


@pytest.mark.parametrize("task", ["box", "mask", "multi"])
def test_greedy_generation_agrees_with_teacher_forcing_on_its_own_output(task):
    """Each emitted token is the argmax of the teacher-forced logits given the tokens before it."""
    # float64: the two passes are one function in two orders, so no near-tie can flip an argmax
    model = tiny_model(task, seed=2).double()
    batch = double(*make_batch(SHAPES[3], seed=2))
    result = model.generate(*batch)
    box_tokens, mask_tokens = result.get("box_tokens"), result.get("mask_tokens")
    logits = model(*batch, box_tokens=box_tokens, mask_tokens=mask_tokens)
    if box_tokens is not None:
        coordinate_probs = F.softmax(logits["box_logits"][:, :4, :NUM_BIN], dim=-1)  # EOS excluded
        assert torch.equal(coordinate_probs.argmax(dim=-1), box_tokens)
        expected = coordinate_probs.gather(2, box_tokens[..., None])[..., 0]
        assert_same_function(result["box_scores"], expected, scale=1.0)
    if mask_tokens is not None:
        probs = F.softmax(logits["mask_logits"][:, : 2 * NUM_RAY], dim=-1)
        for row in range(mask_tokens.shape[0]):
            ends = (mask_tokens[row] == EOS).nonzero()
            emitted = int(ends[0]) + 1 if len(ends) else 2 * NUM_RAY  # up to and with the first EOS
            assert torch.equal(probs[row, :emitted].argmax(dim=-1), mask_tokens[row, :emitted])
            expected = probs[row, :emitted].gather(1, mask_tokens[row, :emitted, None])[:, 0]
            assert_same_function(result["mask_scores"][row, :emitted], expected, scale=1.0)


def test_mask_generation_stops_each_sequence_at_its_first_eos():
    model = tiny_model("mask", seed=3)
    batch = make_batch([(64, 64)] * 6, seed=3)
    # Coordinates all score 0; the EOS bias is set so that half the samples emit EOS first.
    last = model.predictor[-1]
    with torch.no_grad():
        last.weight[:EOS] = 0
        last.bias.zero_()
        zeros = torch.zeros(6, 2 * NUM_RAY, dtype=torch.int64)
        first_eos_logit = model(*batch, mask_tokens=zeros)["mask_logits"][:, 0, EOS]
        threshold = first_eos_logit.sort().values[2:4].mean()
        last.bias[EOS] = -threshold
    cached = model.generate(*batch)
    recomputed = model.generate(*batch, use_cache=False)
    assert torch.equal(cached["mask_tokens"], recomputed["mask_tokens"])
    tokens, scores = cached["mask_tokens"], cached["mask_scores"]
    stopped = first_eos_logit > threshold
    assert stopped.sum() == 3
    assert (tokens[stopped] == EOS).all() and (tokens[~stopped, 0] == 0).all()
    for row in range(6):
        at = int((tokens[row] == EOS).nonzero()[0]) if (tokens[row] == EOS).any() else None
        if at is not None:
            assert (tokens[row, at:] == EOS).all()
            assert scores[row, at] > 0 and (scores[row, at + 1 :] == 0).all()


def test_mask_generation_ends_when_every_sequence_has_emitted_eos():
    model = tiny_model("mask", seed=4)
    with torch.no_grad():
        model.predictor[-1].bias[EOS] = 1e4
    calls = []
    model.decoder.register_forward_hook(lambda module, args, output: calls.append(1))
    result = model.generate(*make_batch(SHAPES[3]))
    assert len(calls) == 1
    assert (result["mask_tokens"] == EOS).all()
    # exact: the other logits lie 1e4 below EOS's, their exp underflows to 0, so EOS's softmax is 1 / 1
    assert torch.equal(result["mask_scores"][:, 0], torch.ones(3))
    assert (result["mask_scores"][:, 1:] == 0).all()


def test_top_p_sampling_draws_only_from_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.2]]).repeat(400, 1)
    generator = torch.Generator().manual_seed(0)
    # Mass before token 1 is 0.5 <= 0.6 (kept); before token 2 it is 0.8 (dropped).
    assert set(top_p_sample(probs, 0.6, generator).tolist()) == {0, 1}
    assert set(top_p_sample(probs, 0.1, generator).tolist()) == {0}


def test_top_p_generation_is_reproducible_with_a_seeded_generator():
    model = tiny_model("mask")
    batch = make_batch(SHAPES[3])
    first = model.generate(*batch, strategy="top_p", generator=torch.Generator().manual_seed(7))
    second = model.generate(*batch, strategy="top_p", generator=torch.Generator().manual_seed(7))
    assert torch.equal(first["mask_tokens"], second["mask_tokens"])
    with pytest.raises(ValueError, match="strategy 'beam' is unknown"):
        model.generate(*batch, strategy="beam")


# ------------------------------------------------------------------------------------------------
# Padding invariance and its parts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["box", "mask", "multi"])
def test_prediction_does_not_change_when_batched_with_a_larger_image(task):
    model = tiny_model(task, seed=5).double()  # float64: the padded batch sums in other orders
    with torch.no_grad():  # BatchNorm as after training: padded zeros no longer stay zero by themselves
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
                norm.bias.uniform_(-1, 1)
    images, pad_mask, expression_ids = double(*make_batch([(45, 77), (120, 150)], seed=5))
    alone = model.generate(images[:1, :, :64, :96], pad_mask[:1, :64, :96], expression_ids[:1])
    batched = model.generate(images, pad_mask, expression_ids)
    for key, value in alone.items():
        assert_same_function(batched[key][:1], value, scale=1.0, msg=key)  # tokens; scores: probabilities


def test_masked_group_norm_normalizes_over_the_valid_region_only():
    torch.manual_seed(0)
    norm = MaskedGroupNorm(4, 8).double()  # float64: masked and native group norm sum in other orders
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    no_padding = torch.zeros(2, 5, 6, dtype=torch.bool)
    expected = F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    assert_same_function(norm(x, no_padding), expected)
    padding = no_padding.clone()
    padding[0, 3:, :] = True
    padding[0, :, 4:] = True
    valid_region = F.group_norm(x[:1, :, :3, :4], 4, norm.weight, norm.bias, norm.eps)
    assert_same_function(norm(x, padding)[:1, :, :3, :4], valid_region)


def test_sine_position_counts_rows_and_columns_over_the_valid_area():
    padding = torch.zeros(1, 2, 3, dtype=torch.bool)
    padding[0, :, 2] = True  # last column is padding
    position = sine_position_2d(padding, 4).view(1, 2, 3, 4)
    # Channels: y (sin, cos at frequency 1), then x; y = row / (2 + eps) * 2 pi, x = column / (2 + eps) * 2 pi
    # (1-based, eps = 1e-6), here in float64.
    y, x = 2 / (2 + 1e-6) * 2 * np.pi, 1 / (2 + 1e-6) * 2 * np.pi
    expected = torch.tensor([np.sin(y), np.cos(y), np.sin(x), np.cos(x)], dtype=torch.float64)
    # float32: the phase takes 3 roundings (+ eps, /, * 2 pi: 3u relative, so 3u * 2 pi absolute), sin and cos
    # 1 ulp (2u), the stored result u.
    torch.testing.assert_close(position[0, 1, 0].double(), expected, atol=(3 * 2 * np.pi + 3) * U32, rtol=0)
    wider = torch.ones(1, 4, 5, dtype=torch.bool)
    wider[0, :2, :2] = False
    # The same float32 phases: only sin and cos may differ (a vector kernel or a scalar tail, 1 ulp each)
    torch.testing.assert_close(sine_position_2d(wider, 4).view(1, 4, 5, 4)[0, :2, :2], position[0, :, :2],
                               atol=2 * 2 * U32, rtol=0)


def test_language_encoder_max_pools_only_over_the_words():
    torch.manual_seed(0)
    # float64: packed and unpacked GRU sum in other orders
    encoder = LanguageEncoder(np.random.default_rng(0).normal(size=(10, 6)), hidden=5).double().eval()
    expression_ids = torch.tensor([[4, 7, 2, 0, 0, 0], [3, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 1]])
    pooled = encoder(expression_ids)
    for row, length in enumerate((3, 1, 6)):
        words = encoder.embedding(expression_ids[row : row + 1, :length])
        outputs, _ = encoder.gru(words)  # the words alone: no padding to skip
        assert_same_function(pooled[row], outputs[0].amax(dim=0))
    longer = F.pad(expression_ids, (0, 9), value=PAD_ID)  # a larger max_token changes nothing
    assert_same_function(encoder(longer), pooled)


def test_language_encoder_reads_an_all_padding_expression_as_one_unknown_word():
    encoder = LanguageEncoder(np.random.default_rng(0).normal(size=(10, 6)), hidden=5).double()  # float64: as above
    empty = encoder(torch.tensor([[PAD_ID, PAD_ID, PAD_ID], [4, 5, PAD_ID]]))
    assert torch.isfinite(empty).all()
    assert_same_function(empty[0], encoder(torch.tensor([[UNK_ID]]))[0])


def test_word_vectors_are_frozen_or_trained_as_configured():
    assert not tiny_model("box").language.embedding.weight.requires_grad
    trainable = tiny_model("box", freeze_word_vectors=False).language.embedding
    assert trainable.weight.requires_grad and trainable.weight.shape == (len(VOCABULARY), 16)


# ------------------------------------------------------------------------------------------------
# Building, counting, multi-task training
# ------------------------------------------------------------------------------------------------


def test_build_model_freezes_all_but_the_last_backbone_modules():
    model = tiny_model("box", trainable_backbone_modules=2)
    modules = list(model.backbone.layers.children())
    assert all(not p.requires_grad for module in modules[:-2] for p in module.parameters())
    assert all(p.requires_grad for module in modules[-2:] for p in module.parameters())
    model.train()
    assert not modules[0].bn.training and modules[-1].bn.training


def test_count_parameters_reports_total_and_trainable_per_part():
    model = tiny_model("multi")
    counts = count_parameters(model)
    assert list(counts)[:5] == ["backbone", "language", "fusion", "encoder", "decoder"]
    assert sum(total for total, _ in counts.values()) == sum(p.numel() for p in model.parameters())
    assert sum(trainable for _, trainable in counts.values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    embedding = model.language.embedding.weight.numel()
    assert counts["language"][0] - counts["language"][1] == embedding  # frozen word vectors
    assert counts["task_embedding"] == (2 * 32, 2 * 32)


def test_multi_task_loss_backpropagates_into_both_the_box_and_the_mask_parts():
    model = tiny_model("multi").train()
    batch = make_batch(SHAPES[3])
    box_tokens, mask_tokens = random_targets(3)
    outputs = model(*batch, box_tokens=box_tokens, mask_tokens=mask_tokens)
    for logits in outputs.values():
        logits.retain_grad()
    losses = Criterion(model.layout)(outputs, {"box_tokens": box_tokens, "mask_tokens": mask_tokens})
    assert torch.equal(losses["loss"], losses["loss_box"] + losses["loss_mask"])  # exact: the same one addition
    losses["loss"].backward()
    assert outputs["box_logits"].grad.abs().sum() > 0
    assert outputs["mask_logits"].grad.abs().sum() > 0
    # The task_mask input (row 1) only feeds mask positions: a gradient there comes from the mask loss.
    task_gradient = model.task_embedding.weight.grad
    assert task_gradient[0].abs().sum() > 0 and task_gradient[1].abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# Learning: a small model overfits a toy grounding set
# ------------------------------------------------------------------------------------------------

COLOURS = {"red": (230, 40, 40), "blue": (40, 60, 230)}


def toy_grounding_batch(count: int, size: int = 64, seed: int = 0):
    """Images with a red and a blue rectangle; the expression names the target's colour."""
    rng = np.random.default_rng(seed)
    vocabulary = Vocabulary.build(COLOURS)
    images = np.zeros((count, size, size, 3), dtype=np.float32)
    boxes, expressions = [], []
    for index in range(count):
        images[index] = 90  # grey background
        placed = []
        for colour in COLOURS:
            while True:
                w, h = rng.integers(14, 28, size=2)
                x, y = rng.integers(0, size - w), rng.integers(0, size - h)
                if all(x + w <= a or a + c <= x or y + h <= b or b + d <= y for a, b, c, d in placed):
                    break
            placed.append((x, y, w, h))
            images[index, y : y + h, x : x + w] = COLOURS[colour]
        target = int(rng.integers(0, 2))
        x, y, w, h = placed[target]
        boxes.append([x, y, x + w, y + h])
        expressions.append(vocabulary.encode(list(COLOURS)[target], max_token=2))
    image_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    pad_mask = torch.zeros(count, size, size, dtype=torch.bool)
    boxes = torch.tensor(boxes, dtype=torch.float32)
    box_tokens = quantize(boxes, size, size, NUM_BIN)
    return vocabulary, image_tensor, pad_mask, torch.from_numpy(np.stack(expressions)), boxes, box_tokens


@pytest.mark.slow
def test_small_model_overfits_eight_toy_samples_to_full_accuracy():
    vocabulary, images, pad_mask, expression_ids, boxes, box_tokens = toy_grounding_batch(8)
    config = tiny_config("box", d_model=64, ffn_dim=128, num_encoder_layers=1, num_decoder_layers=1,
                         dropout=0.0, trainable_backbone_modules=-1, freeze_word_vectors=False)
    torch.manual_seed(0)
    model = build_model(config, vocabulary)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracy = 0.0
    for step in range(400):
        model.train()
        loss = Criterion(model.layout)(model(images, pad_mask, expression_ids, box_tokens),
                                       {"box_tokens": box_tokens})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24:
            model.eval()
            predicted = dequantize(model.generate(images, pad_mask, expression_ids)["box_tokens"], 64, 64, NUM_BIN)
            accuracy = box_metrics(predicted, boxes)["acc@0.5"]
            if accuracy == 100.0:
                break
    assert accuracy == 100.0
    # It grounds the words: naming the other colour moves the box to the other rectangle.
    red, blue = vocabulary.index("red"), vocabulary.index("blue")
    swapped = expression_ids.clone()
    swapped[expression_ids == red], swapped[expression_ids == blue] = blue, red
    predicted = dequantize(model.generate(images, pad_mask, swapped)["box_tokens"], 64, 64, NUM_BIN)
    assert box_metrics(predicted, boxes)["acc@0.5"] < 50.0


def test_sync_batchnorm_keeps_the_padding_zeroed_and_the_weights():
    from seqtr_lib.distributed import synchronised_batchnorm

    model = tiny_model("box", seed=5)
    with torch.no_grad():  # trained-like statistics, under which padded zeros do not stay zero by themselves
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.uniform_(-1, 1)
                norm.bias.uniform_(-1, 1)
    alone = copy.deepcopy(model)
    # Converting needs no GPU (only SyncBatchNorm's training-mode statistics do); this names the device the
    # conversion is meant for.
    synced = synchronised_batchnorm(model, torch.device("cuda"), world_size=2).eval()
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert alone.state_dict().keys() == synced.state_dict().keys()
    assert all(torch.equal(alone.state_dict()[k], v) for k, v in synced.state_dict().items())
    images, pad_mask, expression_ids = make_batch([(45, 77), (120, 150)], seed=5)
    # In eval mode a SyncBatchNorm calls the same batch_norm as a BatchNorm2d: equal bit for bit, the
    # fusion's padding included (its hooks must find the SyncBatchNorms).
    expected = alone.generate(images, pad_mask, expression_ids)
    got = synced.generate(images, pad_mask, expression_ids)
    assert all(torch.equal(got[key], value) for key, value in expected.items())


def test_sync_batchnorm_is_refused_for_several_cpu_processes_and_skipped_alone():
    from seqtr_lib.distributed import synchronised_batchnorm

    model = tiny_model("box")
    assert synchronised_batchnorm(model, torch.device("cpu"), world_size=1) is model
    with pytest.raises(ValueError, match=r"sync_batchnorm needs CUDA.*freeze_batchnorm=true"):
        synchronised_batchnorm(model, torch.device("cpu"), world_size=2)
