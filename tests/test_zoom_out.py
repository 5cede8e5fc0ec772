"""data.zoom_out: the synthetic scene placed on a larger grey canvas, its targets moved with it, region words kept true."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import yaml

from conftest import ROOT, write_params
from seqtr_lib.config import ConfigError, ZoomOutConfig, experiment_from_dict, load_params
from seqtr_lib.data import transforms
from seqtr_lib.data.refer import ReferDataset, read_annotations
from seqtr_lib.data.synthetic import zoom_keeps_denotation
from seqtr_lib.text import Vocabulary

GREY = 100


def _image(height: int, width: int) -> np.ndarray:
    """Every pixel different: channel c of pixel (y, x) holds 1 + 3 * (y * width + x) + c (< 256 for these sizes)."""
    return (1 + np.arange(height * width * 3).reshape(height, width, 3)).astype(np.uint8)


@pytest.mark.parametrize("canvas_shape, offset", [((4, 9), (3, 0)), ((9, 5), (0, 4)), ((7, 8), (2, 1))],
                         ids=["wide", "tall", "both"])
def test_place_on_canvas_puts_the_image_box_and_mask_at_the_offset(canvas_shape, offset):
    image = _image(4, 5)
    box = np.array([1.0, 2.0, 3.5, 3.0])
    mask = np.zeros((4, 5), np.uint8)
    mask[1, 2] = mask[3, 4] = 1
    placed, moved_box, padded = transforms.place_on_canvas(image, box, mask, transforms.Canvas(canvas_shape, offset,
                                                                                               GREY))
    dx, dy = offset
    assert placed.shape == (*canvas_shape, 3) and padded.shape == canvas_shape
    for y in range(canvas_shape[0]):
        for x in range(canvas_shape[1]):
            inside = 0 <= y - dy < 4 and 0 <= x - dx < 5
            expected = image[y - dy, x - dx] if inside else [GREY] * 3
            assert placed[y, x].tolist() == list(expected), (y, x)
    assert moved_box.tolist() == [1.0 + dx, 2.0 + dy, 3.5 + dx, 3.0 + dy]
    assert sorted(zip(*np.nonzero(padded))) == [(1 + dy, 2 + dx), (3 + dy, 4 + dx)]


def test_draw_canvas_keeps_to_its_bounds_varies_the_shape_and_repeats_for_a_seed():
    rng = np.random.default_rng(0)
    canvases = [transforms.draw_canvas((40, 50), 1.5, (70, 180), rng) for _ in range(200)]
    for canvas in canvases:
        (height, width), (dx, dy) = canvas.shape, canvas.offset
        assert 40 <= height <= 60 and 50 <= width <= 75
        assert 0 <= dx <= width - 50 and 0 <= dy <= height - 40 and 70 <= canvas.grey <= 180
    ratios = [c.shape[1] / c.shape[0] for c in canvases]  # the image's own is 1.25
    assert min(ratios) < 1.25 - 0.2 and max(ratios) > 1.25 + 0.2  # taller and wider canvases both occur
    again = np.random.default_rng(0)
    assert [transforms.draw_canvas((40, 50), 1.5, (70, 180), again) for _ in range(200)] == canvases
    assert transforms.draw_canvas((40, 50), 1.0, (70, 180), rng).shape == (40, 50)


def _thing(color: str, kind: str, center: tuple[float, float], radius: float = 8.0) -> dict:
    x, y = center
    return {"color": color, "kind": kind, "size": "medium", "radius": radius, "center": [x, y],
            "bbox": [x - radius, y - radius, 2 * radius, 2 * radius], "area": 100}


# A 90 px scene: region thirds end at 30 and 60 px, the margin is 0.04 * 90 = 3.6 px. The target (index 0) lies
# clearly in the left third, a second red circle in the middle, a blue square on the right.
SCENE = [_thing("red", "circle", (20, 45)), _thing("red", "circle", (45, 70)), _thing("blue", "square", (75, 20))]
ANNOTATION = {"image_id": 0, "height": 90, "width": 90, "object_index": 0, "scene": SCENE}


@pytest.mark.parametrize("canvas_shape, offset, kept", [
    ((90, 90), (0, 0), True),      # the scene's own frame
    ((90, 120), (0, 0), True),     # left third now ends at 40: target at 20 in it by 20, the middle circle out by 5
    ((90, 180), (0, 0), False),    # left third ends at 60: the middle circle (45) is in it too
    ((90, 120), (30, 0), False),   # the target moves to 50, out of the left third of 120
    ((180, 90), (0, 90), True),    # a taller canvas: left and right read the width only
])
def test_a_region_expression_is_kept_exactly_when_the_canvas_keeps_its_referent(canvas_shape, offset, kept):
    assert zoom_keeps_denotation("the red circle on the left", ANNOTATION, canvas_shape, offset) is kept


def test_words_that_compare_objects_hold_on_any_canvas_and_top_bottom_read_the_height():
    for expression in ("the leftmost red circle", "the red circle left of the blue square", "the big red circle"):
        assert zoom_keeps_denotation(expression, ANNOTATION, (90, 180), (90, 0))
    # "at the top": the top third of the height. The blue square (y 20) keeps it on a wider canvas, not on one
    # twice as tall with the scene at the bottom (y 110 of 180).
    assert zoom_keeps_denotation("the blue square at the top", {**ANNOTATION, "object_index": 2}, (90, 180), (90, 0))
    assert not zoom_keeps_denotation("the blue square at the top", {**ANNOTATION, "object_index": 2}, (180, 90),
                                     (0, 90))
    # A region phrase the grammar does not make cannot be read again: never zoomed.
    assert not zoom_keeps_denotation("the small red circle on the left", ANNOTATION, (90, 90), (0, 0))


def _one_scene_root(tmp_path: Path, expression: str) -> Path:
    """A data_root with the hand-built SCENE as its only training image (shapes drawn in their colours)."""
    image = np.full((90, 90, 3), 128, np.uint8)
    for thing in SCENE:
        colour = {"red": (220, 40, 40), "blue": (40, 90, 230)}[thing["color"]]
        cv2.circle(image, tuple(int(v) for v in thing["center"]), int(thing["radius"]), colour, -1)
    (tmp_path / "images" / "synthetic").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "synthetic" / "0.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    x, y, w, h = SCENE[0]["bbox"]
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    annotation = {**ANNOTATION, "bbox": SCENE[0]["bbox"], "mask": [polygon], "expressions": [expression],
                  "color": "red", "category": "circle"}
    (tmp_path / "annotations" / "synthetic").mkdir(parents=True)
    (tmp_path / "annotations" / "synthetic" / "instances.json").write_text(json.dumps({"train": [annotation]}))
    return tmp_path


def test_the_loader_zooms_a_region_expression_only_where_the_canvas_keeps_its_referent(tmp_path):
    root = _one_scene_root(tmp_path, "the red circle on the left")
    dataset = ReferDataset(root, "synthetic", "train", "box", Vocabulary.build(["the red circle on the left"]),
                           training=True, image_size=96, lsj=False, zoom_out_probability=1.0, zoom_out_max_factor=2.0)
    outcomes = set()
    for epoch in range(60):
        sample = dataset[epoch, 0]
        # The canvas each sample was offered, replayed from its generator (seed 0, epoch, index 0): the expression
        # (one to choose from), whether to zoom (always, at probability 1), then the canvas.
        rng = np.random.default_rng((0, epoch, 0))
        rng.integers(1), rng.random()
        canvas = transforms.draw_canvas((90, 90), 2.0, (70, 180), rng)
        dx, width = canvas.offset[0], canvas.shape[1]
        # "on the left", read by hand in the canvas: the target (x 20) inside the left third by more than the
        # margin, the middle red circle (x 45) outside it by more than the margin.
        third, margin = width / 3, 3.6
        keeps = 20 + dx < third - margin and 45 + dx > third + margin
        zoom = sample["meta"]["zoom_out"]
        if keeps:
            assert zoom == {"shape": canvas.shape, "offset": canvas.offset, "grey": canvas.grey}
            assert sample["meta"]["ori_shape"] == canvas.shape
        else:
            assert zoom is None and sample["meta"]["ori_shape"] == (90, 90)
        outcomes.add(keeps)
    assert outcomes == {True, False}  # both happen in 60 draws of a canvas up to 180 px wide


def _resized_shape(canvas_shape: tuple[int, int], image_size: int) -> tuple[int, int]:
    """The test-time resize: long side to image_size, each side rounded half up."""
    scale = image_size / max(canvas_shape)
    return tuple(int(side * scale + 0.5) for side in canvas_shape)


def test_zoomed_samples_carry_box_mask_and_scene_targets_moved_by_the_offset(tiny_data_root):
    document = read_annotations(tiny_data_root / "annotations" / "synthetic" / "instances.json")
    vocabulary = Vocabulary.build(e for a in document["train"] for e in a["expressions"])
    dataset = ReferDataset(tiny_data_root, "synthetic", "train", "multi", vocabulary, training=True, image_size=64,
                           lsj=False, num_ray=6, scene_targets=True, zoom_out_probability=1.0, zoom_out_max_factor=2.0,
                           seed=4)
    shapes, grey_pixels = set(), 0
    for index in range(len(dataset)):
        sample, annotation = dataset[index], document["train"][index]
        zoom = sample["meta"]["zoom_out"]
        if zoom is None:
            continue
        (height, width), (dx, dy), grey = zoom["shape"], zoom["offset"], zoom["grey"]
        shapes.add("wide" if width > height else "tall" if height > width else "square")
        resized_h, resized_w = _resized_shape((height, width), 64)
        sx, sy = resized_w / width, resized_h / height
        x, y, w, h = annotation["bbox"]  # the right and bottom edges clipped to the scene's last pixel, 63
        expected_box = [(x + dx) * sx, (y + dy) * sy, (min(x + w, 63) + dx) * sx, (min(y + h, 63) + dy) * sy]
        np.testing.assert_allclose(sample["box"], expected_box, rtol=0, atol=1e-4)  # float32 of values < 64
        expected_centres = [((t["bbox"][0] + t["bbox"][2] / 2 + dx) * sx, (t["bbox"][1] + t["bbox"][3] / 2 + dy) * sy)
                            for t in annotation["scene"]]
        np.testing.assert_allclose(sample["scene_centres"], expected_centres, rtol=0, atol=1e-4)
        # The mask at the canvas size: the annotation's polygons rasterised, padded by the offset.
        original = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(annotation["mask"], 64, 64)))
        canvas_mask = mask_utils.decode(sample["meta"]["gt_mask_rle"])
        assert canvas_mask.shape == (height, width) and int(canvas_mask.sum()) == int(original.sum())
        assert (canvas_mask[dy:dy + 64, dx:dx + 64] == original).all()
        # The resized image: grey where every input pixel it blends lies on the canvas's grey. A bilinear
        # antialiased shrink by s reads input pixels within 1/s + 1 of an output pixel's centre; a constant
        # input gives the constant, up to the one-level rounding of the uint8 kernel.
        image = sample["image"].permute(1, 2, 0).numpy().astype(int)
        reach = 1 / min(sx, sy) + 1
        ys, xs = np.mgrid[0:resized_h, 0:resized_w]
        source_x, source_y = (xs + 0.5) / sx, (ys + 0.5) / sy
        on_grey = ((source_x + reach < dx) | (source_x - reach > dx + 64)
                   | (source_y + reach < dy) | (source_y - reach > dy + 64))
        assert (np.abs(image[on_grey] - grey) <= 1).all()  # a canvas close to the image's size may have no such pixel
        grey_pixels += int(on_grey.sum())
        # ... and the scene where it was placed: its middle pixel differs from the grey somewhere in a 5 x 5 patch.
        centre_x, centre_y = int((dx + 32) * sx), int((dy + 32) * sy)
        assert (np.abs(image[centre_y - 2:centre_y + 3, centre_x - 2:centre_x + 3] - grey) > 1).any()
    assert {"wide", "tall"} <= shapes and grey_pixels > 0


def test_the_same_seed_gives_the_same_zoomed_batches_and_another_seed_others(tiny_data_root, tmp_path):
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset, load_vocabulary

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", task="mask",
                          data={"zoom_out": {"probability": 0.8, "max_factor": 1.6}})

    def batches(seed: int) -> list:
        experiment = load_params(params, [f"train.seed={seed}"])
        dataset = build_dataset(experiment, "train", load_vocabulary(experiment), training=True)
        loader = build_loader(dataset, experiment, training=True, epoch=1)
        return [(batch["images"].clone(), [m.get("zoom_out") for m in batch["metas"]]) for batch in loader]

    first, again, other = batches(5), batches(5), batches(6)
    assert len(first) == len(again)
    for (images, zooms), (images_again, zooms_again) in zip(first, again):
        assert zooms == zooms_again and images.equal(images_again)
    assert any(zoom is not None for _, zooms in first for zoom in zooms)
    assert [z for _, zs in first for z in zs] != [z for _, zs in other for z in zs]


def test_with_zoom_out_off_a_sample_draws_nothing_more_than_before(tiny_data_root):
    """Off, the generator of a sample (seed, epoch, index) goes from the expression straight to the LSJ scale, as
    before the option existed: the scale redrawn here by hand matches the sample's geometry."""
    document = read_annotations(tiny_data_root / "annotations" / "synthetic" / "instances.json")
    vocabulary = Vocabulary.build(e for a in document["train"] for e in a["expressions"])
    dataset = ReferDataset(tiny_data_root, "synthetic", "train", "box", vocabulary, training=True, image_size=64,
                           lsj=True, seed=9)
    for index in range(10):
        sample = dataset[2, index]
        rng = np.random.default_rng((9, 2, index))
        assert sample["meta"]["expression_index"] == int(rng.integers(len(document["train"][index]["expressions"])))
        jitter = rng.uniform(0.3, 1.4)
        assert sample["meta"]["scale_factor"][0] == int(64 * jitter + 0.5) / 64
        assert "zoom_out" not in sample["meta"]


@pytest.mark.parametrize("params", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_params_file_keeps_zoom_out_off(params):
    assert experiment_from_dict(yaml.safe_load(params.read_text()), str(params)).data.zoom_out == ZoomOutConfig()


@pytest.mark.parametrize("override, message", [
    (["data.zoom_out.probability=1.5"], "data.zoom_out.probability = 1.5 is invalid: it must be in"),
    (["data.zoom_out.max_factor=0.5"], "data.zoom_out.max_factor = 0.5 is invalid: it must be at least 1"),
    (["data.zoom_out.probability=0.5", "data.dataset=refcoco-unc"], "needs the synthetic set"),
    (["data.zoom_out.probability=0.5", "data.device_transforms=true"], "which data.device_transforms skips"),
    (["data.zoom_out.probabilty=0.5"], "did you mean 'data.zoom_out.probability'"),
])
def test_bad_zoom_out_settings_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(None, override)


def test_a_tiny_training_run_with_zoom_out_on_trains(tiny_data_root, tmp_path):
    from seqtr_lib import engine

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", task="multi",
                          model={"scene_loss": 1.0},
                          data={"zoom_out": {"probability": 1.0, "max_factor": 2.0}},
                          train={"epochs": 1, "max_steps_per_epoch": 3, "val_limit": 8})
    engine.train(load_params(params))
    lines = [json.loads(line) for line in (tmp_path / "out" / "tiny" / "log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if line.get("type") == "step"]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_zoom_out_on_a_set_without_scene_indices_fails_naming_the_field(tmp_path):
    from seqtr_lib.data.refer import AnnotationError

    root = _one_scene_root(tmp_path, "the red circle on the left")
    path = root / "annotations" / "synthetic" / "instances.json"
    document = json.loads(path.read_text())
    del document["train"][0]["object_index"]
    path.write_text(json.dumps(document))
    vocabulary = Vocabulary.build(["the red circle on the left"])
    with pytest.raises(AnnotationError, match="annotation 0 has no 'object_index'.*make-synthetic"):
        ReferDataset(root, "synthetic", "train", "box", vocabulary, training=True, zoom_out_probability=0.5)
    # Off, or in evaluation, the field is not read.
    ReferDataset(root, "synthetic", "train", "box", vocabulary, training=True)
    ReferDataset(root, "synthetic", "train", "box", vocabulary, training=False, zoom_out_probability=0.5)
