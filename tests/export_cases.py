"""Run by tests/test_export.py in a process of its own (the runtimes' native libraries stay out of the workers).

The exported inference path (seqtr_lib.export, seqtr_lib.runtime): the ONNX graphs run by OpenVINO and ONNX
Runtime give the PyTorch model's memory within float32 rounding and its greedy tokens exactly, on the released
synthetic weights; the int8 encoder is rechecked in float32 where its choices were near-ties.

Tolerance: the runtimes compute in float32 with their own kernels and summation orders. Float32 rounding over the
encoder's depth (a few dozen layers, each within a few units of 2**-24 relative) stays below 2**-16 of the
results' scale; the bound 2**-12 leaves a wide margin for any instruction set, while a wrong operation (a missing
padding mask, swapped axes, a stale cache slot) moves results by the order of their scale.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli
from seqtr_lib import runtime as rt
from seqtr_lib.evaluation import evaluate_model, load_trained
from seqtr_lib.export import UnpackedLanguage, calibration_batches, quantize_encoder, read_manifest
from seqtr_lib.model.language import LanguageEncoder
from seqtr_lib.predict import Grounder
from seqtr_lib.text import PAD_ID

RUNTIMES = ("openvino", "onnxruntime")
BOUND = 2.0**-12


def test_the_deploy_extra_is_installed_so_nothing_here_is_skipped():
    assert rt.available_runtimes() == RUNTIMES


def test_the_unpacked_expression_encoder_equals_the_packed_one():
    torch.manual_seed(0)
    language = LanguageEncoder(torch.randn(30, 8), hidden=6, freeze=False).eval()
    ids = torch.randint(3, 30, (5, 7))
    ids[0, 3:] = PAD_ID  # three words
    ids[1, 1:] = PAD_ID  # one word
    ids[2] = PAD_ID  # no word: read as one UNK
    with torch.no_grad():  # ids[3], ids[4]: every position a word
        expected, actual = language(ids), UnpackedLanguage(language)(ids)
    assert torch.allclose(actual, expected, rtol=0, atol=1e-6), (actual - expected).abs().max()
    # the backward direction must start at each expression's last word, not at the padding
    assert not torch.allclose(actual[0], UnpackedLanguage(language)(torch.cat([ids[:1, :3], ids[3:4, 3:]], 1))[0])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Twelve 256 px scenes like the released weights' (a train and a val split)."""
    from seqtr_lib.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("export_scenes")
    generate_dataset(root, num_images=16, seed=11, image_size=256, workers=1, progress=False)
    return root


@pytest.fixture(scope="module", params=["synthetic_det", "synthetic_mask"])
def exported(request, tmp_path_factory):
    """The released weights exported from the command line, over a folder that held an earlier export."""
    name = request.param
    out = tmp_path_factory.mktemp("export") / name
    out.mkdir()
    (out / "manifest.json").write_text("an earlier export")
    run_cli("-m", "seqtr_lib", "export", "--checkpoint", f"weights/{name}.pt", "--out", str(out))
    experiment, vocabulary, models = load_trained(ROOT / "weights" / f"{name}.pt")
    return out, experiment, vocabulary, models["ema"]


def _batch(experiment, vocabulary):
    """Two images of different shapes in one padded batch (the second padded on the right), two expressions."""
    from seqtr_lib.data.loader import pad_images
    from seqtr_lib.data.transforms import resize_long_side, to_tv_tensors

    rng = np.random.default_rng(0)
    images, shapes = [], []
    for height, width in ((256, 256), (256, 160)):
        image, _, _ = to_tv_tensors(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), None, None)
        transformed = resize_long_side(image, image_size=experiment.data.image_size)
        images.append(transformed.image)
        shapes.append(transformed.geometry.pad_shape)
    pad_shape = tuple(max(s[i] for s in shapes) for i in range(2))
    batch_images, pad_mask = pad_images(images, pad_shape, torch.float32)
    pad_mask[1, :, 130:] = True  # the second image ends at column 130 of the padded batch
    batch_images[1, :, :, 130:] = 0
    ids = torch.from_numpy(np.stack([vocabulary.encode(text, experiment.max_token)
                                     for text in ("the red circle", "the biggest blue square on the left")]))
    return batch_images, pad_mask, ids


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_exported_memory_and_logits_are_pytorchs_within_float32_rounding(exported, runtime):
    out, experiment, vocabulary, model = exported
    images, pad_mask, ids = _batch(experiment, vocabulary)
    network = rt.ExportedSeqTR(out, runtime)
    encoded = network.encode(images, pad_mask, ids)
    with torch.no_grad():
        memory = model.encode(images, pad_mask, ids)
        keys = torch.stack([layer.memory_keys(memory.features, memory.position)[0] for layer in model.decoder.layers])
        start = model.start(memory)
    for name, expected in (("memory_keys", keys), ("start", start)):
        actual = torch.from_numpy(encoded[name])
        scale = float(expected.abs().max())
        assert actual.shape == expected.shape, name
        assert float((actual - expected).abs().max()) <= BOUND * scale, name
    assert np.array_equal(encoded["memory_attend"][:, 0, 0], ~memory.padding.numpy())
    logits: list[torch.Tensor] = []
    generated = network.generate(images, pad_mask, ids, step_logits=logits)
    expected = model.generate(images, pad_mask, ids)
    for key in expected:
        if key.endswith("tokens"):
            assert torch.equal(generated[key], expected[key]), (key, generated[key], expected[key])
        else:
            assert float((generated[key] - expected[key]).abs().max()) <= BOUND, key
    assert logits and logits[0].shape == (2, model.layout.vocab_size)
    # Each recorded step's logits chose that step's greedy token (rows not yet ended): the recheck reads them.
    (part,) = model.layout.parts
    tokens, eos = generated[f"{part}_tokens"], model.layout.eos
    for step in range(min(tokens.shape[1], len(logits))):
        live = ~(tokens[:, :step] == eos).any(dim=1)
        choices = logits[step] if model.layout.stops_at_eos(part) else logits[step][:, :eos]
        assert torch.equal(choices.argmax(dim=1)[live], tokens[live, step]), (runtime, step)


@pytest.mark.slow
def test_an_exported_evaluation_scores_what_pytorch_scores(exported, scenes):
    out, experiment, vocabulary, model = exported
    experiment = dataclasses.replace(experiment, data=dataclasses.replace(
        experiment.data, data_root=str(scenes), num_workers=0, eval_batch_size=8))
    reference = evaluate_model(model, experiment, vocabulary, "val", torch.device("cpu"), limit=12)
    outcome = evaluate_model(rt.ExportedSeqTR(out), experiment, vocabulary, "val", torch.device("cpu"), limit=12)
    assert outcome["ran_as"] == "openvino fp32"
    for ours, theirs in zip(outcome["records"], reference["records"]):
        assert {k: v for k, v in ours.items() if k.startswith("pred_")} == \
            {k: v for k, v in theirs.items() if k.startswith("pred_")}
    assert outcome["metrics"] == reference["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["synthetic_det"], indirect=True)
def test_int8_is_rechecked_in_float32_where_its_choices_were_near_ties(exported, scenes, monkeypatch):
    out, experiment, vocabulary, model = exported
    quantize_encoder(out, calibration_batches(out, scenes, "train", 8), "test scenes")
    assert read_manifest(out)["int8"]["images"] == 8
    images, pad_mask, ids = _batch(experiment, vocabulary)
    fp32 = rt.ExportedSeqTR(out, "openvino", "fp32").generate(images, pad_mask, ids)

    def garbled(network: rt.ExportedSeqTR) -> rt.ExportedSeqTR:
        """Its int8 encoder answers with the memory's values reversed: tokens surely unlike float32's."""
        run = network.encoder_int8.run
        network.encoder_int8.run = lambda inputs: {**(o := run(inputs)), "memory_values": -o["memory_values"]}
        return network

    # Every sample counts as a near-tie: each is generated again in float32 and takes float32's tokens.
    monkeypatch.setattr(rt, "RECHECK_MARGIN", float("inf"))
    everything = garbled(rt.ExportedSeqTR(out, "openvino", "int8"))
    again = everything.generate(images, pad_mask, ids)
    assert everything.name == "openvino int8+recheck"
    assert bool(again["rechecked"].all()) and (everything.tally.samples, everything.tally.rechecked) == (2, 2)
    assert torch.equal(again["box_tokens"], fp32["box_tokens"])
    # No sample is a near-tie: int8's own tokens, their smallest lead reported.
    monkeypatch.setattr(rt, "RECHECK_MARGIN", 0.0)
    nothing = garbled(rt.ExportedSeqTR(out, "openvino", "int8"))
    own = nothing.generate(images, pad_mask, ids)
    assert not bool(own["rechecked"].any()) and nothing.tally.rechecked == 0
    assert not torch.equal(own["box_tokens"], fp32["box_tokens"])  # what the recheck above replaced
    nothing.tally.float32_from = 0  # once given up, int8 no longer runs: float32's tokens, no recheck keys
    given_up = nothing.generate(images, pad_mask, ids)
    assert torch.equal(given_up["box_tokens"], fp32["box_tokens"]) and "rechecked" not in given_up
    assert nothing.name == "openvino fp32 (int8 given up)"


def test_auto_takes_int8_only_where_its_agreement_was_measured_high_enough():
    manifest = {"graphs": {"encoder": "e", "encoder_int8": "q"}, "config": {"data": {"max_objects": 0}}}
    assert rt.choose_precision(manifest, "auto", "openvino")[0] == "fp32"  # never measured
    manifest["agreement"] = {"openvino": {"equal_to_fp32": 0.985}, "onnxruntime": {"equal_to_fp32": 0.995}}
    assert rt.choose_precision(manifest, "auto", "openvino") == \
        ("fp32", "int8 + recheck kept 98.5% of float32's answers (< 99%)")
    assert rt.choose_precision(manifest, "auto", "onnxruntime")[0] == "int8"  # each runtime its own kernels
    manifest["agreement"]["openvino"] = {"equal_to_fp32": 0.995}
    assert rt.choose_precision(manifest, "auto", "openvino")[0] == "int8"
    manifest["agreement"]["openvino"]["recheck"] = {"samples": 20, "rechecked": 15, "float32_from": 16}
    assert "gave int8 up" in rt.choose_precision(manifest, "auto", "openvino")[1]  # agreement bought with float32
    assert rt.choose_precision(manifest, "fp32", "openvino")[0] == "fp32"
    manifest["config"]["data"]["max_objects"] = 3
    assert rt.choose_precision(manifest, "auto", "openvino")[0] == "fp32"
    with pytest.raises(ValueError, match="generalised"):
        rt.choose_precision(manifest, "int8", "openvino")
    with pytest.raises(ValueError, match="--calibration-data"):
        rt.choose_precision({"graphs": {"encoder": "e"}, "config": {}}, "int8", "openvino")


def test_a_missing_runtime_says_how_to_install_it(monkeypatch, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1}))
    monkeypatch.setattr(rt, "available_runtimes", lambda: ())
    with pytest.raises(rt.RuntimeMissing, match=r"pip install '\.\[deploy\]'"):
        rt.ExportedSeqTR(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m seqtr_lib export"):
        rt.ExportedSeqTR(tmp_path / "nothing")


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["synthetic_det"], indirect=True)
def test_export_then_predict_from_the_command_line_keeps_an_earlier_export(exported, scenes, tmp_path):
    out = exported[0]
    kept = [p for p in out.parent.iterdir() if p.name != out.name]
    assert len(kept) == 1 and (kept[0] / "manifest.json").read_text() == "an earlier export", kept
    image = sorted((scenes / "images").rglob("*.*"))[0]
    printed = run_cli("-m", "seqtr_lib", "predict", "--exported", str(out), "--image", str(image), "--expression",
                      "the red circle", "--out", str(tmp_path / "p.png"), "--runtime", "onnxruntime",
                      "--precision", "fp32").stdout
    assert "backend: onnxruntime fp32" in printed
    box = json.loads(printed.split("box (x1, y1, x2, y2):")[1].splitlines()[0])
    expected = Grounder.from_checkpoint(ROOT / "weights" / "synthetic_det.pt", execution="fp32").predict(
        str(image), "the red circle").box
    assert np.allclose(box, np.round(expected, 1))
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["synthetic_det"], indirect=True)
def test_cpu_agreement_compares_an_export_and_records_int8s_agreement_for_auto(exported, scenes, tmp_path):
    out = exported[0]
    quantize_encoder(out, calibration_batches(out, scenes, "train", 8), "test scenes")
    report_path = tmp_path / "agreement.json"
    run_cli("benchmarks/cpu_agreement.py", "--checkpoint", str(ROOT / "weights" / "synthetic_det.pt"), "--exported",
            str(out), "--data-root", str(scenes), "--limit", "8", "--threads", "1", "--executions", "",
            "--runtimes", "openvino", "--precisions", "fp32,int8", "--int8-margins", "0,1e9", "--record",
            "--out", str(report_path))
    report = json.loads(report_path.read_text())
    fp32, exported_fp32, exported_int8 = report["results"]
    assert [fp32["execution"], exported_fp32["execution"], exported_int8["execution"]] == \
        ["fp32", "exported openvino fp32", "exported openvino int8"]
    assert exported_fp32["equal_to_fp32"] == 1.0 and exported_fp32["metric_change_points"] == 0.0
    n = report["num_expressions"]
    assert exported_int8["recheck"]["samples"] == n  # the untimed warm-up call is not counted
    recorded = read_manifest(out)["agreement"]["openvino"]
    assert recorded["equal_to_fp32"] == exported_int8["equal_to_fp32"] and recorded["expressions"] == n
    (sweep,) = report["int8_margins"]
    nothing, everything = sweep["margins"]  # margin 0 rechecks no sample, a huge one every sample
    assert sweep["expressions"] >= 8 and nothing == {"margin": 0.0, "equal_to_fp32": sweep["equal_without_recheck"],
                                                     "rechecked": 0.0}
    assert everything == {"margin": 1e9, "equal_to_fp32": 1.0, "rechecked": 1.0}
    kept = recorded["equal_to_fp32"] >= rt.AGREEMENT_NEEDED and recorded["recheck"]["float32_from"] is None
    expected = "int8" if kept else "fp32"
    assert rt.ExportedSeqTR(out, "openvino", "auto").precision == expected


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["synthetic_mask"], indirect=True)
def test_evaluate_scores_an_export_as_it_scores_the_checkpoints_weights(exported, scenes, tmp_path):
    out = exported[0]
    common = ["--params", "params/synthetic_mask.yaml", "--set", f"data.data_root={scenes}", "--set",
              "data.num_workers=0", "--splits", "val", "--limit", "12"]
    run_cli("-m", "seqtr_lib", "evaluate", *common, "--set", f"output_dir={tmp_path / 'torch'}", "--checkpoint",
            str(ROOT / "weights" / "synthetic_mask.pt"), "--execution", "fp32")
    printed = run_cli("-m", "seqtr_lib", "evaluate", *common, "--set", f"output_dir={tmp_path / 'export'}",
                      "--exported", str(out), "--runtime", "onnxruntime", "--precision", "fp32").stdout
    assert "execution: onnxruntime fp32" in printed
    torch_run = json.loads((tmp_path / "torch" / "synthetic_mask" / "metrics.json").read_text())
    export_run = json.loads((tmp_path / "export" / "synthetic_mask" / "metrics.json").read_text())
    assert export_run["execution"] == "onnxruntime fp32" and list(export_run["splits"]["val"]) == ["ema"]
    assert export_run["splits"]["val"]["ema"] == torch_run["splits"]["val"]["ema"]
    assert export_run["splits"]["val"]["ema"]["num_expressions"] >= 12
    # Another runtime's scores of another split are not merged with these into one metrics.json.
    run_cli("-m", "seqtr_lib", "evaluate", *common[:-4], "--splits", "testB", "--set",
            f"output_dir={tmp_path / 'export'}", "--exported", str(out), "--runtime", "openvino", "--precision", "fp32")
    other = json.loads((tmp_path / "export" / "synthetic_mask" / "metrics.json").read_text())
    assert other["execution"] == "openvino fp32" and set(other["splits"]) == {"testB"}
    both = run_cli("-m", "seqtr_lib", "evaluate", *common, "--exported", str(out), "--checkpoint",
                   str(ROOT / "weights" / "synthetic_mask.pt"), check=False)
    assert both.returncode == 2 and "one of --checkpoint" in both.stderr
    a_file = run_cli("-m", "seqtr_lib", "evaluate", *common, "--exported", str(ROOT / "weights" / "synthetic_mask.pt"),
                     check=False)
    assert a_file.returncode == 2 and "no such folder" in a_file.stderr
