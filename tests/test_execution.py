"""Execution choices on a CPU (seqtr_lib.execution): detection of bf16 units, the auto choice, BatchNorm
folding, and that the fast path keeps the released models' tokens and metrics.

Speed is not tested here (benchmarks/bench_cpu.py measures it). Where the CPU has no bf16 units, torch
emulates bfloat16: the agreement checks still run, forced, on any CPU.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seqtr_lib import execution as ex
from seqtr_lib.config import ModelConfig, load_params
from seqtr_lib.evaluation import autocast, evaluate_model, load_trained
from seqtr_lib.metrics import headline_score
from seqtr_lib.model.darknet import ConvBNLeaky, DarkNet53
from rounding import assert_same_function

ROOT = Path(__file__).resolve().parent.parent
FAST = "channels_last+bf16+fold_bn+recheck"


def test_parse_execution_names_steps_in_any_order_and_refuses_unknown_ones():
    assert ex.parse_execution("fp32") == ex.Execution()
    assert ex.parse_execution("bf16+channels_last").name == "channels_last+bf16"
    assert ex.parse_execution(FAST) == ex.Execution(channels_last=True, bf16=True, fold_bn=True, recheck=True)
    with pytest.raises(ValueError, match="unknown step.*'int8'.*channels_last, bf16, fold_bn, recheck"):
        ex.parse_execution("channels_last+int8")


@pytest.mark.parametrize("flags, environ, torch_supports, expected, reason", [
    ({"avx512f", "avx512_bf16"}, {}, True, True, "avx512_bf16"),
    ({"avx512f", "amx_bf16", "amx_tile"}, {}, True, True, "amx_bf16"),
    ({"fp", "asimd", "bf16"}, {}, True, True, "bf16"),  # Arm
    ({"avx512f", "avx512_vnni"}, {}, True, False, "no bf16 units"),  # AVX-512 without BF16: emulated
    ({"avx2", "fma"}, {}, True, False, "no bf16 units"),
    ({"avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, True, False, "ONEDNN_MAX_CPU_ISA=AVX2"),
    ({"avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, True, True, "avx512_bf16"),
    ({"avx512f", "avx512_bf16"}, {}, False, False, "torch's oneDNN"),
    ({"avx2"}, {"SEQTR_CPU_BF16": "1"}, False, True, "SEQTR_CPU_BF16=1"),
    ({"avx512_bf16"}, {"SEQTR_CPU_BF16": "0"}, True, False, "SEQTR_CPU_BF16=0"),
])
def test_bf16_units_are_detected_from_flags_onednn_cap_and_torch(flags, environ, torch_supports, expected, reason):
    found, why = ex.cpu_bf16_units(flags, environ, torch_supports)
    assert found is expected
    assert reason in why


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t\t: spectre_v1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert ex.cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert ex.cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}
    assert ex.cpu_flags(tmp_path / "absent") == set()


def test_auto_turns_bf16_on_only_for_a_large_backbone_on_a_cpu_with_bf16_units():
    paper, synthetic = ModelConfig(), ModelConfig(darknet_width=0.125)
    units, no_units = {"avx512_bf16"}, {"avx2"}
    assert ex.pick_execution("cpu", paper, 640, units, {}, True).name == FAST
    # bf16 does not keep a mask's tokens (2N near-tie chances): masks stay float32
    assert ex.pick_execution("cpu", ModelConfig(task="mask"), 640, units, {}, True).name == "channels_last+fold_bn"
    # The embedded default (width 0.125 at 128 px: 1/1600 of the paper's convolution work) stays float32.
    assert ex.pick_execution("cpu", synthetic, 128, units, {}, True).name == "channels_last+fold_bn"
    assert ex.pick_execution("cpu", paper, 640, no_units, {}, True).name == "channels_last+fold_bn"
    assert ex.pick_execution("cpu", paper, 640, units, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, True).name == \
        "channels_last+fold_bn"
    assert ex.pick_execution("cuda", paper, 640, units, {}, True) is None  # train.amp governs a GPU
    assert "bf16 units" in ex.pick_execution("cpu", paper, 640, units, {}, True).describe()


def _darknet_with_statistics() -> DarkNet53:
    torch.manual_seed(0)
    model = DarkNet53(width=0.125)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics far from the identity, as trained ones are
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.2, 3)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_folded_batchnorm_computes_what_conv_then_batchnorm_computes():
    model = _darknet_with_statistics().double()
    before = copy.deepcopy(model.state_dict())
    folded = ex.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, ConvBNLeaky) for m in folded.modules()) == 58
    images = torch.rand(2, 3, 64, 96, dtype=torch.float64) * 255
    with torch.no_grad():
        expected, got = model(images), folded(images)
    for e, g in zip(expected, got):
        # float64: folding only reorders a few multiplications, one function in two orders (tests/rounding.py)
        assert_same_function(g, e)
    for name, tensor in model.state_dict().items():  # the model given is untouched
        assert torch.equal(tensor, before[name]), name


def test_folded_batchnorm_still_zeroes_the_padding_of_a_non_square_image():
    """A wide and a tall image in one padded batch: the folded model's memory is the unfolded model's. With the
    padding not zeroed where a BatchNorm was folded away, the backbone reads its own outputs back from the
    padding and the memory differs by far more than rounding (it did, in the Grounder's default CPU path)."""
    from seqtr_lib.model.seqtr import build_model
    from seqtr_lib.text import Vocabulary

    torch.manual_seed(0)
    config = ModelConfig(task="box", darknet_width=0.125, word_dim=16, gru_hidden=16, d_model=32, num_heads=4,
                         num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64)
    vocabulary = Vocabulary.build(["red circle", "blue square"])
    model = build_model(config, vocabulary).eval()
    model.backbone = _darknet_with_statistics()
    model = model.double()
    images = torch.zeros(2, 3, 96, 96, dtype=torch.float64)
    pad_mask = torch.ones(2, 96, 96, dtype=torch.bool)
    for index, (height, width) in enumerate([(64, 96), (96, 64)]):
        images[index, :, :height, :width] = torch.rand(3, height, width, dtype=torch.float64) * 255
        pad_mask[index, :height, :width] = False
    expression_ids = torch.from_numpy(np.stack([vocabulary.encode(e, 4) for e in ("red circle", "blue square")]))
    with torch.no_grad():
        expected = model.encode(images, pad_mask, expression_ids).features
        got = ex.fold_batchnorm(model).encode(images, pad_mask, expression_ids).features
    assert_same_function(got, expected)


def test_prepared_bf16_backbone_keeps_its_stem_in_float32_and_returns_float32_maps():
    model = _darknet_with_statistics()
    holder = nn.Module()
    holder.backbone = model
    prepared = ex.parse_execution(FAST).prepare(holder)
    assert ex.runs_in_bf16(prepared) and not ex.runs_in_bf16(holder)
    seen: dict[str, torch.dtype] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
             for name, m in prepared.backbone.layers.named_children()]
    with torch.inference_mode():
        maps = prepared.backbone(torch.rand(1, 3, 64, 64).contiguous(memory_format=torch.channels_last) * 255)
    for hook in hooks:
        hook.remove()
    assert seen["stem"] == seen["down1"] == seen["stage1"] == torch.float32
    assert seen["down2"] == seen["stage2"] == torch.bfloat16  # inside the backbone the maps stay bf16
    assert [m.dtype for m in maps] == [torch.float32] * 3  # what the fusion reads
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("amp, override, expected", [
    ("bf16", "1", True), ("bf16", "0", False), ("none", "1", False), ("fp16", "1", False)])
def test_cpu_training_autocasts_to_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, amp, override, expected):
    monkeypatch.setenv("SEQTR_CPU_BF16", override)
    with autocast(torch.device("cpu"), amp):
        assert torch.is_autocast_enabled("cpu") is expected
        if expected:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def _tiny_model(task: str):
    from seqtr_lib.model.seqtr import build_model
    from seqtr_lib.text import Vocabulary
    from tests.conftest import TINY_MODEL

    vocabulary = Vocabulary.build(["the red circle left of the blue square"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY_MODEL, "task": task}), vocabulary).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 64, 64, generator=generator) * 255
    pad_mask = torch.zeros(3, 64, 64, dtype=torch.bool)
    pad_mask[1, 48:] = True
    expression_ids = torch.randint(1, len(vocabulary), (3, 6), generator=generator)
    return model, (images, pad_mask, expression_ids)


@pytest.mark.parametrize("task", ["box", "mask"])
def test_samples_too_close_to_call_in_bf16_are_generated_again_in_float32(monkeypatch, task):
    model, inputs = _tiny_model(task)
    with torch.inference_mode():
        expected = model.generate(*inputs)  # float32, the model as given
        execution = ex.parse_execution("bf16+recheck")  # no folding: the float32 counterpart is the model itself
        prepared = execution.prepare(model)
        monkeypatch.setattr(ex, "RECHECK_MARGIN", math.inf)  # every sample is too close to call
        everything = ex.generate(prepared, execution, *inputs)
        monkeypatch.setattr(ex, "RECHECK_MARGIN", 1e-30)  # none is
        nothing = ex.generate(prepared, execution, *inputs)
    assert everything["rechecked"].all() and not nothing["rechecked"].any()
    for key in expected:
        torch.testing.assert_close(everything[key], expected[key], rtol=0, atol=0)
    assert (nothing["min_margin"] >= 0).all() and torch.isfinite(nothing["min_margin"]).all()


def test_bf16_is_given_up_when_most_samples_need_the_float32_recheck(monkeypatch):
    model, inputs = _tiny_model("box")
    execution = ex.parse_execution("bf16+recheck")
    with torch.inference_mode():
        expected = model.generate(*inputs)
        monkeypatch.setattr(ex, "RECHECK_MARGIN", 1e-30)  # no sample is a near-tie: bf16 stays
        steady = execution.prepare(model)
        for _ in range(2 * ex.RECHECK_TRIAL):
            ex.generate(steady, execution, *inputs)
        monkeypatch.setattr(ex, "RECHECK_MARGIN", math.inf)  # every sample is one (random weights are like that)
        hesitant = execution.prepare(model)
        calls = -(-ex.RECHECK_TRIAL // len(inputs[0]))  # the first call that reaches the trial size decides
        for _ in range(calls):
            assert "rechecked" in ex.generate(hesitant, execution, *inputs)
        dtypes: set[torch.dtype] = set()
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out: dtypes.add(out.dtype) if isinstance(module, nn.Conv2d) else None)
        try:
            after = ex.generate(hesitant, execution, *inputs)
        finally:
            handle.remove()
    assert ex.recheck_tally(steady).float32_from is None and ex.recheck_tally(steady).rechecked == 0
    assert ex.ran_as(steady, execution) == "bf16+recheck"
    tally = ex.recheck_tally(hesitant)
    assert tally.float32_from == tally.samples == calls * len(inputs[0]) == tally.rechecked
    assert ex.ran_as(hesitant, execution) == "fp32" and "given up" in tally.describe()
    assert dtypes == {torch.float32} and "rechecked" not in after  # float32 alone, no bf16 pass first
    assert all(torch.equal(after[key], expected[key]) for key in expected)
    assert ex.recheck_tally(model) is None  # the model as given has no tally: only a prepared copy does


# --- quality: the fast path against float32 on the released synthetic weights --------------------------------

AGREEMENT = 0.99  # the share of val expressions whose tokens must equal float32's (the issue's bound)
METRIC_POINTS = 0.2  # the largest allowed change of the headline metric, in points
MAX_RECHECKED = 0.25  # at most this share of the samples may fall back to float32 (measured: see below)


@pytest.fixture(scope="module")
def held_out_scenes(tmp_path_factory) -> Path:
    """600 scenes of the synthetic set's generator at its size (256 px) with another seed than the released
    weights were trained on: about 950 val expressions, so one expression moves Acc@0.5 by 0.1 points."""
    from seqtr_lib.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("held_out")
    generate_dataset(root, num_images=600, seed=1, image_size=256, workers=1, progress=False)
    return root


@pytest.mark.parametrize("name, key, spec", [("synthetic_det", "pred_box", FAST),
                                             ("synthetic_mask", "pred_polygon", "channels_last+fold_bn")])
def test_fast_path_keeps_the_released_models_tokens_and_metric(held_out_scenes, monkeypatch, name, key, spec):
    """The fast path of each task (what auto takes on a CPU with bf16 units, bf16 forced for the box)."""
    trained, vocabulary, models = load_trained(ROOT / "weights" / f"{name}.pt")
    experiment = load_params(ROOT / "params" / f"{name}.yaml", [f"data.data_root={held_out_scenes}",
                                                                 "data.num_workers=0",
                                                                 f"data.image_size={trained.data.image_size}"])
    model = models["ema"] if "ema" in models else models["raw"]
    cpu = torch.device("cpu")
    # The reference is the pre-existing evaluation path in float32 (no execution steps, no autocast).
    assert experiment.train.amp == "none"
    reference = evaluate_model(model, experiment, vocabulary, "val", cpu)
    convolution_dtypes: set[torch.dtype] = set()

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            convolution_dtypes.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        fast = evaluate_model(model, experiment, vocabulary, "val", cpu, execution=ex.parse_execution(spec))
    finally:
        handle.remove()
    expected_dtypes = {torch.float32, torch.bfloat16} if "bf16" in spec else {torch.float32}
    assert convolution_dtypes == expected_dtypes  # bf16 really ran (and float32 around it) where asked
    # and decided most samples itself (float32 only for the near-ties), so bf16 was never given up
    if "recheck" in spec:
        assert fast["recheck"].float32_from is None
        assert fast["recheck"].rechecked <= MAX_RECHECKED * fast["num_expressions"]
    assert reference["num_expressions"] == fast["num_expressions"] >= 900
    pairs = list(zip(reference["records"], fast["records"]))
    assert all((r["ann_index"], r["expression_index"]) == (f["ann_index"], f["expression_index"]) for r, f in pairs)
    agreement = np.mean([r[key] == f[key] for r, f in pairs])  # the decoded tokens: equal iff the tokens are
    assert agreement >= AGREEMENT
    task = experiment.model.task
    change = headline_score(fast["metrics"], task) - headline_score(reference["metrics"], task)
    assert abs(change) <= METRIC_POINTS
    assert headline_score(reference["metrics"], task) > 50  # the released weights ground these scenes
