"""Specifications for the synthetic shapes grounding dataset (seqtr_lib.data.synthetic) and its contact sheet.

Expressions are re-checked by an evaluator written here from the wording alone: crisp thresholds
(image thirds, strict extremes, "left of" = more left than up or down), stored scene attributes,
no code shared with the generator's evaluator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest

from seqtr_lib.data.datasets import annotation_path
from seqtr_lib.data.synthetic import COLORS, HELD_OUT_PAIRS, generate_dataset, split_sizes
from seqtr_lib.samples import contact_sheet

# pycocotools' decode trips a numpy 2 deprecation warning on every call; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NUM_IMAGES, IMAGE_SIZE, SEED = 32, 96, 5
SPLIT_NAMES = {"train", "val", "testA", "testB"}

# --- an independent reading of the grammar ---------------------------------------------------

COLOR_WORDS = {"red", "green", "blue", "yellow", "purple", "cyan"}
KIND_WORDS = {"circle", "square", "triangle", "star", "diamond"}
SIZE_RANK = {"small": 0, "medium": 1, "large": 2}
SIZE_SIGN = {"big": 1, "large": 1, "small": -1, "little": -1}
# extreme word -> (coordinate index, sign): the object maximising sign * centre[index]
EXTREMES = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "highest": (1, -1),
            "bottommost": (1, 1), "lowest": (1, 1)}
REGIONS = {  # phrase -> test on the centre (x, y) of an image of side s
    "on the left": lambda x, y, s: x < s / 3,
    "on the right": lambda x, y, s: x > 2 * s / 3,
    "at the top": lambda x, y, s: y < s / 3,
    "at the bottom": lambda x, y, s: y > 2 * s / 3,
    "at the top left": lambda x, y, s: y < s / 3 and x < s / 3,
    "at the top right": lambda x, y, s: y < s / 3 and x > 2 * s / 3,
    "at the bottom left": lambda x, y, s: y > 2 * s / 3 and x < s / 3,
    "at the bottom right": lambda x, y, s: y > 2 * s / 3 and x > 2 * s / 3,
}
RELATIONS = {  # phrase -> test on (object centre, landmark centre): mostly in that direction
    "to the left of": lambda o, l: l[0] - o[0] > abs(o[1] - l[1]),
    "left of": lambda o, l: l[0] - o[0] > abs(o[1] - l[1]),
    "to the right of": lambda o, l: o[0] - l[0] > abs(o[1] - l[1]),
    "right of": lambda o, l: o[0] - l[0] > abs(o[1] - l[1]),
    "above": lambda o, l: l[1] - o[1] > abs(o[0] - l[0]),
    "below": lambda o, l: o[1] - l[1] > abs(o[0] - l[0]),
    "under": lambda o, l: o[1] - l[1] > abs(o[0] - l[0]),
}


def parse_noun_phrase(words: list[str]) -> dict:
    """'the [extreme] [size] [colour] kind|shape' -> its parts; every word must be understood."""
    assert words[0] == "the", words
    phrase = {"color": None, "kind": None, "size": None, "extreme": None}
    for word in words[1:-1]:
        slot = ("color" if word in COLOR_WORDS else "size" if word in SIZE_SIGN
                else "extreme" if word in EXTREMES else None)
        assert slot is not None and phrase[slot] is None, f"unexpected word {word!r} in {words}"
        phrase[slot] = word
    assert words[-1] in KIND_WORDS | {"shape"}, f"no kind at the end of {words}"
    phrase["kind"] = None if words[-1] == "shape" else words[-1]
    return phrase


def parse(expression: str) -> tuple[dict, str | None, str | None, dict | None]:
    """(noun phrase, region phrase, relation phrase, landmark noun phrase)."""
    relation = landmark = region = None
    head = expression
    for phrase in sorted(RELATIONS, key=len, reverse=True):
        if f" {phrase} the " in expression:
            head, tail = expression.split(f" {phrase} ", 1)
            relation, landmark = phrase, parse_noun_phrase(tail.split())
            assert not (landmark["size"] or landmark["extreme"]), expression
            break
    for phrase in REGIONS:
        if head.endswith(" " + phrase):
            head, region = head[: -len(phrase) - 1], phrase
    return parse_noun_phrase(head.split()), region, relation, landmark


def matches(phrase: dict, scene: list[dict]) -> list[int]:
    """Indices of scene objects that a noun phrase describes."""
    found = [i for i, o in enumerate(scene) if phrase["color"] in (None, o["color"])
             and phrase["kind"] in (None, o["kind"])]
    if phrase["size"]:
        sign = SIZE_SIGN[phrase["size"]]
        best = max(sign * SIZE_RANK[scene[i]["size"]] for i in found)
        found = [i for i in found if sign * SIZE_RANK[scene[i]["size"]] == best]
    if phrase["extreme"]:
        axis, sign = EXTREMES[phrase["extreme"]]
        best = max(sign * scene[i]["center"][axis] for i in found)
        found = [i for i in found if sign * scene[i]["center"][axis] == best]
    return found


def referents(expression: str, scene: list[dict], image_size: int) -> list[int]:
    """Indices of scene objects that an expression describes."""
    phrase, region, relation, landmark_phrase = parse(expression)
    found = matches(phrase, scene)
    if region:
        found = [i for i in found if REGIONS[region](*scene[i]["center"], image_size)]
    if relation:
        landmarks = matches(landmark_phrase, scene)
        if len(landmarks) != 1:
            return []
        landmark = scene[landmarks[0]]["center"]
        found = [i for i in found if i != landmarks[0] and RELATIONS[relation](scene[i]["center"], landmark)]
    return found


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, num_images=NUM_IMAGES, seed=SEED, image_size=IMAGE_SIZE, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def dataset(data_root) -> dict[str, list[dict]]:
    return json.loads(annotation_path(data_root, "synthetic").read_text())


@pytest.fixture(scope="module")
def annotations(dataset) -> list[dict]:
    return [ann for split in dataset.values() for ann in split]


def decode(ann: dict) -> np.ndarray:
    rles = mask_utils.frPyObjects(ann["mask"], ann["height"], ann["width"])
    return mask_utils.decode(mask_utils.merge(rles))


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- specifications --------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_in_another_process_with_two_workers(data_root, tmp_path):
    # Another interpreter has another string-hash seed: set iteration order must not leak into the data.
    code = (f"from seqtr_lib.data.synthetic import generate_dataset; generate_dataset({str(tmp_path)!r}, "
            f"num_images={NUM_IMAGES}, seed={SEED}, image_size={IMAGE_SIZE}, workers=2, progress=False)")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    first, second = file_bytes(data_root), file_bytes(tmp_path)
    assert len(first) == NUM_IMAGES + 1
    assert first == second


def test_another_seed_gives_other_scenes(data_root, tmp_path):
    generate_dataset(tmp_path, num_images=NUM_IMAGES, seed=SEED + 1, image_size=IMAGE_SIZE, workers=1,
                     progress=False)
    first, second = file_bytes(data_root), file_bytes(tmp_path)
    json_name = str(annotation_path(".", "synthetic").relative_to("."))
    assert first[json_name] != second[json_name]
    assert sum(first[name] != second[name] for name in first) == len(first)


def test_split_sizes_are_70_10_10_10_percent_with_at_least_one_image_each():
    assert split_sizes(2000) == {"train": 1400, "val": 200, "testA": 200, "testB": 200}
    assert split_sizes(4) == {"train": 1, "val": 1, "testA": 1, "testB": 1}
    assert split_sizes(32) == {"train": 23, "val": 3, "testA": 3, "testB": 3}


def test_every_split_is_annotated_and_image_ids_do_not_cross_splits(dataset):
    assert set(dataset) == SPLIT_NAMES
    image_ids = {name: {ann["image_id"] for ann in anns} for name, anns in dataset.items()}
    assert all(image_ids.values())
    assert sum(len(ids) for ids in image_ids.values()) == NUM_IMAGES  # every image has an annotated object
    assert len(set().union(*image_ids.values())) == NUM_IMAGES


def test_every_image_file_decodes_with_the_annotated_size(data_root, annotations):
    for ann in annotations:
        image = cv2.imread(str(data_root / "images" / "synthetic" / f"{ann['image_id']}.jpg"))
        assert image is not None, ann["image_id"]
        assert image.shape == (ann["height"], ann["width"], 3) == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_every_expression_denotes_exactly_its_target(annotations):
    checked = 0
    for ann in annotations:
        assert 1 <= len(ann["expressions"]) <= 4
        assert len(set(ann["expressions"])) == len(ann["expressions"])
        for expression in ann["expressions"]:
            assert referents(expression, ann["scene"], ann["width"]) == [ann["object_index"]], \
                (ann["image_id"], expression, ann["scene"])
            checked += 1
    assert checked >= 3 * len(annotations)


def test_expressions_cover_all_four_types_with_matching_wording(annotations):
    seen = set()
    for ann in annotations:
        assert len(ann["expression_types"]) == len(ann["expressions"])
        for expression, kind in zip(ann["expressions"], ann["expression_types"]):
            phrase, region, relation, _ = parse(expression)
            wording = ("relation" if relation else "position" if region or phrase["extreme"]
                       else "size" if phrase["size"] else "attribute")
            assert kind == wording, expression
            seen.add(kind)
    assert seen == {"attribute", "size", "position", "relation"}


def test_distractors_make_both_colour_and_kind_necessary(annotations):
    both_needed = 0
    for ann in annotations:
        for expression, kind in zip(ann["expressions"], ann["expression_types"]):
            words = expression.split()
            if kind == "attribute" and len(words) == 3 and words[1] in COLOR_WORDS:
                without_color = referents(f"the {words[2]}", ann["scene"], ann["width"])
                without_kind = referents(f"the {words[1]} shape", ann["scene"], ann["width"])
                both_needed += len(without_color) > 1 and len(without_kind) > 1
    assert both_needed >= 5


def test_annotation_attributes_agree_with_the_scene(dataset):
    scenes = {}
    for ann in (a for anns in dataset.values() for a in anns):
        target = ann["scene"][ann["object_index"]]
        assert (ann["color"], ann["category"], ann["size"]) == (target["color"], target["kind"], target["size"])
        assert ann["bbox"] == target["bbox"]
        assert scenes.setdefault(ann["image_id"], ann["scene"]) == ann["scene"]


def test_box_is_the_tight_box_of_the_polygon_mask(annotations):
    for ann in annotations:
        assert all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in ann["mask"])
        ys, xs = np.nonzero(decode(ann))
        x, y, w, h = ann["bbox"]
        assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x, y, x + w, y + h], atol=1)


def test_masks_are_the_visible_parts_of_overlapping_objects(data_root, dataset):
    overlapping_boxes = 0
    for anns in dataset.values():
        by_image: dict[int, list[dict]] = {}
        for ann in anns:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for a, b in (pair for group in by_image.values() for pair in combinations(group, 2)):
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
            overlapping_boxes += min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)
            assert (decode(a) & decode(b)).sum() <= 2, (a["image_id"], a["object_index"], b["object_index"])
    assert overlapping_boxes >= 3


def test_mask_pixels_show_the_annotated_colour(data_root, annotations):
    palette_names = list(COLORS)
    palette = np.array([COLORS[name] for name in palette_names], dtype=float)
    checked = 0
    for ann in annotations:
        # The dark outline and JPEG ringing sit on the border: look two pixels inside.
        interior = cv2.erode(decode(ann), np.ones((5, 5), np.uint8)).astype(bool)
        if interior.sum() < 4:
            continue
        image = cv2.imread(str(data_root / "images" / "synthetic" / f"{ann['image_id']}.jpg"))[:, :, ::-1]
        pixels = image[interior].astype(float)
        nearest = np.argmin(((pixels[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
        assert np.mean(nearest == palette_names.index(ann["color"])) > 0.9, (ann["image_id"], ann["color"])
        checked += 1
    assert checked >= 0.8 * len(annotations)


def test_testb_targets_are_colour_kind_pairs_never_seen_in_other_splits(dataset):
    seen_pairs = {(o["color"], o["kind"]) for name in ("train", "val", "testA")
                  for ann in dataset[name] for o in ann["scene"]}
    testb_pairs = {(ann["color"], ann["category"]) for ann in dataset["testB"]}
    assert testb_pairs and testb_pairs <= HELD_OUT_PAIRS
    assert not seen_pairs & HELD_OUT_PAIRS
    # The pairs are new, their parts are not: each held-out colour and kind is seen in training.
    train_colors = {c for c, _ in seen_pairs}
    train_kinds = {k for _, k in seen_pairs}
    assert all(c in train_colors and k in train_kinds for c, k in HELD_OUT_PAIRS)


@pytest.mark.parametrize("argument, value", [("num_images", 3), ("image_size", 32), ("workers", 0), ("seed", -1)])
def test_bad_arguments_are_refused_with_their_name(tmp_path, argument, value):
    arguments = {"num_images": 8, "image_size": 64, "workers": 1, "progress": False, argument: value}
    with pytest.raises(ValueError, match=argument):
        generate_dataset(tmp_path, **arguments)
    assert not annotation_path(tmp_path, "synthetic").exists()


def test_contact_sheet_writes_a_png_grid(data_root, tmp_path):
    out = contact_sheet(data_root, split="val", out_path=tmp_path / "sheet.png", num_samples=6, seed=1)
    assert out == tmp_path / "sheet.png"
    image = cv2.imread(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert image.shape[1] > image.shape[0] > 200  # 4 columns, 2 rows
