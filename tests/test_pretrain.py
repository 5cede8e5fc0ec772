"""The backbone's detection pre-training: the head's shapes, its loss against hand-computed values, and a
short run whose Darknet file loads back into the grounding model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from seqtr_lib.config import ConfigError, load_params
from seqtr_lib.model.darknet import DarkNet53, load_darknet_weights
from seqtr_lib.pretrain import CLASS_COUNTS, SceneDetector, detection_loss, pretrain_backbone
from tests.conftest import write_params
from rounding import assert_same_function


@pytest.mark.parametrize("stride", [16, 32])
def test_the_detector_predicts_on_the_memory_grid(stride):
    detector = SceneDetector(width=0.0625, stride=stride, hidden=16).eval()
    class_logits, objectness = detector(torch.rand(2, 3, 128, 96) * 255)
    assert class_logits.shape == (2, sum(CLASS_COUNTS), 128 // stride, 96 // stride)
    assert objectness.shape == (2, 128 // stride, 96 // stride)


def test_detection_loss_matches_hand_computed_cross_entropies():
    torch.manual_seed(0)
    classes, cells = sum(CLASS_COUNTS), 2 * 3  # a 2 x 3 grid of 16 px cells
    class_logits = torch.randn(1, classes, 2, 3, dtype=torch.float64)  # float64: the hand sums in other orders
    objectness = torch.randn(1, 2, 3, dtype=torch.float64)
    # Object 0 centred at (40, 20): column 2, row 1, cell 5; object 1 at (5, 3): cell 0; the third is padding.
    centres = torch.tensor([[[40.0, 20.0], [5.0, 3.0], [0.0, 0.0]]])
    labels = torch.tensor([[[1, 4, 2], [5, 0, 0], [-1, -1, -1]]])
    losses = detection_loss(class_logits, objectness, centres, labels, stride=16)

    flat = class_logits.reshape(classes, cells)
    expected_classes = 0.0
    for offset, count, k in ((0, CLASS_COUNTS[0], 0), (CLASS_COUNTS[0], CLASS_COUNTS[1], 1),
                             (CLASS_COUNTS[0] + CLASS_COUNTS[1], CLASS_COUNTS[2], 2)):
        per_attribute = [-(flat[offset:offset + count, cell].log_softmax(0)[label]).item()
                         for cell, label in ((5, labels[0, 0, k]), (0, labels[0, 1, k]))]
        expected_classes += sum(per_attribute) / 2 / 3
    logits = objectness.reshape(cells).tolist()
    targets = [1, 0, 0, 0, 0, 1]
    expected_objectness = sum(math.log1p(math.exp(-x)) if t else math.log1p(math.exp(x))
                              for x, t in zip(logits, targets)) / cells
    for key, expected in (("loss_classes", expected_classes), ("loss_objectness", expected_objectness),
                          ("loss", expected_classes + expected_objectness)):
        assert_same_function(losses[key], torch.tensor(expected, dtype=torch.float64), msg=key)


def test_two_objects_in_one_cell_make_one_positive_cell():
    objectness = torch.zeros(1, 1, 2)
    centres = torch.tensor([[[3.0, 3.0], [10.0, 12.0]]])  # both in cell 0 of a 1 x 2 grid of 16 px
    labels = torch.zeros(1, 2, 3, dtype=torch.int64)
    losses = detection_loss(torch.zeros(1, sum(CLASS_COUNTS), 1, 2), objectness, centres, labels, stride=16)
    assert float(losses["loss_objectness"]) == pytest.approx(F.binary_cross_entropy_with_logits(
        torch.zeros(2), torch.tensor([1.0, 0.0])).item())


def test_pretraining_writes_a_backbone_the_grounding_model_loads(tiny_data_root, tmp_path):
    params = write_params(tmp_path / "tiny.yaml", tiny_data_root, tmp_path / "out",
                          model={"darknet_width": 0.0625, "memory_stride": 16})
    experiment = load_params(params)
    out = tmp_path / "weights" / "tiny_darknet.weights"
    summary = pretrain_backbone(experiment, out, epochs=1, max_steps=3, val_limit=8, warmup_steps=1)
    assert summary["steps"] == 3 and set(summary["val_accuracy"]) == {"color", "kind", "size", "objectness"}
    assert all(0 <= value <= 100 for value in summary["val_accuracy"].values())
    assert json.loads((tmp_path / "weights" / "tiny_darknet.weights.json").read_text())["steps"] == 3
    backbone = DarkNet53(0.0625)
    before = [p.clone() for p in backbone.parameters()]
    consumed = load_darknet_weights(backbone, out)
    assert consumed * 4 + 20 == out.stat().st_size  # every value of the file, after its 20-byte header
    assert all(not torch.equal(a, b) for a, b in zip(before, backbone.parameters()))
    # The grounding model takes it through the params, frozen but for the last two modules as in the paper.
    grounding = load_params(params, [f"model.darknet_weights={out}", "model.trainable_backbone_modules=2"])
    assert grounding.model.darknet_weights == str(out)
    # Trained again to the same file: the earlier backbone and its summary are moved aside together.
    earlier = out.read_bytes()
    pretrain_backbone(experiment, out, epochs=1, max_steps=1, val_limit=8, warmup_steps=1)
    (aside,) = (tmp_path / "weights").glob("tiny_darknet.*.weights")
    assert aside.read_bytes() == earlier and json.loads(aside.with_name(aside.name + ".json").read_text())["steps"] == 3
    assert json.loads((tmp_path / "weights" / "tiny_darknet.weights.json").read_text())["steps"] == 1


def test_pretraining_refuses_a_dataset_without_scenes(tmp_path):
    experiment = load_params(None, ["data.dataset=refcoco-unc"])
    with pytest.raises(ValueError, match="needs the synthetic set"):
        pretrain_backbone(experiment, tmp_path / "x.weights", epochs=1)


def test_darknet_weights_are_found_here_else_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = load_params(None, ["model.darknet_weights=weights/synthetic_darknet.weights"])
    assert experiment.model.darknet_weights == "weights/synthetic_darknet.weights"
    with pytest.raises(ConfigError, match=r"model.darknet_weights = 'weights/none.weights': no such file here or in"):
        load_params(None, ["model.darknet_weights=weights/none.weights"])
    absent = tmp_path / "none.weights"  # an absolute path is looked for there only, and the message says so
    with pytest.raises(ConfigError, match=rf"model.darknet_weights = '{absent}': no such file$"):
        load_params(None, [f"model.darknet_weights={absent}"])


def test_the_released_backbone_fills_the_demo_model_and_freezes_as_the_paper_does():
    from torch import nn

    from seqtr_lib.config import REPOSITORY
    from seqtr_lib.data.refer import scene_classes
    from seqtr_lib.model.seqtr import build_model
    from seqtr_lib.pipeline import DEMO_OVERRIDES
    from seqtr_lib.text import Vocabulary

    path = REPOSITORY / "weights" / "synthetic_darknet.weights"
    alone = DarkNet53(0.125)
    assert load_darknet_weights(alone, path) * 4 + 20 == path.stat().st_size  # the whole file, at this width
    experiment = load_params(REPOSITORY / "params" / "synthetic_det.yaml", list(DEMO_OVERRIDES))
    model = build_model(experiment.model, Vocabulary.build(["the red circle"]), scene_classes(experiment))
    loaded = model.backbone.state_dict()
    for name, tensor in alone.state_dict().items():
        assert torch.equal(loaded[name], tensor), name  # exact: the same file's values
    modules = dict(model.backbone.layers.named_children())
    names = list(modules)
    trainable = {name for name, module in modules.items() if any(p.requires_grad for p in module.parameters())}
    assert trainable == set(names[-2:])
    model.train()
    for name in names:
        norms = [m for m in modules[name].modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and all(norm.training == (name in trainable) for norm in norms), name
