"""Dataset samples for the notebooks (seqtr_lib.samples), read through the split's ReferDataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from seqtr_lib import samples
from seqtr_lib.config import load_params
from seqtr_lib.predict import Prediction


def _experiment(data_root, task: str = "box", **data):
    return load_params(None, [f"data.data_root={data_root}", f"model.task={task}", "model.num_ray=6",
                              *(f"data.{k}={v}" for k, v in data.items())])


def _annotations(data_root, split: str) -> list[dict]:
    return json.loads((data_root / "annotations" / "synthetic" / "instances.json").read_text())[split]


def test_a_split_dataset_is_built_once_per_version_of_its_file(tiny_data_root, tmp_path, monkeypatch):
    folder = tmp_path / "annotations" / "synthetic"
    shutil.copytree(tiny_data_root / "annotations" / "synthetic", folder)
    built = []
    build = samples.build_dataset
    monkeypatch.setattr(samples, "build_dataset", lambda *args, **kwargs: built.append(args) or build(*args, **kwargs))
    experiment = _experiment(tmp_path)
    first = samples.split_dataset(experiment, "val")
    assert samples.split_dataset(experiment, "val") is first and len(built) == 1
    assert len(first) == len(_annotations(tiny_data_root, "val"))  # one item per object
    document = json.loads((folder / "instances.json").read_text())
    document["val"] = document["val"][:2]
    (folder / "instances.json").write_text(json.dumps(document))
    assert len(samples.split_dataset(experiment, "val")) == 2 and len(built) == 2  # the new version
    with pytest.raises(FileNotFoundError, match="make-synthetic"):
        samples.split_dataset(_experiment(tmp_path / "missing"), "val")


def test_a_sample_is_the_annotated_object_in_original_pixels(tiny_data_root):
    experiment = _experiment(tiny_data_root)
    annotation = _annotations(tiny_data_root, "val")[1]
    sample = samples.load_sample(experiment, "val", 1, expression_index=len(annotation["expressions"]) + 1)
    assert sample.image.shape == (annotation["height"], annotation["width"], 3) and sample.image.dtype == np.uint8
    x, y, w, h = annotation["bbox"]
    assert sample.box.tolist() == [x, y, x + w, y + h]
    assert sample.expression == annotation["expressions"][1]  # the index wraps around
    rows, columns = np.nonzero(sample.mask)
    assert abs(columns.min() - x) <= 1 and abs(rows.min() - y) <= 1  # the mask fills the box
    with pytest.raises(IndexError, match=r"sample_index 99 is outside split 'val'"):
        samples.load_sample(experiment, "val", 99)


def test_targets_and_prediction_ious_of_a_sample(tiny_data_root):
    box_experiment, mask_experiment = _experiment(tiny_data_root), _experiment(tiny_data_root, "mask")
    sample = samples.load_sample(box_experiment, "val", 0)
    points, tokens = samples.target_sequence(box_experiment, sample)
    assert points.tolist() == sample.box.reshape(2, 2).tolist() and len(tokens) == 4
    points, tokens = samples.target_sequence(mask_experiment, sample)
    assert len(tokens) == 12 and 3 <= len(points) <= 6  # num_ray 6, EOS for missing points
    def prediction(box=None, polygon=None, mask=None):
        return Prediction("mask" if polygon is not None else "box", box, polygon, mask, np.zeros(4), np.zeros(4), 0.0)

    assert samples.prediction_iou(sample, prediction(box=sample.box)) == 1.0
    left = sample.mask.copy()
    left[:, int(sample.box[0] + sample.box[2]) // 2:] = 0
    expected = left.sum() / sample.mask.sum()
    outlined = prediction(box=sample.box, polygon=np.zeros((3, 2)), mask=left)
    assert samples.prediction_iou(sample, outlined) == pytest.approx(expected)


def test_galleries_draw_one_panel_per_object(tiny_data_root):
    experiment = _experiment(tiny_data_root)
    figure = samples.sample_gallery(experiment, "train", num_samples=3)
    assert sum(ax.has_data() for ax in figure.axes) == 3
    records = [{"ann_index": i // 2, "expression_index": i % 2, "expression": "a shape", "pred_box": [0, 0, 8, 8]}
               for i in range(6)]  # three objects with two expressions each
    figure = samples.failure_gallery(experiment, "val", records, np.array([0.9, 0.1, 0.5, 0.6, 0.2, 0.3]), count=2)
    titles = [ax.get_title() for ax in figure.axes if ax.has_data()]
    assert titles == ["IoU 0.10: a shape", "IoU 0.20: a shape"]  # the worst expression of the two worst objects


def test_attention_examples_are_sorted_best_first(tiny_data_root):
    experiment = _experiment(tiny_data_root)

    class Grounder:  # predicts the box of the first val object for every sample
        box = samples.load_sample(experiment, "val", 0).box

        def predict(self, image, expression, return_attention=False):
            return Prediction("box", self.box, None, None, np.zeros(4), np.zeros(4), 0.0,
                              attention=np.zeros((4, *image.shape[:2])))

    examples = samples.attention_examples(experiment, Grounder(), "val", count=3)
    assert [sample.box.tolist() for sample, _, _ in examples][0] == Grounder.box.tolist()
    assert [iou for _, _, iou in examples] == sorted((iou for _, _, iou in examples), reverse=True)
    assert examples[0][2] == 1.0
