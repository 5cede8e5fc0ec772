"""A model that answers zero, one or several objects (issue 36, step 3): its vocabulary and decoder length,
teacher forcing over the answer, the criterion's answer term, greedy decoding to EOS, and what refuses it."""

from __future__ import annotations

import dataclasses
import datetime
import math

import numpy as np
import pytest
import torch
from torch import nn

from seqtr_lib.codec import SequenceCodec, TokenLayout
from seqtr_lib.config import ModelConfig
from seqtr_lib.loss import NEG_FACTOR, Criterion, LossWeights
from seqtr_lib.model.decoding import generate_from_memory
from seqtr_lib.model.seqtr import build_model
from seqtr_lib.text import Vocabulary
from tests.conftest import TINY_MODEL

NUM_BIN = 16
VOCABULARY = Vocabulary.build(["all the red shapes", "the green star"])


def tiny_model(task: str = "box", max_objects: int = 3, max_points: int = 4) -> nn.Module:
    config = ModelConfig(**{**TINY_MODEL, "task": task, "num_bin": NUM_BIN, "num_ray": max_points or 6})
    return build_model(config, VOCABULARY, max_objects=max_objects, max_points=max_points).double().eval()


def inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.rand(batch, 3, 64, 64, dtype=torch.float64) * 255
    ids = torch.from_numpy(VOCABULARY.encode("all the red shapes", 6))[None].repeat(batch, 1)
    return images, torch.zeros(batch, 64, 64, dtype=torch.bool), ids


def test_a_generalised_model_has_the_separator_and_a_position_per_answer_token():
    boxes, contours, paper = tiny_model("box", 3, 0), tiny_model("mask", 2, 4), tiny_model("box", 0, 0)
    # V = num_bin + 2 (coordinates, EOS, separator) against the paper's num_bin + 1
    assert boxes.token_embedding.num_embeddings == boxes.predictor[-1].out_features == NUM_BIN + 2
    assert contours.predictor[-1].out_features == NUM_BIN + 2
    assert paper.predictor[-1].out_features == NUM_BIN + 1
    # the longest answers: 3 boxes of 4 tokens + EOS; 2 contours of 4 points (8 tokens), 1 separator, EOS
    assert boxes.decoder.max_length == 13 and contours.decoder.max_length == 18 and paper.decoder.max_length == 5


def test_teacher_forcing_feeds_the_answer_shifted_right():
    """The logits at position t may depend on answer tokens before t only: changing token k changes the
    logits after k and none at or before it (unshifted inputs would change position k itself)."""
    model = tiny_model("box", 3, 0)
    images, pad_mask, ids = inputs()
    answer = torch.tensor([[3, 4, 9, 10, 1, 2, 5, 6, NUM_BIN], [NUM_BIN] * 9])
    changed = answer.clone()
    changed[0, 5] = 11
    with torch.no_grad():
        before = model(images, pad_mask, ids, answer_tokens=answer)["answer_logits"]
        after = model(images, pad_mask, ids, answer_tokens=changed)["answer_logits"]
    assert before.shape == (2, 9, NUM_BIN + 2)
    assert torch.equal(before[0, :6], after[0, :6])  # positions 0..5 read tokens 0..4
    assert not torch.allclose(before[0, 6], after[0, 6])
    assert torch.equal(before[1], after[1])
    with pytest.raises(ValueError, match="answer_tokens"):
        model(images, pad_mask, ids, box_tokens=answer[:, :4])


def smoothed_loss(logits: torch.Tensor, target: int) -> float:
    """One token's label-smoothed cross-entropy written out: 1 - NEG_FACTOR on the target, NEG_FACTOR / V on
    each other class."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    classes = len(logits)
    return -sum(((1 - NEG_FACTOR) if c == target else NEG_FACTOR / classes) * float(log_probs[c])
                for c in range(classes))


def test_the_answer_term_weighs_each_token_and_ignores_the_padding():
    layout = TokenLayout("mask", NUM_BIN, 4, max_objects=2, max_points=4)
    eos, sep = layout.eos, layout.separator
    # two contours of 3 points with a separator; an answer of no object, padded with EOS
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, sep, 7, 8, 9, 10, 11, 12, eos], [eos] * 14])
    weights = torch.zeros(2, 14)
    weights[0] = 1.0
    weights[1, 0] = 1.0
    logits = torch.randn(2, 14, layout.vocab_size, generator=torch.Generator().manual_seed(1))
    criterion = Criterion(layout, LossWeights(separator=2.0))
    losses = criterion({"answer_logits": logits}, {"answer_tokens": tokens, "answer_weights": weights})
    # by hand: the separator counts twice, the EOS once (not mask_eos: it says how many objects), padding
    # not at all; divided by the 15 real tokens
    total = sum((2.0 if tokens[0, t] == sep else 1.0) * smoothed_loss(logits[0, t], int(tokens[0, t]))
                for t in range(14)) + smoothed_loss(logits[1, 0], eos)
    assert set(losses) == {"loss_answer", "loss"}
    assert float(losses["loss_answer"]) == pytest.approx(total / 15, rel=1e-6)  # float32 sums of 15 terms


def test_the_answer_term_weighs_every_box_x1():
    layout = TokenLayout("box", NUM_BIN, 3, max_objects=2)
    eos = layout.eos
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, eos]])
    logits = torch.zeros(1, 9, layout.vocab_size)
    # uniform: every token costs log V (1 - NEG_FACTOR + NEG_FACTOR (V - 1) / V) = log V (1 - NEG_FACTOR / V)
    uniform = math.log(layout.vocab_size) * (1 - NEG_FACTOR / layout.vocab_size)
    losses = Criterion(layout)({"answer_logits": logits}, {"answer_tokens": tokens,
                                                           "answer_weights": torch.ones(1, 9)})
    # x1 of both boxes weighs 1.5 (box_x1), the other 6 coordinates and the EOS 1: (2 * 1.5 + 7) / 9 tokens
    assert float(losses["loss_answer"]) == pytest.approx((2 * 1.5 + 7) / 9 * uniform, rel=1e-6)


class ScriptedPredictor(nn.Module):
    """A predictor that ignores the decoder and emits a script: at its n-th call, row b's logits are 10 on
    ``script[b][n]`` (or EOS past the script's end) and 0 elsewhere."""

    def __init__(self, script: list[list[int]], vocab_size: int, eos: int) -> None:
        super().__init__()
        self.script, self.vocab_size, self.eos, self.calls = script, vocab_size, eos, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(hidden.shape[0], self.vocab_size, dtype=hidden.dtype)
        for row, tokens in enumerate(self.script):
            logits[row, tokens[self.calls] if self.calls < len(tokens) else self.eos] = 10.0
        self.calls += 1
        return logits


def scripted_answers(model: nn.Module, script: list[list[int]]) -> dict[str, torch.Tensor]:
    model.predictor = ScriptedPredictor(script, model.layout.vocab_size, model.layout.eos)
    images, pad_mask, ids = inputs(len(script))
    return model.generate(images, pad_mask, ids)


def test_greedy_decoding_returns_the_emitted_boxes_and_nothing_for_eos_first():
    model = tiny_model("box", 3, 0)
    eos = model.layout.eos
    script = [[2, 3, 6, 8, 10, 1, 14, 5, eos], [eos, 4, 4, 5, 5]]
    generated = scripted_answers(model, script)
    tokens = generated["answer_tokens"]
    assert tokens.shape == (2, 13)
    assert tokens[0].tolist() == [2, 3, 6, 8, 10, 1, 14, 5] + [eos] * 5
    assert tokens[1].tolist() == [eos] * 13  # no target: EOS first, and EOS after it
    assert (generated["answer_scores"][1, 1:] == 0).all()
    codec = SequenceCodec(model.layout, "absolute", image_size=64)  # 4 pixels per bin, lower edges
    boxes = codec.decode_boxes(tokens[0], (64, 64), 3)
    assert boxes.tolist() == [[8, 12, 24, 32], [40, 4, 56, 20]]
    assert codec.decode_boxes(tokens[1], (64, 64), 3).shape == (0, 4)


def test_a_box_is_never_cut_short_and_the_cap_ends_the_answer():
    model = tiny_model("box", 2, 0)
    eos, sep = model.layout.eos, model.layout.separator
    # EOS scripted inside a box and a separator: neither allowed there, so the first allowed id (0) wins;
    # the third box would pass the cap of 2 boxes: EOS is the only id at the last position
    script = [[5, 6, eos, sep, 1, 2, 3, 4, 7, 7, 7, 7]]
    tokens = scripted_answers(model, script)["answer_tokens"][0].tolist()
    assert tokens == [5, 6, 0, 0, 1, 2, 3, 4, eos]


def test_greedy_decoding_returns_the_emitted_contours():
    model = tiny_model("mask", 2, 4)
    eos, sep = model.layout.eos, model.layout.separator
    first, second = [1, 1, 5, 1, 5, 5, 1, 5], [9, 9, 12, 9, 12, 12]  # 4 points, then 3
    generated = scripted_answers(model, [first + [sep] + second + [eos], [eos]])
    tokens = generated["answer_tokens"]
    assert tokens[0].tolist() == first + [sep] + second + [eos] * 3  # the cap: 2 * (2 * 4 + 1) = 18
    contours = SequenceCodec(model.layout, "absolute", image_size=64).decode_contours(tokens[0], (64, 64), 2, 4)
    assert [c.tolist() for c in contours] == [[[4, 4], [20, 4], [20, 20], [4, 20]], [[36, 36], [48, 36], [48, 48]]]
    assert tokens[1].tolist() == [eos] * 18


def test_a_contour_ends_only_whole():
    """Refused ids lose to the first allowed one with the scripted logits gone: id 0, or EOS (16) before the
    separator (17) when no coordinate is allowed."""
    model = tiny_model("mask", 2, 4)
    eos, sep = model.layout.eos, model.layout.separator
    script = [
        # EOS after 2 points and a separator after 5 coordinates refused (0, 0); no 5th point (max_points 4)
        [1, 2, 3, 4, eos, sep, 5, 6, 7],
        # a second separator would start a third contour (max_objects 2): refused (0); then no 5th point
        [1, 2, 3, 4, 5, 6, sep, 1, 1, 2, 2, 3, 3, sep, 9, 4],
    ]
    tokens = scripted_answers(model, script)["answer_tokens"].tolist()
    assert tokens[0] == [1, 2, 3, 4, 0, 0, 5, 6] + [eos] * 10
    assert tokens[1] == [1, 2, 3, 4, 5, 6, sep, 1, 1, 2, 2, 3, 3, 0, 9] + [eos] * 3


def test_the_graph_decoder_and_bf16_refuse_a_generalised_model():
    from seqtr_lib.execution import ExecutionError, pick_execution, resolve
    from seqtr_lib.model.graph_decoding import GraphDecoder

    model = tiny_model("box", 3, 0)
    with pytest.raises(ValueError, match="generalised"):
        GraphDecoder(model)
    big = ModelConfig(task="box", darknet_width=1.0)
    flags = {"avx512_bf16", "amx_bf16"}
    assert pick_execution("cpu", big, 640, flags=flags, environ={}, torch_supports=True).bf16  # the paper's model
    chosen = pick_execution("cpu", big, 640, flags=flags, environ={}, torch_supports=True, generalised=True)
    assert not chosen.bf16 and "generalised" in chosen.reason
    with pytest.raises(ExecutionError, match="generalised"):
        resolve("channels_last+bf16", "cpu", big, 640, generalised=True)


@pytest.fixture(scope="module")
def gref_root(tmp_path_factory):
    """40 generalised synthetic scenes of 64 px, with the gref params' shares (make-synthetic's flags)."""
    from seqtr_lib.cli import main

    root = tmp_path_factory.mktemp("gref")
    main(["make-synthetic", "--out", str(root), "--num-images", "40", "--image-size", "64", "--workers", "1",
          "--multi-target", "0.3", "--no-target", "0.15", "--split-objects", "0.2"])
    return root


def gref_overrides(root, out, tiny: bool = True) -> list[str]:
    """The gref params on the small set: 64 px, no workers, the tiny model (or the params')."""
    model = [f"model.{key}={value}" for key, value in TINY_MODEL.items() if key != "num_ray"] if tiny else []
    return [f"data.data_root={root}", f"output_dir={out}", "data.image_size=64", "data.num_workers=0",
            "data.batch_size=8", "data.eval_batch_size=16", "train.val_limit=16", *model]


@pytest.mark.parametrize("task", ["det", "mask"])
def test_the_loss_falls_on_a_fixed_batch(gref_root, tmp_path, task):
    from seqtr_lib import distributed, engine
    from seqtr_lib.config import load_params
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset

    # The params' model at a constant learning rate (no warm-up), its teacher-forced inputs as they are (no
    # input_token_noise, which makes a mask's batch harder to fit, on purpose)
    experiment = load_params(f"params/synthetic_gref_{task}.yaml", gref_overrides(gref_root, tmp_path, tiny=False)
                             + ["train.warmup_epochs=0", "train.lr=3e-3", "model.input_token_noise=0"])
    trainer = engine.Trainer(experiment, distributed.Context(0, 1, 0, torch.device("cpu")))
    dataset = build_dataset(experiment, "train", trainer.vocabulary, training=True)
    batch = next(iter(build_loader(dataset, experiment, training=True, seed=0, epoch=0)))
    assert batch["no_target"].any() and (batch["answer_weights"].sum(1) > 5).any()  # no target and several
    trainer.model.train()
    answer_losses = [float(trainer.step(batch)["loss_answer"].detach()) for _ in range(30)]
    # 30 Adam steps on one batch: well below the start (a model that cannot fit its batch does not halve it)
    assert answer_losses[-1] < 0.5 * answer_losses[0]


def test_train_evaluate_and_predict_on_the_gref_params(gref_root, tmp_path, capsys):
    import json

    from seqtr_lib.cli import main
    from seqtr_lib.generalised_metrics import grec_f1

    overrides = [arg for value in gref_overrides(gref_root, tmp_path) + ["train.epochs=1",
                                                                         "train.max_steps_per_epoch=3"]
                 for arg in ("--set", value)]
    main(["train", "--params", "params/synthetic_gref_det.yaml", *overrides])
    run = tmp_path / "synthetic_gref_det"
    main(["evaluate", "--params", "params/synthetic_gref_det.yaml", "--checkpoint", str(run / "best.pt"),
          "--splits", "val", *overrides])
    metrics = json.loads((run / "metrics.json").read_text())["splits"]["val"]["ema"]
    records = json.loads((run / "predictions" / "val_ema.json").read_text())
    assert metrics["num_expressions"] == len(records) > 0
    counts = [len(r["gt_boxes"]) for r in records]
    for prefix, present in (("", True), ("no_target/", 0 in counts), ("one_target/", 1 in counts),
                            ("several_targets/", any(c >= 2 for c in counts))):
        assert ("precision" in {k.removeprefix(prefix) for k in metrics if k.startswith(prefix)}) == present
    assert {"precision", "n_acc", "t_acc"} <= set(metrics)
    assert all(0 <= value <= 100 for key, value in metrics.items() if "/" in key or key in ("precision", "n_acc",
                                                                                             "t_acc"))
    # by hand, from each record's boxes: a no-target record is right answered empty; else F1 at IoU >= 0.5
    assert metrics["precision"] == pytest.approx(100 * np.mean([f1_by_hand(r) == 1 for r in records]), abs=1e-9)
    no_target = [r for r in records if r["no_target"]]
    if no_target:
        assert metrics["n_acc"] == pytest.approx(100 * np.mean([not r["pred_boxes"] for r in no_target]))
    for record in records[:2]:
        assert record["f1"] == pytest.approx(f1_by_hand(record))
        assert record["f1"] == pytest.approx(grec_f1(record["pred_boxes"], record["gt_boxes"]))
    # What notebooks 01 and 05 draw and tabulate of the run: its generalised headline, not a classic metric
    from seqtr_lib import compare, viz
    from seqtr_lib.config import load_params
    from seqtr_lib.metrics import headline_metrics
    from seqtr_lib.reports import read_log

    experiment = load_params("params/synthetic_gref_det.yaml", gref_overrides(gref_root, tmp_path))
    assert experiment.generalised
    figure = viz.training_curves(read_log(run), headline_metrics(experiment.model.task, experiment.generalised))
    assert figure.axes[2].get_legend_handles_labels()[1] == ["raw precision", "ema precision"]
    (row,) = compare.table_rows(compare.collect_runs(run.name, root=tmp_path))
    assert row["val precision ema"] == metrics["precision"]
    image = next((gref_root / "images").rglob("*.jpg"))
    capsys.readouterr()
    main(["predict", "--checkpoint", str(run / "best.pt"), "--image", str(image), "--expression",
          "all the red shapes", "--out", str(tmp_path / "answer.png")])
    printed = capsys.readouterr().out
    assert "box(es)" in printed or "no matching object" in printed
    assert (tmp_path / "answer.png").is_file()


def f1_by_hand(record: dict) -> float:
    """GREC's per-sample F1, written out: greedy one-to-one matches at IoU >= 0.5."""
    pred, gt = record["pred_boxes"], record["gt_boxes"]
    if not gt:
        return float(not pred)

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    pairs = sorted(((iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gt)), reverse=True)
    used_p, used_g, matches = set(), set(), 0
    for value, i, j in pairs:
        if value >= 0.5 and i not in used_p and j not in used_g:
            used_p.add(i), used_g.add(j)
            matches += 1
    return 2 * matches / (len(pred) + len(gt))


def test_generalised_metrics_of_hand_made_samples():
    from seqtr_lib.evaluation import generalised_metrics_from_records
    from seqtr_lib.sequence import mask_to_rle

    boxes = [{"gt_boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "no_target": False,
              "pred_boxes": [[0, 0, 10, 10]]},  # one of two found: F1 = 2 / 3
             {"gt_boxes": [], "no_target": True, "pred_boxes": []},  # nothing, rightly: F1 = 1
             {"gt_boxes": [], "no_target": True, "pred_boxes": [[1, 1, 5, 5]]}]  # a box for nothing: F1 = 0
    metrics = generalised_metrics_from_records(boxes, "box")
    assert metrics == pytest.approx({"precision": 100 / 3, "n_acc": 50.0, "t_acc": 100.0,
                                     "no_target/precision": 50.0, "no_target/n_acc": 50.0,
                                     "several_targets/precision": 0.0, "several_targets/t_acc": 100.0})
    assert [r["f1"] for r in boxes] == pytest.approx([2 / 3, 1.0, 0.0])

    def rle(x0, y0, x1, y1):
        mask = np.zeros((20, 20), np.uint8)
        mask[y0:y1, x0:x1] = 1
        return mask_to_rle(mask)

    masks = [{"gt_boxes": [[0, 0, 10, 10]], "no_target": False, "gt_rle": rle(0, 0, 10, 10),
              "pred_polygons": [[0, 0, 10, 0, 10, 5]], "pred_rle": rle(0, 0, 10, 5)},  # I 50, U 100
             {"gt_boxes": [], "no_target": True, "gt_rle": rle(0, 0, 0, 0),
              "pred_polygons": [[0, 0, 4, 0, 4, 5]], "pred_rle": rle(0, 0, 4, 5)},  # an answer of area 20: IoU 0
             {"gt_boxes": [[10, 10, 20, 20]], "no_target": False, "gt_rle": rle(10, 10, 20, 20),
              "pred_polygons": [], "pred_rle": rle(0, 0, 0, 0)}]  # no answer for an object of area 100: IoU 0
    metrics = generalised_metrics_from_records(masks, "mask")
    assert metrics["giou"] == pytest.approx(50 / 3) and metrics["ciou"] == pytest.approx(100 * 50 / 220)
    assert metrics["n_acc"] == 0.0 and metrics["t_acc"] == 50.0
    assert metrics["one_target/giou"] == pytest.approx(25.0) and metrics["no_target/giou"] == 0.0
    assert [r["mask_iou"] for r in masks] == pytest.approx([0.5, 0.0, 0.0])


def test_an_answer_decodes_to_the_original_image():
    """A 160 x 120 image shown at half size (scale 0.5), padded to 64 x 64 tokens of 4 pixels (lower edges)."""
    meta = {"scale_factor": (0.5, 0.5), "pad_shape": (64, 64), "ori_shape": (120, 160)}
    layout = TokenLayout("box", NUM_BIN, 3, max_objects=2)
    answer = np.array([[2, 3, 6, 8, 10, 1, 15, 5, layout.eos]])  # x2 = 15 bins: 60 px, 120 in the original
    decoded = SequenceCodec(layout).decode_answer({"answer_tokens": answer}, 0, meta)
    assert decoded == {"pred_boxes": [[16, 24, 48, 64], [80, 8, 120, 40]]}
    layout = TokenLayout("mask", NUM_BIN, 4, max_objects=2, max_points=4)
    answer = np.array([[1, 1, 5, 1, 5, 5, layout.separator, 9, 9, 12, 9, 12, 12, layout.eos]])
    decoded = SequenceCodec(layout).decode_answer({"answer_tokens": answer}, 0, meta)
    assert decoded["pred_polygons"] == [[8, 8, 40, 8, 40, 40], [72, 72, 96, 72, 96, 96]]
    assert decoded["pred_rle"]["size"] == [120, 160]
    empty = SequenceCodec(layout).decode_answer({"answer_tokens": np.array([[layout.eos] * 3])}, 0, meta)
    assert empty["pred_polygons"] == [] and empty["pred_rle"]["size"] == [120, 160]


def scripted_grounder(task: str):
    """A Grounder around `tiny_model` at 64 px whose predictor the caller scripts (`ScriptedPredictor`)."""
    from seqtr_lib.config import load_params
    from seqtr_lib.predict import Grounder

    params = "params/synthetic_gref_det.yaml" if task == "box" else "params/synthetic_gref_mask.yaml"
    experiment = load_params(params, ["data.image_size=64", f"model.num_bin={NUM_BIN}", "model.num_ray=4",
                                      "data.max_objects=2", *(["data.max_points=4"] if task == "mask" else []),
                                      "model.decode_bin_centres=false", "model.outline_offset=0"], start_files=False)
    model = tiny_model(task, 2, 4 if task == "mask" else 0).float()
    return Grounder(model, experiment, VOCABULARY, torch.device("cpu"), execution="fp32")


@pytest.mark.parametrize("task", ["box", "mask"])
def test_the_grounder_answers_a_list_of_objects(tmp_path, task):
    """A 128 x 96 image at 64 px (scale 0.5, padded to 64 x 64: 4 input pixels, 8 original ones per token)."""
    grounder = scripted_grounder(task)
    model = grounder.model
    eos, sep = model.layout.eos, model.layout.separator
    image = np.zeros((96, 128, 3), np.uint8)
    if task == "box":
        model.predictor = ScriptedPredictor([[2, 3, 6, 8, 10, 1, 14, 5, eos]], model.layout.vocab_size, eos)
        prediction = grounder.predict(image, "all the red shapes")
        assert [box.tolist() for box in prediction.objects] == [[16, 24, 48, 64], [80, 8, 112, 40]]
        assert prediction.box is None and prediction.description().startswith("2 box(es)")
    else:
        model.predictor = ScriptedPredictor([[1, 1, 5, 1, 5, 5, sep, 9, 9, 11, 9, 11, 11, eos]],
                                            model.layout.vocab_size, eos)
        prediction = grounder.predict(image, "all the red shapes")
        assert [c.tolist() for c in prediction.objects] == [[[8, 8], [40, 8], [40, 40]], [[72, 72], [88, 72], [88, 88]]]
        assert prediction.mask.shape == (96, 128) and prediction.mask[20, 30] and prediction.mask[80, 84]
    assert grounder.save_overlay(image, "all the red shapes", prediction, tmp_path / "answer.png").is_file()
    from matplotlib.patches import Polygon, Rectangle

    from seqtr_lib.viz import draw_prediction, new_figure

    _, ax = new_figure()
    draw_prediction(ax, image, prediction)  # each object outlined: its box, and its contour for a mask
    assert sum(isinstance(patch, Rectangle) for patch in ax.patches) == 2
    assert sum(isinstance(patch, Polygon) for patch in ax.patches) == (2 if task == "mask" else 0)
    model.predictor = ScriptedPredictor([[eos]], model.layout.vocab_size, eos)
    nothing = grounder.predict(image, "the green star")
    assert nothing.objects == [] and nothing.description().startswith("no matching object")
    with pytest.raises(ValueError, match="generalised"):
        grounder.predict(image, "the green star", return_attention=True)


def test_the_widget_outlines_every_object_or_says_no_matching_object():
    """The demo widget with a generalised box checkpoint: two boxes drawn in the first two object colours where
    the tokens put them, the status listing both; an answer of EOS alone says "no matching object" on the image
    and in the status; the attention checkbox, which such a checkpoint cannot serve, is off."""
    import cv2

    from seqtr_lib.demo import GroundingDemo
    from seqtr_lib.viz import OBJECT_COLORS

    grounder = scripted_grounder("box")
    eos = grounder.model.layout.eos
    image = np.full((96, 128, 3), 90, np.uint8)
    ok, png = cv2.imencode(".png", image)
    demo = GroundingDemo(grounder)
    assert demo.show_attention.disabled
    grounder.model.predictor = ScriptedPredictor([[2, 3, 6, 8, 10, 1, 14, 5, eos]], grounder.model.layout.vocab_size, eos)
    demo.upload.value = ({"name": "grey.png", "type": "image/png", "size": png.size, "content": memoryview(png.tobytes()),
                          "last_modified": datetime.datetime(2024, 1, 1)},)
    demo.expression.value = "all the red shapes"
    assert "2 box(es) (x1, y1, x2, y2) 16, 24, 48, 64; 80, 8, 112, 40" in demo.status.value
    assert demo.image.layout.display is None

    def pixels_of(colour: str) -> np.ndarray:
        shown = cv2.cvtColor(cv2.imdecode(np.frombuffer(demo.image.value, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return np.argwhere(np.abs(shown.astype(int) - rgb).max(axis=2) <= 40)[:, ::-1]  # (x, y)

    first, second = pixels_of(OBJECT_COLORS[0]), pixels_of(OBJECT_COLORS[1])
    assert len(first) > 50 and len(second) > 50
    # in the PNG the image spans the axes' x range: the first box's pixels lie left of the second's
    assert np.median(first[:, 0]) < np.median(second[:, 0])
    grounder.model.predictor = ScriptedPredictor([[eos]], grounder.model.layout.vocab_size, eos)
    demo.expression.value = "the green star"
    assert "no matching object" in demo.status.value and demo.image.layout.display is None
    assert len(pixels_of("#cc3333")) > 50  # the red "no target" label over the image
    assert len(pixels_of(OBJECT_COLORS[0])) == 0


@pytest.mark.parametrize("task", ["box", "mask"])
def test_decoding_with_the_cache_equals_decoding_the_whole_prefix(task):
    """The cached decoder against the reference's way (the decoder re-run over every input so far), on a
    model of random weights: the same tokens, scores equal to float64 rounding."""
    model = tiny_model(task, 3, 4 if task == "mask" else 0)
    images, pad_mask, ids = inputs(3)
    memory = model.encode(images, pad_mask, ids)
    cached = generate_from_memory(model, memory, use_cache=True)
    recomputed = generate_from_memory(model, memory, use_cache=False)
    assert torch.equal(cached["answer_tokens"], recomputed["answer_tokens"])
    torch.testing.assert_close(cached["answer_scores"], recomputed["answer_scores"], rtol=1e-12, atol=1e-12)


def test_a_generalised_model_starts_from_a_classic_checkpoint_and_not_the_other_way(gref_root, tiny_data_root,
                                                                                     tmp_path):
    """Fine-tuning from one object per answer: every tensor as trained, the token tables' bins and EOS rows too
    (same ids), and only the separator's row new. The other way round, and resuming across the two answer
    formats, stop with the setting to change."""
    from seqtr_lib import checkpoint as ckpt
    from seqtr_lib import distributed, engine
    from seqtr_lib.config import load_params

    context = distributed.Context(0, 1, 0, torch.device("cpu"))
    steps = ["train.epochs=1", "train.max_steps_per_epoch=1"]
    classic = load_params("params/synthetic_gref_det.yaml", gref_overrides(tiny_data_root, tmp_path)
                          + ["data.max_objects=0", "name=classic", *steps])
    engine.train(classic)
    source = ckpt.load(classic.run_dir / "last.pt")
    general = load_params("params/synthetic_gref_det.yaml", gref_overrides(gref_root, tmp_path)
                          + ["name=general", f"train.finetune_from={classic.run_dir / 'last.pt'}", *steps])
    model = engine.Trainer(general, context).model
    separator = model.layout.separator
    assert separator == general.model.num_bin + 1
    state, trained = model.state_dict(), source["ema"]
    for name, tensor in trained.items():
        if name in ckpt.VOCABULARY_KEYS:
            assert state[name].shape[0] == separator + 1 == tensor.shape[0] + 1
            assert torch.equal(state[name][:separator], tensor), name
        elif name not in ckpt.SEQUENCE_LENGTH_KEYS:
            assert torch.equal(state[name], tensor), name
    engine.train(general)
    back = load_params("params/synthetic_gref_det.yaml", gref_overrides(tiny_data_root, tmp_path)
                       + ["data.max_objects=0", "name=back", f"train.finetune_from={general.run_dir / 'last.pt'}"])
    with pytest.raises(ValueError, match=r"is a generalised model \(data.max_objects 8.*set data.max_objects"):
        engine.Trainer(back, context)
    resumed = load_params("params/synthetic_gref_det.yaml", gref_overrides(tiny_data_root, tmp_path)
                          + ["data.max_objects=0", "name=resumed", f"train.resume={general.run_dir / 'last.pt'}"])
    with pytest.raises(ValueError, match=r"data.max_objects: 8 -> 0"):
        engine.Trainer(resumed, context)


def test_held_images_give_a_generalised_run_the_batches_read_from_the_files(gref_root, tmp_path):
    """data.precompute_images with answers of several objects: the held path makes generalised samples too."""
    from seqtr_lib import distributed, engine
    from seqtr_lib.config import load_params
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset
    from seqtr_lib.precompute import PrecomputedImages

    experiment = load_params("params/synthetic_gref_det.yaml", gref_overrides(gref_root, tmp_path)
                             + ["data.precompute_images=true", "model.trainable_backbone_modules=2"])
    trainer = engine.Trainer(experiment, distributed.Context(0, 1, 0, torch.device("cpu")))
    dataset = build_dataset(experiment, "train", trainer.vocabulary, training=True)
    plain = list(build_loader(dataset, experiment, training=True, epoch=0))
    PrecomputedImages.build(dataset, trainer.model, trainer.device, channels_last=False, progress=False).attach(dataset)
    keyed = list(build_loader(dataset, experiment, training=True, epoch=0))
    assert len(plain) == len(keyed) > 1
    for a, b in zip(plain, keyed):
        for key, value in a.items():
            if key != "images":
                assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key], key


@pytest.mark.slow
@pytest.mark.parametrize("task", ["det", "mask"])
def test_the_evaluation_notebook_breaks_a_generalised_run_down_by_targets_named(gref_root, tmp_path, task):
    """Notebook 02 on a generalised run, headless: every cell runs and draws; its breakdown by the number of
    objects named holds what the definitions give on the saved records (no target: the share answered empty,
    one target: the share with F1 = 1 for boxes), counted per type by hand."""
    import json

    import nbformat

    from seqtr_lib.cli import main
    from seqtr_lib.config import load_params
    from seqtr_lib.pipeline import run_pipeline
    from seqtr_lib.reports import expression_ious, read_predictions, score_name, target_breakdown

    params = f"params/synthetic_gref_{task}.yaml"
    overrides = gref_overrides(gref_root, tmp_path) + ["train.epochs=1", "train.max_steps_per_epoch=3"]
    main(["train", "--params", params, *[a for value in overrides for a in ("--set", value)]])
    experiment = load_params(params, overrides)
    val = json.loads(experiment.annotation_path.read_text())["val"]
    several = next(i for i, a in enumerate(val) if len(a["bboxes"]) >= 2)  # 03 shows a record naming several
    (run_dir,) = run_pipeline([params], ("02", "03"), output_root=str(tmp_path), data_root=str(gref_root),
                              overrides=overrides, parameters={"checkpoint": str(experiment.run_dir / "best.pt"),
                                                               "splits": ["val"], "shuffle_ablation": False,
                                                               "weights": "raw", "sample_index": several,
                                                               "num_rays": [4]})
    for name in ("02_evaluate", "03_visualize_sequences"):
        executed = nbformat.read(run_dir / "notebooks" / f"{name}.ipynb", as_version=4)
        assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    for figure in ("iou_histogram.png", "failures.png", "breakdown.png", "sequence_view.png"):
        assert (run_dir / figure).stat().st_size > 1000, figure
    shown = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{len(val[several]['bboxes'])} object(s)" in shown or task == "mask"  # a mask's pieces may be more
    executed = nbformat.read(run_dir / "notebooks" / "02_evaluate.ipynb", as_version=4)
    records = read_predictions(experiment, "val", "raw")
    metrics = json.loads((run_dir / "metrics.json").read_text())["splits"]["val"]["raw"]
    members = target_breakdown(metrics, records)["targets named"]
    counts = [0 if r["no_target"] else len(r["gt_boxes"]) for r in records]
    expected_n = {"no target": counts.count(0), "one target": counts.count(1),
                  "several targets": sum(c >= 2 for c in counts)}
    assert {name: m["n"] for name, m in members.items()} == {k: v for k, v in expected_n.items() if v}
    assert members["no target"]["n_acc"] == pytest.approx(
        100 * np.mean([not r["pred_boxes" if task == "det" else "pred_polygons"] for r in records if r["no_target"]]))
    if task == "det":
        assert score_name(records, "box") == "F1"
        assert members["one target"]["precision"] == pytest.approx(
            100 * np.mean([f1_by_hand(r) == 1 for r, c in zip(records, counts) if c == 1]))
        assert expression_ious(records, "box").tolist() == [f1_by_hand(r) for r in records]
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "targets named" in text and "no target" in text
    if task == "det":  # the gallery draws every target (green) and every answered box (red, dashed)
        from matplotlib.colors import to_hex
        from matplotlib.patches import Rectangle

        from seqtr_lib import samples, viz

        shown = [dict(r, pred_boxes=[[b[0] + 2, b[1], b[2], b[3] + 1] for b in r["gt_boxes"]] + [[0, 0, 5, 5]])
                 for r in records[:3]]
        figure = samples.failure_gallery(experiment, "val", shown, np.zeros(3), 8)
        edges = [to_hex(p.get_edgecolor()) for ax in figure.axes for p in ax.patches if isinstance(p, Rectangle)]
        assert edges.count(viz.GT_COLOR.lower()) == sum(len(r["gt_boxes"]) for r in shown)
        assert edges.count(viz.PRED_COLOR.lower()) == sum(len(r["pred_boxes"]) for r in shown)


@pytest.mark.parametrize("task", ["det", "mask"])
def test_an_answer_target_lists_every_object_in_emission_order(gref_root, tmp_path, task):
    """03's target of a generalised record: boxes within a bin of the annotation's, row-major by top-left
    corner; contours whose points lie on their objects, ordered by first vertex, one separator between
    consecutive contours; the tokens are what the training batches hold for the same record."""
    import json

    from seqtr_lib.config import load_params
    from seqtr_lib.samples import answer_sequence, load_sample

    experiment = load_params(f"params/synthetic_gref_{task}.yaml", gref_overrides(gref_root, tmp_path))
    val = json.loads(experiment.annotation_path.read_text())["val"]
    index = next(i for i, a in enumerate(val) if len(a["bboxes"]) >= 2)
    sample = load_sample(experiment, "val", index)
    objects, tokens = answer_sequence(experiment, sample)
    layout = SequenceCodec.from_experiment(experiment).layout
    assert tokens[-1] == layout.eos
    height, width = sample.image.shape[:2]
    bin_size = max(height, width) / experiment.model.num_bin  # the synthetic images are square: pad = size
    if task == "det":
        expected = sorted(sample.boxes.tolist(), key=lambda b: (b[1], b[0]))
        assert len(objects) == len(expected) and len(tokens) == 4 * len(objects) + 1
        for corners, box in zip(objects, expected):
            assert np.abs(corners.reshape(-1) - np.asarray(box)).max() <= bin_size
    else:
        assert (tokens == layout.separator).sum() == len(objects) - 1 >= 1
        firsts = [(c[0, 1], c[0, 0]) for c in objects]
        assert firsts == sorted(firsts)
        for contour in objects:  # sampled on the boundary of the mask union
            xs, ys = np.clip(contour.round().astype(int).T, 0, [[width - 1], [height - 1]])
            assert sample.mask[ys, xs].mean() > 0.5
