"""Collate (padding, pad mask, tokens, point-order shuffle), samplers and reproducible loading."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from seqtr_lib.config import load_params
from seqtr_lib.data.loader import Collate, EpochBatchSampler, ShardSampler, build_loader
from seqtr_lib.data.refer import build_dataset, load_vocabulary
from seqtr_lib.codec import SequenceCodec, TokenLayout

EOS = 1000  # num_bin


def collate(task, num_ray=4, mapping="relative", image_size=640, **options):
    return Collate(SequenceCodec(TokenLayout(task, 1000, num_ray), mapping, image_size), **options)


def fake_sample(img_shape, pad_shape, box=(0.0, 0.0, 1.0, 1.0), vertices=None, value=7, rng_key=(0, 0, 0)):
    height, width = img_shape
    meta = {"img_shape": img_shape, "pad_shape": pad_shape, "ann_index": 0}
    sample = {"image": tv_tensors.Image(torch.full((3, height, width), value, dtype=torch.uint8)),
              "expression_ids": np.array([5, 6, 0], dtype=np.int64), "meta": meta, "box": np.array(box),
              "rng_key": rng_key}
    if vertices is not None:
        sample["vertices"] = np.asarray(vertices, dtype=np.float32)
    return sample


def test_collate_pads_images_to_the_batch_maximum_and_marks_the_padding():
    samples = [fake_sample((40, 90), (64, 96), value=200), fake_sample((100, 20), (128, 32), value=3)]
    batch = collate("box", image_dtype=torch.float32)(samples)
    images, pad_mask = batch["images"], batch["pad_mask"]
    assert images.shape == (2, 3, 128, 96) and images.dtype == torch.float32
    assert pad_mask.shape == (2, 128, 96) and pad_mask.dtype == torch.bool
    assert (images[0, :, :40, :90] == 200).all() and images[0, :, 40:].abs().sum() == 0
    assert images[0, :, :, 90:].abs().sum() == 0
    assert (images[1, :, :100, :20] == 3).all() and images[1, :, :, 20:].abs().sum() == 0
    assert not pad_mask[0, :40, :90].any() and pad_mask[0, 40:].all() and pad_mask[0, :, 90:].all()
    assert int((~pad_mask[1]).sum()) == 100 * 20
    assert batch["expression_ids"].tolist() == [[5, 6, 0], [5, 6, 0]]
    assert batch["metas"] == [s["meta"] for s in samples] and batch["num_skipped"] == 0


def test_uint8_images_hold_the_same_values_in_a_quarter_of_the_bytes():
    samples = [fake_sample((40, 90), (64, 96), value=255), fake_sample((100, 20), (128, 32), value=3)]
    as_float = collate("box", image_dtype=torch.float32)(samples)["images"]
    as_uint8 = collate("box")(samples)["images"]
    assert as_uint8.dtype == torch.uint8 and torch.equal(as_uint8.float(), as_float)


def test_collate_quantizes_boxes_with_each_samples_own_pad_shape():
    samples = [fake_sample((40, 90), (64, 96), box=(10.0, 20.0, 30.0, 40.0)),
               fake_sample((100, 20), (128, 32), box=(10.0, 20.0, 31.9, 99.0))]
    tokens = collate("box")(samples)["box_tokens"]
    # floor(x / pad_w * 1000), floor(y / pad_h * 1000)
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [[104, 312, 312, 625], [312, 156, 996, 773]]


def test_absolute_mapping_divides_by_image_size():
    samples = [fake_sample((40, 90), (64, 96), box=(10.0, 20.0, 30.0, 40.0))]
    tokens = collate("box", mapping="absolute", image_size=640)(samples)["box_tokens"]
    assert tokens.tolist() == [[15, 31, 46, 62]]


def test_collate_turns_missing_vertices_into_eos():
    vertices = [[16.0, 48.0, -1, -1], [8.0, 32.0, -1, -1]]  # x row, y row; two points present
    batch = collate("multi")([fake_sample((64, 64), (64, 64), vertices=vertices)])
    eos = EOS
    assert batch["mask_tokens"].tolist() == [[250, 125, 750, 500, eos, eos, eos, eos]]
    assert batch["box_tokens"].shape == (1, 4)


def test_shuffle_fraction_permutes_the_point_order_of_that_share_of_the_batch():
    rows = [[[0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0]], [[10, 11, 12, 13, -1, -1], [1, 1, 1, 1, -1, -1]]] * 2
    samples = [fake_sample((64, 64), (64, 64), vertices=np.array(v, float) * 4, rng_key=(1, 2, i))
               for i, v in enumerate(rows)]
    shuffled = collate("mask", num_ray=6, shuffle_fraction=0.5)
    tokens = shuffled(samples)["mask_tokens"].numpy()
    plain = collate("mask", num_ray=6)(samples)["mask_tokens"].numpy()
    changed = [i for i in range(4) if not np.array_equal(tokens[i], plain[i])]
    assert len(changed) == 2  # round(0.5 * 4) samples
    for i in range(4):  # same points, missing ones (EOS) still at the end
        pairs = tokens[i].reshape(-1, 2)
        assert sorted(map(tuple, pairs)) == sorted(map(tuple, plain[i].reshape(-1, 2)))
        valid = (pairs != EOS).all(axis=1)
        assert valid.tolist() == sorted(valid.tolist(), reverse=True)
    np.testing.assert_array_equal(shuffled(samples)["mask_tokens"].numpy(), tokens)  # seeded by the sample keys


@pytest.fixture(scope="module")
def experiment(tiny_data_root):
    return load_params(None, [f"data.data_root={tiny_data_root}", "data.image_size=64", "data.batch_size=8",
                              "data.eval_batch_size=16", "model.task=multi", "model.num_ray=6",
                              "data.shuffle_fraction=0.5", "train.seed=11"])


def batches(loader) -> list[dict]:
    return list(loader)


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in ("images", "pad_mask", "expression_ids", "box_tokens", "mask_tokens"):
            assert torch.equal(a[key], b[key]), key
        assert a["metas"] == b["metas"]


def test_loader_with_two_workers_gives_identical_batches_for_the_same_seed(experiment):
    vocabulary = load_vocabulary(experiment)
    dataset = build_dataset(experiment, "train", vocabulary, training=True)
    in_process = [batches(build_loader(dataset, experiment, True, seed=3, epoch=1)) for _ in range(2)]
    # The parent has now used OpenCV's thread pool, which made forked workers hang in cv2.setNumThreads.
    cv2.resize(np.zeros((1500, 1500, 3), np.uint8), (2000, 2000))
    two_workers = dataclasses.replace(experiment, data=dataclasses.replace(experiment.data, num_workers=2))
    runs = []
    for _ in range(2):
        loader = build_loader(dataset, two_workers, True, seed=3, epoch=1)
        loader.timeout = 60  # fail instead of hanging
        runs.append(batches(loader))
    assert_same_batches(runs[0], runs[1])
    assert_same_batches(in_process[0], in_process[1])
    assert_same_batches(in_process[0], runs[0])
    assert sum(len(b["metas"]) for b in runs[0]) == len(dataset)


def test_a_new_epoch_reshuffles_and_redraws(experiment):
    dataset = build_dataset(experiment, "train", load_vocabulary(experiment), training=True)
    loader = build_loader(dataset, experiment, True, seed=3, epoch=0)
    first = [m["ann_index"] for b in loader for m in b["metas"]]
    loader = build_loader(dataset, experiment, True, seed=3, epoch=1)
    second = [m["ann_index"] for b in loader for m in b["metas"]]
    assert sorted(first) == sorted(second) == list(range(len(dataset))) and first != second


def test_evaluation_loader_visits_every_pair_once_in_order(experiment):
    dataset = build_dataset(experiment, "val", load_vocabulary(experiment), training=False)
    loader = build_loader(dataset, experiment, False)
    seen = [(m["ann_index"], m["expression_index"]) for b in loader for m in b["metas"]]
    objects = json.loads(experiment.annotation_path.read_text())["val"]
    assert seen == [(i, j) for i, entry in enumerate(objects) for j in range(len(entry["expressions"]))]


def test_evaluation_shards_cover_every_index_exactly_once():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_drop_last_drops_only_the_short_final_batch():
    batch_sampler = EpochBatchSampler(range(10), batch_size=4, drop_last=True)
    assert [len(b) for b in batch_sampler] == [4, 4] and len(batch_sampler) == 2
