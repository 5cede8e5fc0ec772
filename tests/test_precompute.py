"""data.precompute_images: the training images decoded, and the frozen backbone modules run, once per run.

It is an execution choice: the batches a run trains on and what each step computes must be those of the usual
path, which decodes every image again each epoch and runs the whole backbone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import write_params
from seqtr_lib import distributed
from seqtr_lib.config import ConfigError, load_params
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import build_dataset
from seqtr_lib.engine import Trainer
from seqtr_lib.evaluation import move_batch
from seqtr_lib.precompute import PrecomputedImages, kept_modules


@pytest.fixture(scope="module")
def mixed_shapes_root(tiny_data_root, tmp_path_factory) -> Path:
    """The tiny synthetic set with every other image given a grey strip on the right (64 x 104) and every third
    of the rest one below (84 x 64): at data.image_size 96 they become 59 x 96 (padded to 64 x 96), 96 x 73
    (padded to 96 x 96) and 96 x 96, so batches mix padded shapes, and held maps are padded into the batch's."""
    root = tmp_path_factory.mktemp("mixed") / "data"
    shutil.copytree(tiny_data_root, root)
    paths = sorted({str(p) for p in (root / "images").rglob("*.jpg")})
    for index, path in enumerate(paths):
        image = cv2.imread(path)
        if index % 2 == 0:
            image = np.concatenate([image, np.full((64, 40, 3), 128, np.uint8)], axis=1)
        elif index % 3 == 0:
            image = np.concatenate([image, np.full((20, 64, 3), 128, np.uint8)], axis=0)
        cv2.imwrite(path, image)
    return root


def _experiment(root: Path, tmp_path: Path, trainable: int, task: str = "box", **data):
    params = write_params(tmp_path / "params.yaml", root, tmp_path / "out", task=task,
                          model={"trainable_backbone_modules": trainable, "memory_stride": 16,
                                 "target_cell_loss": 1.0, "scene_loss": 1.0, "colour_pathway": 4},
                          data={"image_size": 96, "precompute_images": True, **data})
    return load_params(params)


def _batches(experiment, dataset, epoch: int) -> list[dict]:
    return list(build_loader(dataset, experiment, training=True, epoch=epoch))


@pytest.mark.parametrize("task", ["box", "mask"])
def test_held_batches_are_the_batches_read_from_the_files(mixed_shapes_root, tmp_path, task):
    # shuffle_fraction: the collate function seeds its draws from the samples' rng_key, which must come through
    experiment = _experiment(mixed_shapes_root, tmp_path, trainable=2, task=task, shuffle_fraction=0.5)
    trainer = Trainer(experiment, distributed.setup("cpu"))
    dataset = build_dataset(experiment, "train", trainer.vocabulary, training=True)
    held = PrecomputedImages.build(dataset, trainer.model, trainer.device, channels_last=False, progress=False)
    drawn: dict[int, set[int]] = {}  # ann_index -> expression indices drawn with held images
    for epoch in (0, 1, 2):
        plain = _batches(experiment, dataset, epoch)
        held.attach(dataset)
        keyed = [held.fill(batch) for batch in _batches(experiment, dataset, epoch)]
        dataset.precomputed_shapes = None
        assert len(plain) == len(keyed) > 1
        for batch in keyed:
            for meta in batch["metas"]:
                drawn.setdefault(meta["ann_index"], set()).add(meta["expression_index"])
        shapes = set()
        for a, b in zip(plain, keyed):
            assert b.keys() - a.keys() == {"precomputed_keys"} and a.keys() <= b.keys()
            for key, value in a.items():
                if torch.is_tensor(value):
                    assert torch.equal(value, b[key]), key
                else:
                    assert value == b[key], key
            shapes |= {tuple(m["pad_shape"]) for m in a["metas"]}
        assert shapes == {(64, 96), (96, 96)}  # the batches mix padded shapes
    # Held samples are made once per object: objects drawn again with another expression must show it.
    assert sum(len(indices) > 1 for indices in drawn.values()) >= 3


@pytest.mark.parametrize("trainable", [2, 5])
def test_a_step_on_held_maps_computes_what_a_step_on_pixels_computes(mixed_shapes_root, tmp_path, trainable):
    """Float64, so that the only difference (frozen convolutions run once on other batches of images) stays at
    rounding: each output is a sum of at most a few thousand products per layer through ~25 layers, well under
    1e-9 of its size in float64 (unit roundoff 1.1e-16). A held map in the wrong place, of the wrong image or
    without its padding zeroed moves the outputs by far more."""
    experiment = _experiment(mixed_shapes_root, tmp_path, trainable=trainable)
    trainer = Trainer(experiment, distributed.setup("cpu"))
    model = trainer.model.double()
    assert set(kept_modules(model.backbone)) == ({"stage3", "stage4", "neck"} if trainable == 2 else {"stage3", "stage4"})
    dataset = build_dataset(experiment, "train", trainer.vocabulary, training=True)
    held = PrecomputedImages.build(dataset, model, trainer.device, channels_last=False, batch_size=3, progress=False)
    held.attach(dataset)
    model.train()
    for batch in _batches(experiment, dataset, epoch=0)[:3]:
        batch = move_batch(held.fill(batch), trainer.device, channels_last=False)
        batch["images"] = batch["images"].double()
        inputs = trainer._forward_inputs(batch)
        results = []
        for use_held in (False, True):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)  # the same dropout masks
            with held.frozen_outputs(model.backbone, batch) if use_held else torch.enable_grad():
                outputs = model(**inputs)
            loss = trainer._losses(outputs, batch)["loss"]
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((outputs, loss, grads))
        (plain, plain_loss, plain_grads), (fast, fast_loss, fast_grads) = results
        for key, value in plain.items():
            if value.is_floating_point():  # masked cells are -inf in both
                finite = value.isfinite()
                assert torch.equal(finite, fast[key].isfinite()) and torch.equal(value[~finite], fast[key][~finite])
                difference = (value - fast[key])[finite].abs().max()
                assert difference <= 1e-9 * value[finite].abs().max().clamp(min=1), key
            else:
                assert torch.equal(value, fast[key]), key
        assert abs((plain_loss - fast_loss).item()) <= 1e-9 * abs(plain_loss.item())
        assert plain_grads.keys() == fast_grads.keys()
        assert not any(name.startswith(f"backbone.layers.{m}.") for m in model.backbone.frozen_modules
                       for name in plain_grads)
        # Against the largest gradient: rounding in backpropagation scales with the gradients flowing back, and a
        # bias before a BatchNorm has a gradient of 0 up to rounding.
        scale = max(float(grad.abs().max()) for grad in plain_grads.values())
        for name, grad in plain_grads.items():
            assert (grad - fast_grads[name]).abs().max() <= 1e-9 * scale, name


def test_the_frozen_modules_come_back_after_a_held_step_even_one_that_raised(mixed_shapes_root, tmp_path):
    experiment = _experiment(mixed_shapes_root, tmp_path, trainable=2)
    trainer = Trainer(experiment, distributed.setup("cpu"))
    backbone = trainer.model.backbone
    dataset = build_dataset(experiment, "train", trainer.vocabulary, training=True)
    held = PrecomputedImages.build(dataset, trainer.model, trainer.device, channels_last=False, progress=False)
    held.attach(dataset)
    batch = move_batch(held.fill(_batches(experiment, dataset, 0)[0]), trainer.device, channels_last=False)
    before = dict(backbone.layers.named_children())
    with pytest.raises(RuntimeError, match="in the step"):
        with held.frozen_outputs(backbone, batch):
            assert all(backbone.layers.get_submodule(n) is not before[n] for n in backbone.frozen_modules)
            raise RuntimeError("in the step")
    assert dict(backbone.layers.named_children()) == before
    assert all(a is b for a, b in zip(backbone.layers.children(), before.values()))


def test_a_run_with_held_images_trains_like_one_without(mixed_shapes_root, tmp_path, capsys):
    """Two short runs, with and without the option: the same batches and steps, so the same losses up to float32
    rounding (6e-8 relative per operation). Training amplifies such differences step by step, so the runs are 4
    steps long, where they stay within 1e-5 (about 170 units of the last place); a wrong batch or step moves a
    loss by percents."""
    import json

    from seqtr_lib.engine import train

    losses = {}
    for precompute in (False, True):
        (tmp_path / str(precompute)).mkdir()
        experiment = _experiment(mixed_shapes_root, tmp_path / str(precompute), trainable=2,
                                 precompute_images=precompute)
        experiment = load_params(tmp_path / str(precompute) / "params.yaml", ["train.max_steps_per_epoch=2"])
        train(experiment)
        log = (experiment.run_dir / "log.jsonl").read_text().splitlines()
        losses[precompute] = [json.loads(line)["loss"] for line in log if json.loads(line)["type"] == "step"]
    from seqtr_lib.data.synthetic import split_sizes

    said = capsys.readouterr().out  # the tiny set's images are one per training scene
    held = f"data.precompute_images: {split_sizes(24)['train']} training images held in memory"
    assert said.count(held) == 1, said
    assert said.count(f"data.precompute_images: {split_sizes(24)['val']} val images held in memory") == 1, said
    assert len(losses[True]) == len(losses[False]) == 4
    assert np.allclose(losses[True], losses[False], rtol=1e-5, atol=0)


@pytest.mark.parametrize("task", ["box", "mask"])
def test_validation_on_held_images_grounds_what_validation_on_the_files_grounds(mixed_shapes_root, tmp_path, task,
                                                                               monkeypatch):
    """Each epoch's validation with the val images held (the trainer's, both weights): the same tokens as from the
    files, in float64, where the held maps differ from maps computed in other batches by rounding alone (far under
    the gap between two tokens' scores); a map of another image or in the wrong place changes the tokens."""
    from seqtr_lib import evaluation
    from seqtr_lib.evaluation import evaluate_model

    as_float32 = evaluation.move_batch  # makes float32 images; this model is float64
    monkeypatch.setattr(evaluation, "move_batch", lambda *args: {**(moved := as_float32(*args)),
                                                                 "images": moved["images"].double()})
    experiment = _experiment(mixed_shapes_root, tmp_path, trainable=2, task=task)
    trainer = Trainer(experiment, distributed.setup("cpu"))
    model = trainer.model.double()
    dataset = build_dataset(experiment, "val", trainer.vocabulary, training=False)
    plain = evaluate_model(model, experiment, trainer.vocabulary, "val", trainer.device, dataset=dataset)
    held = PrecomputedImages.build(dataset, model, trainer.device, channels_last=False, batch_size=3, progress=False)
    assert held.split == "val" and len(held.pixels) == len(dataset.image_paths()) > 1
    held.attach(dataset)
    keyed = evaluate_model(model, experiment, trainer.vocabulary, "val", trainer.device, dataset=dataset, held=held)
    assert len(plain["records"]) == len(keyed["records"]) == len(dataset)
    predicted = "pred_box" if task == "box" else "pred_polygon"  # the tokens, dequantised
    for a, b in zip(plain["records"], keyed["records"]):
        assert a[predicted] == b[predicted], (a, b)
    assert plain["metrics"] == keyed["metrics"]


@pytest.mark.parametrize("setting", ["data.lsj=true", "data.zoom_out.probability=0.5", "data.device_transforms=true",
                                     "train.compile=true"])
def test_precompute_refuses_what_changes_an_image_per_sample(tiny_data_root, tmp_path, setting):
    params = write_params(tmp_path / "params.yaml", tiny_data_root, tmp_path / "out",
                          data={"precompute_images": True})
    with pytest.raises(ConfigError, match="data.precompute_images"):
        load_params(params, [setting])
