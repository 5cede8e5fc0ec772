"""Notebook 00's data step (seqtr_lib.dataset_check): the synthetic set generated once, a dataset tree checked."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from seqtr_lib import dataset_check
from seqtr_lib.config import load_params

# The tiny_data_root fixture's generator settings (conftest), so that prepare_synthetic recognises the set.
TINY_SET = {"num_images": 24, "image_size": 64, "seed": 3}


def _annotations(data_root):
    return json.loads((data_root / "annotations" / "synthetic" / "instances.json").read_text())


def test_prepare_synthetic_keeps_a_matching_set_and_refuses_to_overwrite_another(tiny_data_root, tmp_path):
    matching = load_params(None, [f"data.data_root={tiny_data_root}",
                                  *(f"data.synthetic.{k}={v}" for k, v in TINY_SET.items())])
    before = (tiny_data_root / "annotations" / "synthetic" / "instances.json").stat().st_mtime_ns
    assert "kept" in dataset_check.prepare_synthetic(matching)
    assert (tiny_data_root / "annotations" / "synthetic" / "instances.json").stat().st_mtime_ns == before
    other = load_params(None, [f"data.data_root={tiny_data_root}", "data.synthetic.num_images=40"])
    with pytest.raises(ValueError, match="holds 24 images of 64 px .* 40 of 256 px; set regenerate"):
        dataset_check.prepare_synthetic(other)
    fresh = load_params(None, [f"data.data_root={tmp_path}", "data.synthetic.num_images=8",
                               "data.synthetic.image_size=64"])
    assert "generated 8 images" in dataset_check.prepare_synthetic(fresh)
    assert len(list((tmp_path / "images" / "synthetic").glob("*.jpg"))) == 8


def test_dataset_check_counts_splits_missing_images_and_unknown_words(tiny_data_root, tmp_path):
    shutil.copytree(tiny_data_root, tmp_path / "data")
    annotations = _annotations(tiny_data_root)
    removed = annotations["val"][0]["image_id"]
    (tmp_path / "data" / "images" / "synthetic" / f"{removed}.jpg").unlink()
    report = dataset_check.check_dataset(load_params(None, [f"data.data_root={tmp_path / 'data'}"]))
    for split, entries in annotations.items():
        assert report.splits[split] == {"objects": len(entries),
                                        "expressions": sum(len(a["expressions"]) for a in entries),
                                        "images": len({a["image_id"] for a in entries}),
                                        "missing_images": 1 if split == "val" else 0}
    assert report.missing_examples == [str(tmp_path / "data" / "images" / "synthetic" / f"{removed}.jpg")]
    train_words = {w for a in annotations["train"] for e in a["expressions"] for w in e.lower().split()}
    val_words = [w for a in annotations["val"] for e in a["expressions"] for w in e.lower().split()]
    assert report.unknown_word_share["val"] == pytest.approx(np.mean([w not in train_words for w in val_words]))
    assert report.unknown_word_share["train"] == 0.0
    assert report.word_vector_coverage is None  # random vectors
    assert report.lengths["val"] == [len(e.split()) for a in annotations["val"] for e in a["expressions"]]
