"""The gRefCOCO reader (seqtr_lib.data.grefcoco) on a small release written by hand in gRefCOCO's format
(tests/data/grefcoco: six refs over two images, no target, one, two, a bare id, a crowd object beside a
person, and a crowd object alone)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from seqtr_lib.data.grefcoco import GRefCocoError, convert_grefcoco, read_grefcoco
from seqtr_lib.data.refer import AnnotationError, ReferDataset
from seqtr_lib.text import Vocabulary

FIXTURE = Path(__file__).parent / "data" / "grefcoco"
GREFS, INSTANCES = FIXTURE / "grefs(unc).json", FIXTURE / "instances.json"

PERSON_LEFT = ([2, 4, 10, 8], [[2, 4, 12, 4, 12, 12, 2, 12]])  # annotation 101
PERSON_RIGHT = ([30, 10, 20, 16], [[30, 10, 50, 10, 50, 26, 30, 26]])  # annotation 102


def record(ref_id, expressions, ann_ids, objects, image=(9, 40, 60), category_ids=None):
    image_id, height, width = image
    return {"image_id": image_id, "height": height, "width": width, "expressions": expressions,
            "no_target": not ann_ids, "bboxes": [box for box, _ in objects], "masks": [mask for _, mask in objects],
            "category_ids": category_ids or [1] * len(ann_ids), "ann_ids": ann_ids, "ref_id": ref_id}


EXPECTED = {
    "val": [record(0, ["the green bus", "bus on the left"], [], []),
            record(2, ["both people", "two persons"], [101, 102], [PERSON_LEFT, PERSON_RIGHT]),
            record(4, ["everyone"], [102], [PERSON_RIGHT])],  # the crowd annotation 103 left out
    "train": [record(1, ["man on the right"], [102], [PERSON_RIGHT])],  # ref 5 names only the crowd: dropped
    "testA": [record(3, ["red car"], [201], [([5, 5, 10, 10], [[5, 5, 15, 5, 15, 15, 5, 15]])], image=(10, 30, 50),
                     category_ids=[3])],
}


def test_the_fixture_reads_into_one_record_per_ref_with_every_object():
    splits, dropped = read_grefcoco(GREFS, INSTANCES)
    assert splits == EXPECTED and list(splits) == ["val", "train", "testA"]  # the release's order
    assert dropped == 1


def test_raw_sentences_on_request():
    splits, _ = read_grefcoco(GREFS, INSTANCES, expression_field="raw")
    assert splits["train"][0]["expressions"] == ["Man on the right."]
    assert splits["val"][1]["expressions"] == ["both people", "Two persons"]


def test_a_pickled_release_reads_as_the_json_one(tmp_path):
    pickled = tmp_path / "grefs(unc).p"
    pickled.write_bytes(pickle.dumps(json.loads(GREFS.read_text()), protocol=2))
    assert read_grefcoco(pickled, INSTANCES) == (EXPECTED, 1)


def test_convert_writes_our_instances_json_which_the_classic_reader_refuses_with_its_message(tmp_path):
    out = tmp_path / "annotations" / "grefcoco" / "instances.json"
    assert convert_grefcoco(GREFS, INSTANCES, out) == {"val": 3, "train": 1, "testA": 1}
    assert json.loads(out.read_text()) == EXPECTED
    # The classic path is unchanged: one object per record, so a generalised record lacks its 'bbox'.
    with pytest.raises(AnnotationError, match=r"split 'val', annotation 0 has no 'bbox' \(the task needs it\)"):
        ReferDataset(tmp_path, "refcoco-unc", "val", "box", Vocabulary.build([]), annotation_file=out)


def edited_refs(tmp_path: Path, index: int, **fields) -> Path:
    """The fixture's refs with ref ``index`` changed (a field set to None is removed)."""
    refs = json.loads(GREFS.read_text())
    for key, value in fields.items():
        if value is None:
            refs[index].pop(key)
        else:
            refs[index][key] = value
    path = tmp_path / "grefs(unc).json"
    path.write_text(json.dumps(refs))
    return path


@pytest.mark.parametrize("index, fields, message", [
    (1, {"ann_id": None}, r"ref 1 has no 'ann_id'; is this gRefCOCO's grefs file\?"),
    (1, {"ann_id": "102"}, r"ref 1 has ann_id '102'; it must be a list of annotation ids, or \[-1\]"),
    (1, {"ann_id": []}, r"ref 1 has ann_id \[\]"),
    (2, {"ann_id": [-1, 101]}, r"ref 2 has ann_id \[-1, 101\]: -1 \(no target\) may not stand beside"),
    (2, {"no_target": True}, r"ref 2 says no_target True but ann_id \[101, 102\]"),
    (0, {"no_target": False}, r"ref 0 says no_target False but ann_id \[-1\]"),
    (1, {"ann_id": [999]}, r"ref 1: ann_id 999 is not in .*instances.json; use the instances.json of"),
    (1, {"ann_id": [201]}, r"ref 1: annotation 201 belongs to image 10, not to the ref's image 9"),
    (3, {"image_id": 77}, r"ref 3: image_id 77 is not in .*instances.json's images"),
    (2, {"sentences": []}, r"ref 2 has no sentences"),
])
def test_a_malformed_ref_is_named_with_its_file_index_and_fix(tmp_path, index, fields, message):
    with pytest.raises(GRefCocoError, match=r"grefs\(unc\).json, " + message):
        read_grefcoco(edited_refs(tmp_path, index, **fields), INSTANCES)


def test_malformed_files_are_named(tmp_path):
    bad = tmp_path / "grefs(unc).json"
    bad.write_text("{not json")
    with pytest.raises(GRefCocoError, match=r"is not valid JSON .*is this gRefCOCO's grefs\(unc\).json"):
        read_grefcoco(bad, INSTANCES)
    bad.write_text(json.dumps({"refs": []}))
    with pytest.raises(GRefCocoError, match="expected a list of refs at the top level, got dict"):
        read_grefcoco(bad, INSTANCES)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist; download the release"):
        read_grefcoco(tmp_path / "missing.json", INSTANCES)
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": []}))
    with pytest.raises(GRefCocoError, match="not a COCO instances file with 'images' and 'annotations'"):
        read_grefcoco(GREFS, coco)


def test_a_failed_conversion_leaves_the_previous_output(tmp_path):
    out = tmp_path / "instances.json"
    out.write_text("previous")
    with pytest.raises(GRefCocoError):
        convert_grefcoco(edited_refs(tmp_path, 1, ann_id=[999]), INSTANCES, out)
    assert out.read_text() == "previous"


def test_convert_grefcoco_writes_a_dataset_whose_samples_name_every_object_or_none(tmp_path):
    import numpy as np
    from PIL import Image

    from seqtr_lib.cli import main
    from seqtr_lib.data.datasets import annotation_path

    out = annotation_path(tmp_path, "grefcoco")
    out.parent.mkdir(parents=True)
    main(["convert-grefcoco", "--grefs", str(GREFS), "--instances", str(INSTANCES), "--out", str(out)])
    for image_id, (height, width) in {9: (40, 60), 10: (30, 50)}.items():
        path = tmp_path / "images" / "mscoco" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    data = ReferDataset(tmp_path, "grefcoco", "val", "box", Vocabulary.build([]), image_size=120, max_objects=2)
    # val: ref 0 (no target, two sentences), ref 2 (both people, two sentences), ref 4 (one person)
    samples = [data[i] for i in range(len(data))]
    assert [len(s["boxes"]) for s in samples] == [0, 0, 2, 2, 1]
    assert [s["no_target"] for s in samples] == [True, True, False, False, False]
    # The long side 60 -> 120 doubles every coordinate; x2 = x + w, y2 = y + h; row-major: the left person first.
    assert np.allclose(samples[2]["boxes"], [[4, 8, 24, 24], [60, 20, 100, 52]])
    assert samples[0]["meta"]["image_path"].endswith("COCO_train2014_000000000009.jpg")
