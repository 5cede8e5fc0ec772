"""Original SeqTR checkpoints: imported weights reproduce the original code's outputs; export, refusals."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_params
from seqtr_lib.checkpoint import CHECKPOINT_FORMAT
from seqtr_lib.cli import main
from seqtr_lib.config import load_params
from seqtr_lib.data.refer import load_vocabulary, original_vocabulary
from seqtr_lib.evaluation import load_trained
from seqtr_lib.model.seqtr import build_model, without_weight_files
from seqtr_lib.original import (OriginalCheckpointError, export_release, import_release, original_name,
                                read_release, to_ours)
from seqtr_lib.text import Vocabulary, load_token_to_ix
from seqtr_original_weights import stand_in_state_dict
from rounding import U32

FIXTURE = Path(__file__).parent / "data" / "seqtr_original"
KEYS = json.loads((FIXTURE / "keys.json").read_text())
TINY = ["model.darknet_width=0.125", "model.word_dim=8", "model.gru_hidden=8", "model.d_model=16",
        "model.num_heads=2", "model.num_encoder_layers=1", "model.num_decoder_layers=1", "model.ffn_dim=32",
        "model.num_bin=50", "model.num_ray=6"]


@pytest.fixture(scope="module")
def outputs():
    return torch.load(FIXTURE / "io.pt", weights_only=True)


@pytest.mark.parametrize("task, original_task", [("box", "det"), ("mask", "mask")])
def test_imported_weights_reproduce_the_original_codes_outputs(outputs, task, original_task):
    # The paper's sizes are the params defaults: DarkNet-53, GRU 512, d_model 256, 6 + 3 layers, 1000 bins.
    experiment = load_params(None, [f"model.task={task}", "model.num_ray=18"])
    model = build_model(without_weight_files(experiment.model), Vocabulary.from_list(KEYS["vocabulary"])).eval()
    model.load_state_dict(to_ours(stand_in_state_dict(KEYS[original_task]), model.state_dict(), "fixture"))
    expected = outputs[original_task]
    images, ids = outputs["images"].float(), outputs["expression_ids"]
    pad_mask = torch.zeros(2, 128, 128, dtype=torch.bool)
    targets = {"box_tokens" if task == "box" else "mask_tokens": expected["target_tokens"]}
    # The original's float32 outputs hold its kernels' rounding. As in test_departures' golden test, our model
    # in float64 is compared with them within four times what float32 rounding does to this very computation
    # here (|float32 - float64| now, plus u of the values): theirs and ours, with room for other orders.
    exact_model = copy.deepcopy(model).double()

    def agrees(ours: torch.Tensor, exact: torch.Tensor, theirs: torch.Tensor) -> None:
        rounding = float((ours.double() - exact).abs().max()) + U32 * float(theirs.abs().max())
        torch.testing.assert_close(exact, theirs.double(), atol=4 * rounding, rtol=0)

    with torch.no_grad():
        agrees(model.language(ids), exact_model.language(ids), expected["language"])
        agrees(model.encode(images, pad_mask, ids).features,
               exact_model.encode(images.double(), pad_mask, ids).features, expected["memory"])
        logits = model(images, pad_mask, ids, **targets)[f"{task}_logits"]
        agrees(logits, exact_model(images.double(), pad_mask, ids, **targets)[f"{task}_logits"], expected["logits"])
        generated = model.generate(images, pad_mask, ids)[f"{task}_tokens"]
    original = expected["generated"][:, : generated.shape[1]]  # mask: the original decodes 2N + 1 steps
    for ours, theirs in zip(generated, original):
        ends = (theirs == model.layout.eos).nonzero()
        length = int(ends[0]) if len(ends) else len(theirs)
        assert torch.equal(ours[:length], theirs[:length])


def test_every_original_tensor_is_used_once_and_attention_is_split_in_three():
    experiment = load_params(None, ["model.task=mask", "model.num_ray=18"])
    model = build_model(without_weight_files(experiment.model), Vocabulary.from_list(KEYS["vocabulary"]))
    names = [original_name(key) for key in model.state_dict()]
    assert {name for name, _ in names} == {key for key, *_ in KEYS["mask"]}
    packed = [name for name, block in names if block is not None]
    assert len(packed) == 3 * 2 * (6 + 3 + 3)  # weight and bias of 12 attentions, three blocks each
    assert len(model.state_dict()) == len(KEYS["mask"]) + len(packed) - len(packed) // 3


def _tiny(tmp_path: Path, task: str = "box", *extra: str):
    experiment = load_params(None, [f"model.task={task}", *TINY, f"output_dir={tmp_path / 'out'}", *extra])
    vocabulary = Vocabulary.build(["the red circle", "a big blue square"])
    torch.manual_seed(0)
    model = build_model(without_weight_files(experiment.model), vocabulary)
    return experiment, vocabulary, model


def _release(tmp_path: Path, model, vocabulary, *, ddp: bool, ema: bool, name: str = "det_best.pth") -> Path:
    """An original-format release of ``model``, with the trainer's other entries."""
    ours = {"format": CHECKPOINT_FORMAT, "vocabulary": vocabulary.to_list(), "epoch": 59, "model": model.state_dict()}
    plain = tmp_path / "plain.pth"
    export_release(ours, plain)
    state = torch.load(plain, weights_only=True)["state_dict"]
    if ddp:
        state = {f"module.{key}": tensor for key, tensor in state.items()}
    release = {"state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
               "scheduler": {"base_lrs": [5e-4], "last_epoch": 59, "lr_lambdas": [None]}, "lr": 5e-6, "epoch": 59,
               "d_acc": 81.2, "miou": 0.0, "best_d_acc": 81.2, "best_miou": 0.0, "amp": False}
    if ema:
        release["ema_state_dict"] = {key: tensor * 0.5 if tensor.is_floating_point() else tensor
                                     for key, tensor in state.items()}
    path = tmp_path / name
    torch.save(release, path)
    return path


def test_importing_again_to_the_same_file_moves_the_earlier_import_aside(tmp_path):
    experiment, vocabulary, model = _tiny(tmp_path)
    release = _release(tmp_path, model, vocabulary, ddp=False, ema=False)
    out = import_release(release, experiment, vocabulary, tmp_path / "imported.pt")
    earlier = out.read_bytes()
    import_release(_release(tmp_path, model, vocabulary, ddp=False, ema=True), experiment, vocabulary, out)
    (aside,) = tmp_path.glob("imported.*.pt")
    assert aside.read_bytes() == earlier
    assert "ema" in torch.load(out, weights_only=True) and "ema" not in torch.load(aside, weights_only=True)


@pytest.mark.parametrize("ddp, ema", [(False, False), (True, True)])
def test_a_release_file_imports_into_a_checkpoint_the_package_opens(tmp_path, ddp, ema):
    experiment, vocabulary, model = _tiny(tmp_path)
    path = _release(tmp_path, model, vocabulary, ddp=ddp, ema=ema)
    out = import_release(path, experiment, vocabulary, tmp_path / "imported.pt")
    _, loaded_vocabulary, models = load_trained(out)
    assert loaded_vocabulary == vocabulary
    assert set(models) == ({"raw", "ema"} if ema else {"raw"})
    for key, tensor in model.state_dict().items():
        assert torch.equal(models["raw"].state_dict()[key], tensor), key
        if ema and tensor.is_floating_point():
            assert torch.equal(models["ema"].state_dict()[key], tensor * 0.5), key


def test_import_export_import_is_the_identity(tmp_path):
    experiment, vocabulary, model = _tiny(tmp_path, "mask")
    first = torch.load(import_release(_release(tmp_path, model, vocabulary, ddp=True, ema=True), experiment,
                                      vocabulary, tmp_path / "first.pt"), weights_only=True)
    export_release(first, tmp_path / "again" / "mask_best.pth")
    assert load_token_to_ix(tmp_path / "again" / "token_to_ix.pkl") == vocabulary
    second = torch.load(import_release(tmp_path / "again" / "mask_best.pth", experiment, vocabulary,
                                       tmp_path / "second.pt"), weights_only=True)
    for part in ("model", "ema"):
        assert first[part].keys() == second[part].keys()
        for key, tensor in first[part].items():
            assert torch.equal(second[part][key], tensor), (part, key)


def test_the_cli_imports_a_release_that_evaluate_and_the_grounder_open(tmp_path, tiny_data_root):
    from seqtr_lib import evaluation
    from seqtr_lib.predict import Grounder

    params = write_params(tmp_path / "params.yaml", tiny_data_root, tmp_path / "out")
    experiment = load_params(params)
    vocabulary = load_vocabulary(experiment)
    torch.manual_seed(0)
    model = build_model(without_weight_files(experiment.model), vocabulary)
    path = _release(tmp_path, model, vocabulary, ddp=True, ema=False)  # token_to_ix.pkl beside it
    main(["import-seqtr", "--checkpoint", str(path), "--params", str(params),
          "--token-to-ix", str(tmp_path / "token_to_ix.pkl")])
    out = experiment.run_dir / "seqtr_release.pt"
    metrics = evaluation.evaluate(experiment, out, splits=("val",))["splits"]["val"]["raw"]
    assert metrics["num_expressions"] > 0 and 0 <= metrics["acc@0.5"] <= 100
    image = next((tiny_data_root / "images" / "synthetic").glob("*.jpg"))
    assert Grounder.from_checkpoint(out, device="cpu").predict(image, "the red circle").box.shape == (4,)


def test_other_architectures_are_refused_naming_the_key_and_both_shapes(tmp_path):
    experiment, vocabulary, model = _tiny(tmp_path, "box")
    path = _release(tmp_path, model, vocabulary, ddp=False, ema=False)
    mask_experiment, _, _ = _tiny(tmp_path, "mask")
    with pytest.raises(OriginalCheckpointError, match=r"seq_positional_encoding.embedding.weight has shape \(5, 16\), "
                                                      r"but the params need \(13, 16\)"):
        import_release(path, mask_experiment, vocabulary, tmp_path / "x.pt")
    more_bins, _, _ = _tiny(tmp_path, "box", "model.num_bin=100")
    with pytest.raises(OriginalCheckpointError, match=r"query_embedding.weight has shape \(51, 16\), but the params "
                                                      r"need \(101, 16\)"):
        import_release(path, more_bins, vocabulary, tmp_path / "x.pt")
    other_words = Vocabulary.build(["the red circle"])
    with pytest.raises(OriginalCheckpointError, match=rf"word embedding has {len(vocabulary)} rows, but the "
                                                      rf"vocabulary has {len(other_words)} words"):
        import_release(path, experiment, other_words, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_unreadable_files_are_refused_naming_the_file(tmp_path):
    experiment, vocabulary, model = _tiny(tmp_path)
    path = _release(tmp_path, model, vocabulary, ddp=False, ema=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OriginalCheckpointError, match=r"truncated.pth is not a readable PyTorch checkpoint"):
        read_release(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(OriginalCheckpointError, match=r"notes.pth is not a readable PyTorch checkpoint"):
        read_release(text)
    code = tmp_path / "code.pth"
    torch.save({"state_dict": {}, "arguments": argparse.Namespace(run="anything")}, code)
    with pytest.raises(OriginalCheckpointError, match=r"code.pth: refused: it holds pickled objects"):
        read_release(code)
    with pytest.raises(SystemExit) as exit_info:  # the CLI: one line, exit status 2
        main(["import-seqtr", "--checkpoint", str(truncated), "--params", "params/synthetic_det.yaml",
              "--token-to-ix", str(tmp_path / "token_to_ix.pkl")])  # written by _release
    assert exit_info.value.code == 2


def test_a_model_with_from_scratch_departures_cannot_be_exported(tmp_path):
    _, vocabulary, model = _tiny(tmp_path, "box", "model.memory_stride=16", "model.target_cell_loss=1.0")
    with pytest.raises(OriginalCheckpointError, match=r"cell_scorer.weight: the original SeqTR has no such parameter"):
        export_release({"vocabulary": vocabulary.to_list(), "model": model.state_dict()}, tmp_path / "x.pth")


def _annotations(tmp_path: Path) -> Path:
    document = {"train": [{"expressions": ["the red ball", "a big dog"]}],
                "val": [{"expressions": ["the zebra", "the red dog"]}],
                "testA": [{"expressions": ["a small cat"]}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    return path


def test_the_original_vocabulary_holds_every_split_in_the_files_order(tmp_path):
    document = json.loads(_annotations(tmp_path).read_text())
    assert original_vocabulary(document).to_list() == ["<pad>", "<unk>", "<cls>", "the", "red", "ball", "a", "big",
                                                       "dog", "zebra", "small", "cat"]


@pytest.mark.parametrize("vectors, frozen, zebra_known", [("glove.840B.300d.txt", True, True),
                                                          ("random", False, False)])
def test_frozen_pretrained_vectors_keep_words_seen_only_in_val(tmp_path, vectors, frozen, zebra_known):
    experiment = load_params(None, [])
    experiment = dataclasses.replace(
        experiment, model=dataclasses.replace(experiment.model, word_vectors=vectors, freeze_word_vectors=frozen),
        data=dataclasses.replace(experiment.data, annotation_file=str(_annotations(tmp_path))))
    vocabulary = load_vocabulary(experiment)
    assert ("zebra" in vocabulary) is zebra_known
    ids = vocabulary.encode("the zebra", 4)
    assert (int(ids[1]) != 1) is zebra_known  # 1 = UNK
    assert "cat" in vocabulary if zebra_known else "cat" not in vocabulary
    with (tmp_path / "t.pkl").open("wb") as file:  # the same order as the original's token_to_ix
        pickle.dump({"PAD": 0, "UNK": 1, "CLS": 2, **{w: i for i, w in enumerate(vocabulary.to_list()[3:], 3)}}, file)
    assert load_token_to_ix(tmp_path / "t.pkl") == vocabulary
    np.testing.assert_array_equal(ids, vocabulary.encode("the zebra", 4))


def test_a_release_and_its_pickle_alone_import_predict_and_ground(tmp_path):
    # A user with only det_best.pth and token_to_ix.pkl (no GloVe, no DarkNet file, no dataset) in a folder:
    # the paper's params name data/weights/darknet.weights and GloVe, which a release's tensors make irrelevant.
    import subprocess
    import sys

    import cv2

    from conftest import ROOT, cli_env
    from seqtr_lib.predict import Grounder

    folder = tmp_path / "only_the_release"
    folder.mkdir()
    params = ROOT / "params" / "refcoco-unc_det.yaml"
    sizes = [*TINY, "model.word_dim=8"]  # the paper's architecture at a test's size; files as the params name them
    experiment = load_params(params, sizes, start_files=False)
    assert experiment.model.darknet_weights and experiment.model.word_vectors.endswith(".txt")
    vocabulary = Vocabulary.build(["the red circle on the left", "a big blue square"])
    torch.manual_seed(0)
    model = build_model(without_weight_files(experiment.model), vocabulary)
    _release(folder, model, vocabulary, ddp=True, ema=True)
    (folder / "plain.pth").unlink()  # the helper's intermediate file
    assert sorted(p.name for p in folder.iterdir()) == ["det_best.pth", "token_to_ix.pkl"]

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "seqtr_lib", *args], cwd=folder, env=cli_env(),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    cli("import-seqtr", "--checkpoint", "det_best.pth", "--params", str(params),
        *(f"--set={item}" for item in sizes), "--token-to-ix", "token_to_ix.pkl", "--out", "imported.pt")
    image = np.zeros((96, 128, 3), np.uint8)
    cv2.circle(image, (30, 40), 12, (0, 0, 255), -1)
    cv2.imwrite(str(folder / "image.jpg"), image)
    printed = cli("predict", "--checkpoint", "imported.pt", "--image", "image.jpg", "--expression",
                  "the red circle on the left", "--out", "overlay.png")
    assert (folder / "overlay.png").is_file()  # what it shows: tests/test_viz.py, with the released weights
    grounder = Grounder.from_checkpoint(folder / "imported.pt", device="cpu")
    box = grounder.predict(folder / "image.jpg", "the red circle on the left").box
    assert box.shape == (4,) and np.all((box >= 0) & (box <= 128))
    # The command prints the Grounder's box, to 0.1 px.
    printed_box = json.loads(re.search(r"box \(x1, y1, x2, y2\): (\[.*\])", printed).group(1))
    np.testing.assert_allclose(printed_box, box, atol=0.05 + 1e-4)
    # The imported weights are the release's: the Grounder's raw model holds the model's tensors.
    _, _, models = load_trained(folder / "imported.pt")
    for key, tensor in model.state_dict().items():
        assert torch.equal(models["raw"].state_dict()[key], tensor), key


def test_commands_that_read_a_checkpoint_skip_only_the_start_files(tmp_path):
    from seqtr_lib.config import ConfigError
    from seqtr_lib.notebook import load_experiment

    params = Path(__file__).resolve().parent.parent / "params" / "refcoco-unc_det.yaml"
    with pytest.raises(ConfigError, match="model.darknet_weights"):
        load_params(params)  # a new model starts from these files: training still needs them
    # What notebooks 02-04 and evaluate/predict/import-seqtr load: the files a checkpoint replaces are not read.
    experiment = load_experiment(str(params), start_files=False)
    assert experiment.model.darknet_weights == "data/weights/darknet.weights"
    # Every other file check stays.
    with pytest.raises(ConfigError, match="data.annotation_file"):
        load_params(params, [f"data.annotation_file={tmp_path / 'missing.json'}"], start_files=False)
