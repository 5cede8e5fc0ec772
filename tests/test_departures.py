"""The opt-in departures for training from scratch: stride-16 memory, target-cell loss, query selection,
input-token noise, scene loss (the colour pathway has its own file, test_colour.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from seqtr_lib.codec import TokenLayout, noisy_coordinates
from seqtr_lib.config import ConfigError, ModelConfig, experiment_from_dict, load_params
from seqtr_lib.data.loader import _padded_scenes
from seqtr_lib.data.synthetic import SCENE_ATTRIBUTES, scene_class_counts, scene_targets
from seqtr_lib.loss import Criterion, LossWeights, scene_loss, target_cell_loss
from seqtr_lib.model.aids import target_cells
from seqtr_lib.model.seqtr import build_model
from seqtr_lib.text import Vocabulary
from make_paper_model_reference import EXPRESSIONS, MODEL, fixed_inputs
from rounding import U32, U64, assert_same_function, double

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).parent / "data" / "paper_model_reference.pt"
DEPARTURES_OFF = {"memory_stride": 32, "target_cell_loss": 0.0, "query_selection": False, "input_token_noise": 0.0,
                  "scene_loss": 0.0, "colour_pathway": 0, "attribute_prior": 0.0, "decode_bin_centres": False,
                  "outline_offset": 0.0}


def _model(task: str = "box", **departures):
    torch.manual_seed(0)
    classes = scene_class_counts() if departures.get("scene_loss") else None
    return build_model(ModelConfig(task=task, **{**MODEL, **departures}), Vocabulary.build(EXPRESSIONS), classes)


@pytest.mark.parametrize("task", ["box", "mask", "multi"])
def test_departures_off_is_the_paper_model(task):
    """Same parameters and the same outputs as the model before the departures existed (tests/data)."""
    reference = torch.load(REFERENCE, weights_only=True)[task]
    model = _model(task)
    state = model.state_dict()
    assert {name: tuple(t.shape) for name, t in state.items()} == reference["shapes"]
    for name, tensor in state.items():  # the same float32 values, summed in float64 in any order: n u64 sum|x|
        bound = 2 * tensor.numel() * U64 * float(tensor.double().abs().sum())
        assert float(tensor.double().sum()) == pytest.approx(reference["sums"][name], rel=0, abs=bound), name
    inputs = fixed_inputs(task)
    outputs = model(**inputs)
    assert outputs.keys() == reference["logits"].keys()
    # The reference holds float32 logits from another machine: float32 rounding, which differs between
    # instruction sets (oneDNN's kernels), is in them. So the float64 model is compared with them, within
    # what float32 rounding does to this very computation here (|float32 - float64| now), four times: the
    # reference's rounding and ours, with room for the kernels' different orders.
    # The loss and the generated scores likewise.
    exact_model = _model(task).double()
    inputs64 = dict(zip(inputs, double(*inputs.values())))
    exact = exact_model(**inputs64)
    with torch.no_grad():
        for key, logits in reference["logits"].items():
            rounding = float((outputs[key].double() - exact[key]).abs().max()) + U32 * float(logits.abs().max())
            torch.testing.assert_close(exact[key], logits.double(), atol=4 * rounding, rtol=0)
        loss = float(Criterion(model.layout)(outputs, inputs)["loss"])
        exact_loss = float(Criterion(model.layout)(exact, inputs64)["loss"])
        rounding = abs(loss - exact_loss) + U32 * abs(reference["loss"])
        assert exact_loss == pytest.approx(reference["loss"], rel=0, abs=4 * rounding)
        model.eval()
        exact_model.eval()
        generated = model.generate(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
        exact = exact_model.generate(inputs64["images"], inputs64["pad_mask"], inputs64["expression_ids"])
    for key, value in reference["generated"].items():
        if key.endswith("tokens"):
            assert torch.equal(generated[key], value) and torch.equal(exact[key], value), key
        else:
            rounding = float((generated[key].double() - exact[key]).abs().max()) + U32  # scores: at most 1
            torch.testing.assert_close(exact[key], value.double(), atol=4 * rounding, rtol=0)


PAPER_PARAMS = sorted(p for p in (ROOT / "params").glob("*.yaml") if not p.name.startswith("synthetic"))


@pytest.mark.parametrize("params", PAPER_PARAMS, ids=lambda p: p.stem)
def test_paper_params_keep_every_departure_off(params):
    # Built without validation: these params point at weights and data this checkout need not have.
    model = experiment_from_dict(yaml.safe_load(params.read_text()), str(params)).model
    assert {key: getattr(model, key) for key in DEPARTURES_OFF} == DEPARTURES_OFF


@pytest.mark.parametrize("params", PAPER_PARAMS, ids=lambda p: p.stem)
def test_paper_params_train_the_sequence_term_alone_with_the_papers_token_weights(params):
    model = experiment_from_dict(yaml.safe_load(params.read_text()), str(params)).model
    criterion = Criterion.from_config(model)
    assert criterion.weights == LossWeights(sequence=1.0, cell=0.0, scene=0.0, words=0.0, box_x1=1.5, mask_eos=0.1)
    # Uniform logits, every coordinate target 0, and the aids' outputs and labels offered too: only the sequence
    # term is computed. Each token then loses log V (1 - 0.1 / V) (tests/test_loss_metrics.py), times its weight,
    # averaged over the part's T tokens: box (1.5 + 4 * 1) / 5, mask (2N * 1 + 0.1 on its final EOS) / (2N + 1).
    layout, batch = criterion.layout, {"scene_labels": torch.zeros(1, 1, 3, dtype=torch.int64),
                                       "named_attributes": torch.zeros(1, 2, dtype=torch.int64)}
    outputs = {"cell_logits": torch.zeros(1, 4), "target_cells": torch.zeros(1, dtype=torch.int64),
               "scene_logits": torch.zeros(1, 1, 9), "word_logits": torch.zeros(1, 9)}
    for part in layout.parts:
        outputs[f"{part}_logits"] = torch.zeros(1, layout.length(part) + 1, layout.vocab_size, dtype=torch.float64)
        batch[f"{part}_tokens"] = torch.zeros(1, layout.length(part), dtype=torch.int64)
    losses = criterion(outputs, batch)
    assert set(losses) == {"loss"} | {f"loss_{part}" for part in layout.parts}
    vocab, tokens = layout.vocab_size, 2 * layout.num_ray
    per_token = math.log(vocab) * (1 - 0.1 / vocab)
    expected = {"box": per_token * 5.5 / 5, "mask": per_token * (tokens + float(np.float32(0.1))) / (tokens + 1)}
    for part in layout.parts:  # float64 both: one function in two orders (tests/rounding.py)
        assert_same_function(losses[f"loss_{part}"], torch.tensor(expected[part], dtype=torch.float64), msg=part)
    assert_same_function(losses["loss"], torch.tensor(sum(expected[p] for p in layout.parts), dtype=torch.float64))


def test_input_token_noise_replaces_its_share_of_coordinate_inputs_and_never_eos():
    num_bin = MODEL["num_bin"]
    tokens = torch.randint(0, num_bin, (256, 12))
    tokens[:, -4:] = num_bin  # an EOS tail: missing contour points
    torch.manual_seed(1)
    noisy = noisy_coordinates(tokens, 0.3, num_bin)
    changed = noisy != tokens
    assert not changed[:, -4:].any()
    # 2,048 coordinate inputs, 30 % drawn again (1 in num_bin draws its own token): 5 standard deviations
    assert 0.25 < float(changed[:, :-4].float().mean()) < 0.35
    assert int(noisy[:, :-4].min()) >= 0 and int(noisy[:, :-4].max()) < num_bin


def test_the_paper_model_has_no_training_aids_and_the_training_step_noises_inputs_only():
    assert _model("mask").aids is None
    # The noise is a data step: the model's forward is the same function with or without it.
    inputs = fixed_inputs("mask")
    torch.testing.assert_close(_model("mask", input_token_noise=0.4)(**inputs)["mask_logits"],
                               _model("mask")(**inputs)["mask_logits"], rtol=0, atol=0)


def test_input_token_noise_must_be_a_share():
    with pytest.raises(ConfigError, match="model.input_token_noise"):
        load_params(None, ["model.input_token_noise=1.0"])


def test_query_selection_without_cell_loss_is_refused():
    with pytest.raises(ConfigError, match="model.query_selection.*target_cell_loss"):
        load_params(None, ["model.query_selection=true"])
    with pytest.raises(ConfigError, match="model.memory_stride = 8"):
        load_params(None, ["model.memory_stride=8"])


def test_target_cells_are_the_cells_holding_box_centres():
    # Centres (10, 5) -> row 0, column 0; (40, 20) -> row 1, column 2; (95.9, 63) -> row 3, column 5.
    boxes = torch.tensor([[0.0, 0.0, 20.0, 10.0], [30.0, 10.0, 50.0, 30.0], [95.0, 62.0, 96.8, 64.0]])
    assert target_cells(boxes, stride=16, grid_width=6).tolist() == [0, 8, 23]
    # The right and bottom edges of a 96 px image fall in the last column, never past it.
    assert target_cells(torch.tensor([[96.0, 0.0, 96.0, 0.0]]), 16, 6).tolist() == [5]


def test_target_cell_loss_matches_hand_computed_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -math.inf, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    targets = torch.tensor([3, 1])
    first = -(1.0 - math.log(math.exp(2) + math.exp(0) + math.exp(1)))
    second = math.log(4)
    # float64 both: one function in two orders (tests/rounding.py)
    expected = torch.tensor((first + second) / 2, dtype=torch.float64)
    assert_same_function(target_cell_loss(logits, targets), expected)


def test_the_criterion_weighs_the_cell_loss_and_the_sequence_loss_stays_the_papers():
    criterion = Criterion(TokenLayout("box", 8, 4), LossWeights(cell=0.5))
    outputs = {"box_logits": torch.zeros(1, 5, 9), "target_cells": torch.tensor([1]),
               "cell_logits": torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)}
    tokens = {"box_tokens": torch.tensor([[1, 2, 3, 4]])}
    # softmax([0, log 3]) = [1/4, 3/4]: the cell loss is -log(3/4), weighted by 0.5 (float64, tests/rounding.py).
    expected = torch.tensor(0.5 * -math.log(0.75), dtype=torch.float64)
    assert_same_function(criterion(outputs, tokens)["loss_cell"], expected)
    paper = Criterion(TokenLayout("box", 8, 4))(outputs, tokens)
    assert set(paper) == {"loss", "loss_box"}
    with pytest.raises(ValueError, match="target_box"):
        criterion({"box_logits": outputs["box_logits"]}, tokens)


def test_stride16_memory_has_four_times_the_cells():
    inputs = fixed_inputs("box")
    paper = _model("box").encode(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    fine = _model("box", memory_stride=16).encode(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    assert paper.features.shape[1] == 2 * 3 and fine.features.shape[1] == 4 * 6
    # The second image is 64 px wide in a 96 px batch: its last 2 of 6 columns are padding.
    assert fine.padding[1].view(4, 6)[:, 4:].all() and not fine.padding[1].view(4, 6)[:, :4].any()
    assert not fine.padding[0].any()


def test_stride16_prediction_does_not_depend_on_batch_padding():
    model = _model("box", memory_stride=16).eval()
    inputs = fixed_inputs("box")
    alone = model.generate(inputs["images"][1:, :, :, :64], inputs["pad_mask"][1:, :, :64],
                           inputs["expression_ids"][1:])
    batched = model.generate(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    assert torch.equal(alone["box_tokens"][0], batched["box_tokens"][1])


def _selection_model(task: str = "box"):
    return _model(task, memory_stride=16, target_cell_loss=1.0, query_selection=True)


def test_query_selection_first_input_is_the_projected_cell_memory_plus_position():
    model = _selection_model().double()  # float64: a batched and a per-sample projection sum in other orders
    inputs = dict(zip(fixed_inputs("box"), double(*fixed_inputs("box").values())))
    memory = model.encode(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    cells = torch.tensor([5, 13])
    expected = torch.stack([
        model.aids.query_projection(memory.features[b, cells[b]] + memory.position[b, cells[b]]) for b in range(2)
    ])[:, None]
    assert_same_function(model.start(memory, {"target_cells": cells}), expected)
    best = torch.stack([model.aids.cell_scorer(memory.features[b]).squeeze(-1).masked_fill(memory.padding[b], -math.inf)
                        .argmax() for b in range(2)])
    # exact: the same cells give the same gather and projection
    assert torch.equal(model.start(memory), model.start(memory, {"target_cells": best}))


def test_teacher_forcing_selects_the_true_cell_and_generation_the_best_scoring_one(monkeypatch):
    model = _selection_model().double()  # float64: the cached first step and the forward below, in two orders
    inputs = dict(zip(fixed_inputs("box"), double(*fixed_inputs("box").values())))
    # Centres (24, 24) and (56, 24): cells 7 and 9 of the 4 x 6 stride-16 grid.
    target_box = torch.tensor([[20.0, 20.0, 28.0, 28.0], [52.0, 20.0, 60.0, 28.0]])
    outputs = model(**inputs, aid_inputs={"target_box": target_box})
    assert outputs["target_cells"].tolist() == [7, 9]
    assert outputs["cell_logits"].shape == (2, 24) and torch.isinf(outputs["cell_logits"][1, 4::6]).all()
    # Teacher-forced logits do not depend on the scores: the true cell is selected.
    with torch.no_grad():
        model.aids.cell_scorer.bias.add_(5.0)
        model.aids.cell_scorer.weight.mul_(-3.0)
    # exact: the same computation on the same inputs, the scorer's weights not read
    assert torch.equal(model(**inputs, aid_inputs={"target_box": target_box})["box_logits"], outputs["box_logits"])
    # Generation selects the best-scoring cell: make those cells 7 and 9, and the first emitted token is the
    # most likely coordinate of the teacher-forced first position.
    model.eval()
    forced_first = model(**inputs, aid_inputs={"target_box": target_box})["box_logits"][:, 0, :-1].softmax(-1)
    best = torch.full((2, 24), -1.0, dtype=torch.float64)
    best[0, 7] = best[1, 9] = 1.0
    monkeypatch.setattr(model.aids, "cell_logits", lambda memory: best)
    generated = model.generate(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    assert generated["box_tokens"][:, 0].tolist() == forced_first.argmax(-1).tolist()
    assert_same_function(generated["box_scores"][:, 0], forced_first.max(-1).values, scale=1.0)


@pytest.mark.parametrize("task", ["mask", "multi"])
def test_selection_models_train_and_generate_for_every_task(task):
    model = _selection_model(task)
    inputs = fixed_inputs(task)
    outputs = model(**inputs, aid_inputs={"target_box": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])})
    Criterion(model.layout, LossWeights(cell=1.0))(outputs, inputs)["loss"].backward()
    aids = model.aids
    assert aids.cell_scorer.weight.grad.abs().sum() > 0 and aids.query_projection.weight.grad.abs().sum() > 0
    model.eval()
    generated = model.generate(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    assert generated["mask_tokens"].shape == (2, 12)


@pytest.mark.parametrize("task", ["box", "mask"])
def test_batches_carry_the_target_box_in_input_pixels(tiny_data_root, tmp_path, task):
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset, load_vocabulary
    from conftest import write_params

    experiment = load_params(write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", task=task,
                                          data={"image_size": 96}))
    dataset = build_dataset(experiment, "val", load_vocabulary(experiment), training=False)
    batch = next(iter(build_loader(dataset, experiment, training=False)))
    for i, meta in enumerate(batch["metas"]):
        scale_x, scale_y = meta["scale_factor"]
        x1, y1, x2, y2 = meta["gt_box"]  # original pixels; the input is a plain resize of the image
        expected = torch.tensor([x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y])
        if task == "mask":  # the tight box of the resized mask: its edges move by a resampled pixel and a half
            torch.testing.assert_close(batch["target_box"][i], expected, atol=1.5, rtol=0)
        else:  # the box resized in float32: the scale's rounding, the product's and expected's own, 3u each
            torch.testing.assert_close(batch["target_box"][i], expected, atol=0, rtol=3 * U32)


def test_scene_targets_map_box_centres_into_the_transformed_image_and_name_classes_by_index():
    scene = [{"color": "blue", "kind": "star", "size": "large", "bbox": [10, 20, 30, 40]},   # centre (25, 40)
             {"color": "red", "kind": "circle", "size": "small", "bbox": [200, 0, 10, 10]}]  # centre (205, 5)
    centres, labels = scene_targets(scene, scale_factor=(0.5, 0.5), crop=(0, 0), img_shape=(128, 128))
    assert centres.tolist() == [[12.5, 20.0], [102.5, 2.5]]
    # COLORS: red green blue yellow purple cyan; KINDS: circle square triangle star diamond; small medium large.
    assert labels.tolist() == [[2, 3, 2], [0, 0, 0]]
    # A crop at (20, 0) moves every centre 20 px left: the first (x = -7.5) leaves the image and is dropped.
    centres, labels = scene_targets(scene, (0.5, 0.5), crop=(20, 0), img_shape=(100, 100))
    assert centres.tolist() == [[82.5, 2.5]] and labels.tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError, match="scene object 1 has kind 'hexagon'"):
        scene_targets([scene[0], {**scene[1], "kind": "hexagon"}], (1.0, 1.0), (0, 0), (256, 256))


def test_collate_pads_scene_objects_with_ignored_labels():
    samples = [{"scene_centres": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
                "scene_labels": np.array([[0, 1, 2], [3, 4, 0]], np.int64)},
               {"scene_centres": np.array([[5.0, 6.0]], np.float32), "scene_labels": np.array([[5, 2, 1]], np.int64)}]
    centres, labels = _padded_scenes(samples)
    assert centres.tolist() == [[[1, 2], [3, 4]], [[5, 6], [0, 0]]]
    assert labels.tolist() == [[[0, 1, 2], [3, 4, 0]], [[5, 2, 1], [-1, -1, -1]]]


def test_scene_loss_matches_hand_computed_cross_entropy_and_ignores_padding():
    # Two attributes of 2 and 3 classes; one object and one padded slot.
    logits = torch.tensor([[[0.0, math.log(3.0), 0.0, 0.0, math.log(2.0)], [9.0, -9.0, 9.0, 9.0, -9.0]]],
                          dtype=torch.float64)
    labels = torch.tensor([[[1, 2], [-1, -1]]])
    first = -math.log(3 / 4)    # softmax([0, log 3]) picks class 1 with 3/4
    second = -math.log(2 / 4)   # softmax([0, 0, log 2]) picks class 2 with 2/4
    # float64 both: one function in two orders (tests/rounding.py)
    expected = torch.tensor((first + second) / 2, dtype=torch.float64)
    assert_same_function(scene_loss(logits, labels, (2, 3)), expected)


def test_scene_logits_read_the_visual_map_at_each_centre_cell():
    model = _model("box", memory_stride=16, scene_loss=1.0).double()
    counts = [len(classes) for classes in SCENE_ATTRIBUTES.values()]
    aids = model.aids
    assert aids.scene_head.out_features == sum(counts)
    inputs = dict(zip(fixed_inputs("box"), double(*fixed_inputs("box").values())))
    notes = model.encode(inputs["images"], inputs["pad_mask"], inputs["expression_ids"]).notes
    visual = notes.visual  # (2, Cy, 4, 6)
    centres = torch.tensor([[[40.0, 20.0], [95.0, 63.0]], [[0.0, 0.0], [16.0, 47.9]]])
    # (x, y) -> cell (row, column) = (floor(y / 16), floor(x / 16)).
    cells = [[(1, 2), (3, 5)], [(0, 0), (2, 1)]]
    expected = torch.stack([torch.stack([aids.scene_head(visual[b, :, r, c]) for r, c in row])
                            for b, row in enumerate(cells)])
    # float64: scene_logits applies the same head to the same cell vectors, batched in another shape
    assert_same_function(aids.scene_logits(notes, centres), expected)
    criterion = Criterion(model.layout, LossWeights(scene=0.5), tuple(counts))
    outputs = model(**inputs, aid_inputs={"scene_centres": centres})
    labels = torch.tensor([[[0, 1, 2], [5, 4, 0]], [[1, 1, 1], [-1, -1, -1]]])
    losses = criterion(outputs, {**inputs, "scene_labels": labels})
    expected_scene = float(scene_loss(outputs["scene_logits"].detach(), labels, tuple(counts)))
    assert float(losses["loss_scene"].detach()) == 0.5 * expected_scene  # exact: the same call, halved
    losses["loss_scene"].backward()
    assert model.backbone.layers[0].conv.weight.grad.abs().sum() > 0  # the scene loss trains the backbone
    with pytest.raises(ValueError, match="scene_labels"):
        criterion(outputs, inputs)


def test_scene_loss_needs_the_synthetic_set():
    load_params(None, ["data.dataset=synthetic", "model.scene_loss=1.0"])
    with pytest.raises(ConfigError, match="model.scene_loss.*synthetic"):
        load_params(None, ["data.dataset=refcoco-unc", "model.scene_loss=1.0"])


def test_dataset_scene_targets_follow_the_transform_and_hold_the_target(tiny_data_root, tmp_path):
    from seqtr_lib.data.refer import AnnotationError, ReferDataset

    vocabulary = Vocabulary.build(["the red circle"])
    plain = ReferDataset(tiny_data_root, "synthetic", "train", "box", vocabulary, training=True, image_size=32,
                         lsj=False, scene_targets=True)
    jittered = ReferDataset(tiny_data_root, "synthetic", "train", "box", vocabulary, training=True, image_size=32,
                            lsj=True, scene_targets=True)
    for index in range(len(plain)):
        scene = plain.annotation(index)["scene"]
        sample = plain[index]
        assert len(sample["scene_labels"]) == len(scene)  # a 64 -> 32 px resize keeps every object
        target = sample["target_box"]
        distances = np.abs(sample["scene_centres"] - [(target[0] + target[2]) / 2, (target[1] + target[3]) / 2])
        assert distances.sum(axis=1).min() < 1.0  # the referred object is one of the scene's, at its place
        colour, kind = sample["named_attributes"]  # what the words say of the target, if anything
        annotation, words = plain.annotation(index), sample["meta"]["expression"].split()
        assert colour == len(SCENE_ATTRIBUTES["color"]) or SCENE_ATTRIBUTES["color"][colour] == annotation["color"] in words
        assert kind == len(SCENE_ATTRIBUTES["kind"]) or SCENE_ATTRIBUTES["kind"][kind] == annotation["category"] in words
        for epoch in range(3):
            crop = jittered[(epoch, index)]
            height, width = crop["meta"]["img_shape"]
            assert len(crop["scene_labels"]) <= len(scene)
            assert ((crop["scene_centres"] >= 0) & (crop["scene_centres"] < [width, height])).all()
    assert "scene_labels" not in ReferDataset(tiny_data_root, "synthetic", "train", "box", vocabulary,
                                              training=True, image_size=32)[0]

    document = json.loads((tiny_data_root / "annotations" / "synthetic" / "instances.json").read_text())
    del document["train"][1]["scene"]
    (tmp_path / "annotations" / "synthetic").mkdir(parents=True)
    (tmp_path / "annotations" / "synthetic" / "instances.json").write_text(json.dumps(document))
    with pytest.raises(AnnotationError, match="annotation 1 has no 'scene'"):
        ReferDataset(tmp_path, "synthetic", "train", "box", vocabulary, training=True, scene_targets=True)
