"""The model on a CUDA device: bf16 training steps, agreement with the CPU, cached decoding, channels_last.

Skipped where there is no CUDA device. benchmarks/gpu_check.sh runs them on a GPU machine, with
``python -m pytest -m cuda`` or, where pytest is not installed, as ``python tests/test_cuda.py``
(repository root on PYTHONPATH), which runs every test here and prints PASS / FAIL for each.
"""

from __future__ import annotations

import copy
import sys
import traceback
from contextlib import contextmanager

import torch
from torch import nn

from rounding import assert_same_function, double  # tests/ is on the path under pytest and as a script
from seqtr_lib.config import ModelConfig
from seqtr_lib.engine import autocast
from seqtr_lib.loss import Criterion
from seqtr_lib.model.graph_decoding import GraphDecoder
from seqtr_lib.model.seqtr import build_model
from seqtr_lib.text import PAD_ID, Vocabulary

try:
    import pytest
except ModuleNotFoundError:  # GPU machines may lack pytest; `python tests/test_cuda.py` needs none
    pytest = None

if pytest is not None:
    pytestmark = [
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(),
                           reason="needs CUDA (run by benchmarks/gpu_check.sh on a GPU machine)"),
    ]

CUDA = torch.device("cuda")
NUM_BIN = 50
NUM_RAY = 5
VOCABULARY = Vocabulary.build(["red square", "blue circle on the left", "big green thing below"])


def tiny_model(task: str, seed: int = 0) -> nn.Module:
    """A small float32 model on the CPU, in eval mode, its BatchNorm statistics measured on one batch.

    With fresh statistics (mean 0, variance 1) the random DarkNet's activations reach ~1e5 around a
    large mean, and the fusion's normalisation magnifies float32 rounding about a thousand-fold (logits
    of two equally valid kernel orders then differ by 3e-4). Measured statistics, as in a trained
    model, normalise the activations and keep these comparisons meaningful at 1e-4.
    """
    config = ModelConfig(task=task, num_bin=NUM_BIN, num_ray=NUM_RAY, darknet_width=0.125, word_dim=16,
                         gru_hidden=16, d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2,
                         ffn_dim=64, trainable_backbone_modules=-1)
    torch.manual_seed(seed)
    model = build_model(config, VOCABULARY)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(**make_batch(batch=4, seed=seed + 100))
    return model.eval()


def make_batch(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """CPU batch: 0-255 images (B, 3, 96, 128) whose lower rows / right columns are padding, words, targets."""
    generator = torch.Generator().manual_seed(seed)
    height, width = 96, 128
    images = torch.rand(batch, 3, height, width, generator=generator) * 255
    pad_mask = torch.zeros(batch, height, width, dtype=torch.bool)
    for i in range(batch):
        pad_mask[i, height - 16 * (i % 3):, :] = True  # sample i loses 16 * (i % 3) rows, 32 * (i % 3) columns
        pad_mask[i, :, width - 32 * (i % 3):] = True
    images = images.masked_fill(pad_mask[:, None], 0.0)
    expression_ids = torch.randint(PAD_ID + 1, len(VOCABULARY), (batch, 6), generator=generator)
    lengths = torch.arange(batch) % 6 + 1
    expression_ids = expression_ids.masked_fill(torch.arange(6)[None, :] >= lengths[:, None], PAD_ID)
    corners = torch.randint(0, NUM_BIN, (batch, 2, 2), generator=generator).sort(dim=1).values
    mask_tokens = torch.randint(0, NUM_BIN, (batch, 2 * NUM_RAY), generator=generator)
    mask_tokens[:, -2:] = NUM_BIN  # EOS: the last vertex is missing
    return dict(images=images, pad_mask=pad_mask, expression_ids=expression_ids,
                box_tokens=corners.reshape(batch, 4), mask_tokens=mask_tokens)


def on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


@contextmanager
def ieee_float32():
    """TF32 off (cuDNN allows it by default), so CUDA float32 convolutions and matmuls match the CPU's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_bf16_training_step_on_cuda_gives_a_finite_loss_and_a_finite_gradient_for_every_trainable_weight():
    for task in ("box", "mask", "multi"):
        model = tiny_model(task).to(CUDA).to(memory_format=torch.channels_last).train()
        batch = on(make_batch(), CUDA)
        batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
        with autocast(CUDA, "bf16"):
            outputs = model(**batch)
        assert all(logits.dtype == torch.bfloat16 for logits in outputs.values()), f"{task}: autocast did not apply"
        loss = Criterion(model.layout)({k: v.float() for k, v in outputs.items()}, batch)["loss"]
        loss.backward()
        assert torch.isfinite(loss), f"{task}: loss {loss.item()}"
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                assert parameter.grad is not None, f"{task}: {name} got no gradient"
                assert torch.isfinite(parameter.grad).all(), f"{task}: {name} has a non-finite gradient"


def test_logits_on_cuda_match_the_cpu_for_the_same_weights():
    # In float64: the devices' kernels sum in other orders, and float32 would carry the rounding of whichever
    # kernels oneDNN picks on this CPU; two float64 orders agree within tests/rounding.py's bound.
    cpu_model = tiny_model("multi").double()
    cuda_model = copy.deepcopy(cpu_model).to(CUDA)
    batch = dict(zip(make_batch(), double(*make_batch().values())))
    with torch.no_grad():
        expected = cpu_model(**batch)
        actual = cuda_model(**on(batch, CUDA))
    for key in ("box_logits", "mask_logits"):
        assert_same_function(actual[key].cpu(), expected[key], msg=key)


def test_cached_greedy_generation_on_cuda_equals_recomputing_the_prefix():
    batch = on(make_batch(batch=4, seed=1), CUDA)
    inputs = (batch["images"], batch["pad_mask"], batch["expression_ids"])
    for task in ("box", "mask", "multi"):
        model = tiny_model(task, seed=2).to(CUDA)
        with ieee_float32():
            cached = model.generate(*inputs, use_cache=True)
            recomputed = model.generate(*inputs, use_cache=False)
        assert cached.keys() == recomputed.keys()
        for key in cached:
            if key.endswith("tokens"):
                assert torch.equal(cached[key], recomputed[key]), f"{task}: {key} differ"
            else:
                torch.testing.assert_close(cached[key], recomputed[key], rtol=1e-4, atol=1e-5,
                                           msg=lambda message: f"{task}: {key}: {message}")


def test_cuda_graph_decoding_gives_the_tokens_of_the_cached_decoder():
    batch = on(make_batch(batch=4, seed=1), CUDA)
    inputs = (batch["images"], batch["pad_mask"], batch["expression_ids"])
    for task in ("box", "mask", "multi"):
        model = tiny_model(task, seed=2).to(CUDA)
        decoder = GraphDecoder(model)
        with ieee_float32(), torch.no_grad():
            memory = model.encode(*inputs)
            cached = model.generate_from_memory(memory)
            for _ in range(2):  # the second call replays the graphs captured by the first
                graphed = decoder.generate_from_memory(memory)
                for key in cached:
                    if key.endswith("tokens"):
                        assert torch.equal(graphed[key], cached[key]), f"{task}: {key} differ"
                    else:
                        torch.testing.assert_close(graphed[key], cached[key], rtol=1e-4, atol=1e-5)
        assert decoder._states and all(state.graphs for state in decoder._states.values())


def test_device_images_decode_on_cuda_within_a_level_or_two_of_the_cpu():
    import numpy as np
    from PIL import Image

    from seqtr_lib.data.device_images import batch_images, read_encoded_image

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        path = Path(folder) / "x.jpg"
        smooth = (rng.random((12, 16, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)  # 96 x 128 blocks
        Image.fromarray(smooth).save(path, quality=95)
        payload, _ = read_encoded_image(path)
        meta = {"image_path": str(path), "ori_shape": (96, 128), "img_shape": (60, 80), "pad_shape": (64, 96),
                "scale_factor": (0.8, 0.8), "crop": (12, 10)}  # resized to 77 x 102, then a 60 x 80 window
        on_cpu = batch_images([payload], [meta], (64, 96), torch.device("cpu"))
        on_cuda = batch_images([payload], [meta], (64, 96), CUDA).cpu()
    difference = (on_cuda.int() - on_cpu.int()).abs()
    assert difference.float().mean() < 1.0 and difference.max() <= 8


def test_prefetched_batches_on_cuda_arrive_whole_and_in_order():
    from seqtr_lib.evaluation import move_batch, prefetched

    batches = [make_batch(batch=2, seed=seed) for seed in range(4)]
    for batch in batches:
        batch["images"] = batch["images"].to(torch.uint8)
        batch["metas"] = [{}, {}]
    got = list(prefetched(enumerate(batches), CUDA, channels_last=True))
    assert [index for index, _ in got] == [0, 1, 2, 3]
    for (_, moved), batch in zip(got, batches):
        expected = move_batch(batch, CUDA, channels_last=True)
        for key in ("images", "pad_mask", "expression_ids", "box_tokens"):
            assert moved[key].is_cuda and torch.equal(moved[key], expected[key]), key


def test_channels_last_model_and_images_give_the_logits_of_contiguous_ones():
    contiguous = tiny_model("multi").to(CUDA)
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    batch = on(make_batch(), CUDA)
    with torch.no_grad(), ieee_float32():
        expected = contiguous(**batch)
        batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
        actual = channels_last(**batch)
    for key in ("box_logits", "mask_logits"):
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-4,
                                   msg=lambda message: f"{key}: {message}")


def test_tiny_model_trained_on_cuda_in_bf16_lowers_the_loss_on_a_fixed_batch():
    model = tiny_model("box").to(CUDA).to(memory_format=torch.channels_last).train()
    batch = on(make_batch(batch=8, seed=3), CUDA)
    batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=3e-3, betas=(0.9, 0.98), eps=1e-9, amsgrad=True)
    losses = []
    for _ in range(40):
        with autocast(CUDA, "bf16"):
            outputs = model(**batch)
        loss = Criterion(model.layout)({k: v.float() for k, v in outputs.items()}, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trainable, 0.15)
        optimizer.step()
        losses.append(loss.item())
    # At first the 51 tokens are about equally likely (loss ~ 1.1 x ln 51 = 4.3, x1 weighing 1.5). Learning
    # only the final EOS and which of the 8 samples' tokens occur at each position brings it near 2.2;
    # asking for a third less leaves room for bf16 and dropout noise.
    assert losses[-1] < 0.67 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"


def _run_without_pytest() -> int:
    """Run every test here in turn, print PASS or FAIL (with the traceback) for each; 1 if any failed."""
    if not torch.cuda.is_available():
        print("CUDA is not available: these tests need a CUDA device")
        return 1
    tests = [(name, test) for name, test in globals().items() if name.startswith("test_") and callable(test)]
    failures = 0
    for name, test in tests:
        try:
            test()
        except Exception:
            failures += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        else:
            print(f"PASS {name}", flush=True)
    print(f"{len(tests) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_run_without_pytest())
