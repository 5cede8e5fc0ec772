"""data.device_transforms: workers send JPEG bytes, the training device decodes, resizes, crops and pads.

Run here on CPU tensors (the same code runs on CUDA in benchmarks/gpu_check.sh). The host path is the
reference: the device path must give the same geometry and targets, and pixels within resampling tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seqtr_lib.data.device_images import batch_images, decode_images, read_encoded_image, transform_image
from seqtr_lib.data.loader import Collate
from seqtr_lib.data.refer import ReferDataset
from seqtr_lib.codec import SequenceCodec, TokenLayout
from seqtr_lib.evaluation import move_batch
from seqtr_lib.images import BadImageError
from seqtr_lib.text import Vocabulary

CPU = torch.device("cpu")


def datasets(root, task="multi", training=True, lsj=True, image_size=96):
    """The same split read by the host path and by the device path."""
    options = dict(training=training, image_size=image_size, lsj=lsj, num_ray=6, seed=5)
    vocabulary = Vocabulary.build([])
    return (ReferDataset(root, "synthetic", "train", task, vocabulary, **options),
            ReferDataset(root, "synthetic", "train", task, vocabulary, device_transforms=True, **options))


def collate(task="multi", device_transforms=False):
    return Collate(SequenceCodec(TokenLayout(task, 64, 6), "relative", 96), device_transforms=device_transforms)


def assert_close_pixels(device: torch.Tensor, host: torch.Tensor) -> None:
    """Another decoder and a float resize: at most a few levels anywhere, under one level on average."""
    difference = (device.int() - host.int()).abs()
    assert device.shape == host.shape and device.dtype == host.dtype == torch.uint8
    assert difference.float().mean() < 1.0, difference.float().mean()
    assert difference.max() <= 8, difference.max()


def test_device_samples_draw_the_same_geometry_and_targets_as_the_host(tiny_data_root):
    host, device = datasets(tiny_data_root)
    crops = 0
    for key in [(epoch, index) for epoch in range(3) for index in range(len(host))]:
        expected, got = host[key], device[key]
        assert got["meta"] == expected["meta"]
        for field in ("box", "vertices", "target_box", "expression_ids"):
            np.testing.assert_array_equal(got[field], expected[field])
        assert got["image"].ndim == 1 and got["image"].dtype == torch.uint8  # the JPEG file's bytes
        crops += got["meta"]["crop"] != (0, 0)
    assert crops > 0  # some draws zoomed in and cropped, so the crop path was compared too


@pytest.mark.parametrize("training", [True, False])
def test_a_device_batch_matches_the_host_batch(tiny_data_root, training):
    host, device = datasets(tiny_data_root, training=training)
    keys = [(1, i) for i in range(8)]
    host_batch = collate()([host[k] for k in keys])
    device_batch = collate(device_transforms=True)([device[k] for k in keys])
    assert "images" not in device_batch and len(device_batch["encoded_images"]) == 8
    assert torch.equal(device_batch["pad_mask"], host_batch["pad_mask"])
    for name in ("box_tokens", "mask_tokens", "expression_ids", "target_box"):
        assert torch.equal(device_batch[name], host_batch[name]), name
    moved = move_batch(device_batch, CPU, channels_last=False)
    assert "encoded_images" not in moved and moved["images"].dtype == torch.float32
    assert_close_pixels(moved["images"].to(torch.uint8), host_batch["images"])
    # The padding is exactly zero, as the host path pads.
    assert (moved["images"].permute(1, 0, 2, 3)[:, host_batch["pad_mask"]] == 0).all()


def test_transform_image_resizes_then_cuts_the_window_at_the_crop():
    # A horizontal ramp: after a 2x bilinear upscale, column c holds about c / 2.
    ramp = torch.arange(16, dtype=torch.float32).mul(10).expand(3, 8, 16).to(torch.uint8)
    out = transform_image(ramp, resized=(16, 32), crop=(6, 2), img_shape=(10, 20))
    assert out.shape == (3, 10, 20)
    # Output column j is resized column 6 + j, whose centre maps to source x = (6 + j + 0.5) / 2 - 0.5.
    source_x = (6 + np.arange(20) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(out[0, 0].numpy(), np.clip(source_x, 0, 15) * 10, atol=1)  # uint8: whole levels
    same = transform_image(ramp, resized=(8, 16), crop=(0, 0), img_shape=(8, 16))
    assert torch.equal(same, ramp)  # no resize when the size is kept


def test_png_and_exif_rotated_jpegs_are_decoded_by_the_worker(tmp_path):
    upright = np.zeros((20, 30, 3), dtype=np.uint8)
    upright[2:6, 20:28] = (250, 10, 10)
    png = tmp_path / "a.png"
    Image.fromarray(upright).save(png)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; "rotate 90 degrees clockwise to display"
    rotated = tmp_path / "b.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(rotated, quality=95, exif=exif)
    plain = tmp_path / "c.jpg"
    Image.fromarray(upright).save(plain, quality=95)
    for path, decoded_by_worker in ((png, True), (rotated, True), (plain, False)):
        payload, shape = read_encoded_image(path)
        assert shape == (20, 30)
        assert (payload.ndim == 3) == decoded_by_worker, path.name
        image = decode_images([payload], CPU)[0]
        assert image.shape == (3, 20, 30)
        assert image[0, 3, 24] > 200 and image[0, 15, 5] < 40  # upright: the red patch top-right


def test_a_grayscale_jpeg_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.fromarray(np.full((10, 12), 77, dtype=np.uint8)).save(path, quality=100)
    payload, shape = read_encoded_image(path)
    assert payload.ndim == 1 and shape == (10, 12)
    image = decode_images([payload], CPU)[0]
    assert image.shape == (3, 10, 12) and (image.int() - 77).abs().max() <= 1


def test_an_undecodable_image_in_a_batch_is_named(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    payload, _ = read_encoded_image(good)
    broken = torch.cat([payload[:20], torch.zeros(50, dtype=torch.uint8)])  # a JPEG header, then nothing
    with pytest.raises(BadImageError, match="broken.jpg"):
        decode_images([payload, broken], CPU, ["good.jpg", "broken.jpg"])


def test_a_header_that_lies_about_the_size_is_reported(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(np.zeros((8, 10, 3), dtype=np.uint8)).save(path)
    payload, _ = read_encoded_image(path)
    meta = {"image_path": str(path), "ori_shape": (9, 10), "img_shape": (9, 10), "pad_shape": (32, 32),
            "scale_factor": (1.0, 1.0), "crop": (0, 0)}
    with pytest.raises(BadImageError, match=r"x\.jpg.*device_transforms: false"):
        batch_images([payload], [meta], (32, 32), CPU)


def test_training_and_evaluation_run_on_device_decoded_batches_from_loader_workers(tiny_data_root, tmp_path):
    from conftest import write_params
    from seqtr_lib.config import load_params
    from seqtr_lib.engine import train

    losses = {}
    for device_transforms in (False, True):
        out = tmp_path / str(device_transforms)
        params = write_params(tmp_path / f"{device_transforms}.yaml", tiny_data_root, out, task="multi",
                              data={"lsj": True, "num_workers": 2, "device_transforms": device_transforms},
                              train={"epochs": 1, "max_steps_per_epoch": 3, "val_limit": 8})
        result = train(load_params(params))
        assert np.isfinite(result["best_score"])  # validation ran on device-decoded batches too
        records = [json.loads(line) for line in (out / "tiny" / "log.jsonl").read_text().splitlines()]
        losses[device_transforms] = [r["loss"] for r in records if r["type"] == "step"]
    # The same samples and draws; only the pixels differ by resampling, so the first losses nearly agree.
    assert len(losses[True]) == len(losses[False]) == 3
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.05)
