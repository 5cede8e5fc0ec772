"""The colour pathway (a grey backbone plus shape-blind colour features pooled per memory cell) and the
attribute prior (the colour and kind the words name, matched against each cell's classifiers)."""

from __future__ import annotations

import pytest
import torch

import math

import numpy as np

from seqtr_lib.config import ConfigError, ModelConfig, load_params
from seqtr_lib.data.synthetic import SCENE_ATTRIBUTES, named_attributes, scene_class_counts
from seqtr_lib.loss import Criterion, LossWeights
from seqtr_lib.model.colour import ColourPathway, attribute_match, grey
from seqtr_lib.model.seqtr import build_model
from seqtr_lib.text import Vocabulary
from make_paper_model_reference import EXPRESSIONS, MODEL, fixed_inputs
from rounding import U32, assert_same_function, double


def test_grey_puts_the_luma_in_every_channel():
    images = torch.tensor([100.0, 200.0, 50.0]).view(1, 3, 1, 1).repeat(2, 1, 2, 3)
    images[1] = 255
    expected = torch.tensor([0.299 * 100 + 0.587 * 200 + 0.114 * 50, 255.0])  # 153.0, and white stays white
    # float32: three rounded weights, three products, two additions (4u of the terms' sum, at most 255) and
    # expected's own rounding (u)
    torch.testing.assert_close(grey(images), expected.view(2, 1, 1, 1).expand(2, 3, 2, 3), atol=5 * U32 * 255, rtol=0)


def _pathway() -> ColourPathway:
    torch.manual_seed(0)
    return ColourPathway(hidden=8, out_channels=5, stride=4).double()


def test_pathway_is_blind_to_where_the_pixels_lie_inside_a_cell():
    pathway = _pathway()
    images = torch.rand(1, 3, 8, 12, dtype=torch.float64) * 255
    no_padding = torch.zeros(1, 8, 12, dtype=torch.bool)
    # Reverse the pixel order inside every 4 x 4 cell: the shapes change, each cell's colours do not.
    cells = images.view(1, 3, 2, 4, 3, 4).flip(3, 5).reshape(1, 3, 8, 12)
    assert not torch.equal(cells, images)
    features = pathway(images, no_padding)
    assert features.shape == (1, 5, 2, 3)
    assert_same_function(pathway(cells, no_padding), features)  # float64: a convolution's pixels in other orders


def test_a_pixel_changes_only_its_own_cell_and_padding_carries_no_colour():
    pathway = _pathway()
    images = torch.rand(1, 3, 8, 8, dtype=torch.float64) * 25  # dark, so that a bright pixel raises its cell's maximum
    padding = torch.zeros(1, 8, 8, dtype=torch.bool)
    padding[:, :, 4:] = True  # the right half is padding
    features = pathway(images, padding)
    changed = images.clone()
    changed[0, :, 1, 2] = torch.tensor([255.0, 0.0, 0.0])  # a red pixel in the top-left cell
    changed[0, :, 6, 6] = 255.0  # and white padding
    difference = (pathway(changed, padding) - features).abs().sum(dim=1)[0]
    assert difference[0, 0] > 0
    assert torch.all(difference.flatten()[1:] == 0)


def _model(**departures):
    torch.manual_seed(0)
    return build_model(ModelConfig(task="box", **{**MODEL, "memory_stride": 16, **departures}),
                       Vocabulary.build(EXPRESSIONS), scene_class_counts() if departures.get("scene_loss") else None)


def test_with_the_pathway_the_backbone_sees_only_grey_and_colour_still_reaches_the_memory():
    model = _model(colour_pathway=8).eval().double()  # float64: the luma is kept up to rounding (tests/rounding.py)
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    inputs = dict(zip(fixed_inputs("box"), double(*fixed_inputs("box").values())))
    images = inputs["images"]
    # The same luma in a different colour: swap red and blue and put the luma difference into green.
    recoloured = images[:, [2, 1, 0]].clone()
    recoloured[:, 1] += (0.299 - 0.114) * (images[:, 0] - images[:, 2]) / 0.587
    memories = [model.encode(x, inputs["pad_mask"], inputs["expression_ids"]).features for x in (images, recoloured)]
    assert torch.all(seen[0][:, 0] == seen[0][:, 1]) and torch.all(seen[0][:, 1] == seen[0][:, 2])
    assert_same_function(seen[1], seen[0])
    assert (memories[0] - memories[1]).abs().max() > 1e-3  # colour reaches the memory: far above rounding


def test_the_pathway_learns_with_the_model():
    model = _model(colour_pathway=8)
    inputs = fixed_inputs("box")
    Criterion(model.layout)(model(**inputs), inputs)["loss"].backward()
    assert model.aids.colour_pathway.pixel.weight.grad.abs().sum() > 0
    assert model.aids.colour_pathway.project.weight.grad.abs().sum() > 0
    assert _model().aids is None


def test_negative_colour_pathway_is_refused():
    with pytest.raises(ConfigError, match="model.colour_pathway"):
        load_params(None, ["model.colour_pathway=-1"])


def test_scene_classifiers_read_colour_from_the_pathway_and_kind_from_the_grey_map():
    # In float64: the recolouring keeps the luma only up to the rounding of the images (u * 255), which the
    # backbone amplifies; in float32 (u = 6e-8) that reached 1.9e-3 on an AVX-512 machine, 1e-3 on others, as
    # oneDNN's kernels differ. In float64 the same gain leaves 2**-28 of the logits' scale at most
    # (tests/rounding.py), and the colour logits, which must change, differ by more than 1e-3.
    model = _model(colour_pathway=8, scene_loss=1.0).eval().double()
    aids = model.aids
    counts = [len(classes) for classes in SCENE_ATTRIBUTES.values()]
    assert aids.colour_head.out_features == counts[0] and aids.scene_head.out_features == counts[1] + counts[2]
    inputs = fixed_inputs("box")
    images = inputs["images"].double()
    recoloured = images[:, [2, 1, 0]].clone()  # the same luma, other colours (as above)
    recoloured[:, 1] += (0.299 - 0.114) * (images[:, 0] - images[:, 2]) / 0.587
    centres = torch.tensor([[[40.0, 20.0]], [[16.0, 47.9]]])  # cells (1, 2) and (2, 1) of the 16-px grid
    logits = []
    for x in (images, recoloured):
        notes = model.encode(x, inputs["pad_mask"], inputs["expression_ids"]).notes
        logits.append(aids.scene_logits(notes, centres))
        expected_colour = aids.colour_head(notes.colours[0, :, 1, 2])
        assert_same_function(logits[-1][0, 0, :counts[0]], expected_colour)  # one head, batched otherwise
    assert_same_function(logits[0][..., counts[0]:], logits[1][..., counts[0]:])
    assert (logits[0][..., :counts[0]] - logits[1][..., :counts[0]]).abs().max() > 1e-3


@pytest.mark.parametrize("expression, color, kind, expected", [
    ("the red circle", "red", "circle", ("red", "circle")),
    ("the leftmost green shape", "green", "star", ("green", None)),
    ("the big star on the left", "yellow", "star", (None, "star")),
    ("the star below the red square", "red", "star", (None, "star")),  # "red" names the landmark
    ("the red star to the left of the red square", "red", "star", ("red", "star")),
    ("the shape right of the blue circle", "blue", "circle", (None, None)),
])
def test_named_attributes_are_the_targets_own_words_before_any_relation(expression, color, kind, expected):
    colors, kinds = SCENE_ATTRIBUTES["color"], SCENE_ATTRIBUTES["kind"]
    indices = [colors.index(expected[0]) if expected[0] else len(colors),
               kinds.index(expected[1]) if expected[1] else len(kinds)]
    np.testing.assert_array_equal(named_attributes(expression, color, kind), indices)


def test_attribute_match_by_hand():
    # Two colours, two kinds; the words name colour 0 for sure and no kind for sure.
    # float64 both: one function in two orders (tests/rounding.py)
    word_logits = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf, -math.inf, 0.0]], dtype=torch.float64)
    cell_logits = torch.tensor([[[math.log(3), 0.0, 0.0, 0.0],  # cell 0: colour 0 with 3/4
                                 [0.0, math.log(4), 5.0, -1.0]]], dtype=torch.float64)  # cell 1: colour 0 with 1/5
    expected = torch.tensor([[math.log(3 / 4), math.log(1 / 5)]], dtype=torch.float64)
    assert_same_function(attribute_match(word_logits, cell_logits, (2, 2)), expected)
    # Half "names colour 1", half "names none"; kind 0 named for sure: P = (1/2 + 1/2 P(c1)) P(k0).
    word_logits = torch.tensor([[-math.inf, 0.0, 0.0, 0.0, -math.inf, -math.inf]], dtype=torch.float64)
    p_k0 = [0.5, 1 / (1 + math.exp(-6))]
    expected = torch.tensor([[math.log((0.5 + 0.5 * 0.25) * p_k0[0]), math.log((0.5 + 0.5 * 0.8) * p_k0[1])]],
                            dtype=torch.float64)
    assert_same_function(attribute_match(word_logits, cell_logits, (2, 2)), expected)


def _prior_model():
    return _model(colour_pathway=8, scene_loss=1.0, target_cell_loss=1.0, query_selection=True, attribute_prior=0.5)


def test_the_prior_adds_to_the_cell_scores_and_trains_only_the_word_head_through_its_own_loss():
    model = _prior_model().double()  # float64: the word loss below is summed in two orders
    inputs = dict(zip(fixed_inputs("box"), double(*fixed_inputs("box").values())))
    target_box = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    outputs = model(**inputs, aid_inputs={"target_box": target_box,
                                          "scene_centres": torch.tensor([[[5.0, 5.0]], [[30.0, 30.0]]])})
    aids = model.aids
    memory = model.encode(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    word_logits = memory.notes.word_logits
    counts = (len(SCENE_ATTRIBUTES["color"]), len(SCENE_ATTRIBUTES["kind"]))
    prior = attribute_match(word_logits, aids.scene_cells(memory.notes), counts)
    base = aids.cell_scorer(memory.features)[..., 0].masked_fill(memory.padding, -math.inf)
    assert torch.equal(outputs["cell_logits"], base + prior)  # exact: the forward's own operations, repeated
    assert word_logits.shape == (2, counts[0] + 1 + counts[1] + 1)
    named = torch.tensor([[0, counts[1]], [counts[0], 2]])
    tokens = {**inputs, "scene_labels": torch.tensor([[[0, 1, 2]], [[5, 2, 0]]]), "named_attributes": named}
    weights = LossWeights(cell=1.0, scene=1.0, words=0.5)  # _prior_model's
    losses = Criterion(model.layout, weights, tuple(scene_class_counts().values()))(outputs, tokens)
    colour_loss = torch.nn.functional.cross_entropy(outputs["word_logits"][:, :counts[0] + 1], named[:, 0])
    kind_loss = torch.nn.functional.cross_entropy(outputs["word_logits"][:, counts[0] + 1:], named[:, 1])
    assert_same_function(losses["loss_words"].detach(), 0.5 * (colour_loss + kind_loss).detach() / 2)
    losses["loss_cell"].backward()  # the prior is detached: the cell loss leaves the classifiers alone
    assert aids.word_head.weight.grad is None and aids.colour_head.weight.grad is None
    assert aids.cell_scorer.weight.grad.abs().sum() > 0
    model.eval()
    assert model.generate(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])["box_tokens"].shape == (2, 4)


def test_the_attribute_prior_needs_its_classifiers():
    with pytest.raises(ConfigError, match="model.attribute_prior.*colour_pathway"):
        load_params(None, ["data.dataset=synthetic", "model.attribute_prior=1.0", "model.scene_loss=1.0",
                           "model.target_cell_loss=1.0"])


def test_a_run_with_the_prior_trains_on_loader_batches_and_logs_the_word_loss(tiny_data_root, tmp_path):
    import json as json_module

    from conftest import write_params
    from seqtr_lib import engine

    departures = {"memory_stride": 16, "target_cell_loss": 1.0, "query_selection": True, "scene_loss": 1.0,
                  "colour_pathway": 4, "attribute_prior": 1.0}
    experiment = load_params(write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", model=departures,
                                          train={"epochs": 1, "max_steps_per_epoch": 2}))
    engine.train(experiment)
    steps = [json_module.loads(line) for line in (experiment.run_dir / "log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["type"] == "step"]
    assert steps and all(math.isfinite(s["loss_words"]) and s["loss_words"] > 0 for s in steps)
