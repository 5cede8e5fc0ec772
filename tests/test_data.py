"""ReferDataset over every dataset family's on-disk layout, bad-input handling, and convert-refer."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqtr_lib.config import load_params
from seqtr_lib.data.convert import convert_refer
from seqtr_lib.data.datasets import DATASETS, SYNTHETIC, annotation_path, image_path
from seqtr_lib.data.loader import Collate
from seqtr_lib.data.refer import AnnotationError, ReferDataset, build_dataset, load_vocabulary
from seqtr_lib.images import BadImageError
from seqtr_lib.codec import SequenceCodec, TokenLayout
from seqtr_lib.text import UNK_ID, Vocabulary
from rounding import U32

RED = (230, 20, 20)
# Where each family keeps its images and which splits and max_token it has (the paper's data setup, spelled out
# here independently of seqtr_lib's table).
COCO_NAME = "images/mscoco/train2014/COCO_train2014_{:012d}.jpg"
FAMILIES = {
    "refcoco-unc": (("train", "val", "testA", "testB"), 15, COCO_NAME),
    "refcocoplus-unc": (("train", "val", "testA", "testB"), 15, COCO_NAME),
    "refcocog-umd": (("train", "val", "test"), 20, COCO_NAME),
    "refcocog-google": (("train", "val"), 20, COCO_NAME),
    "referitgame-berkeley": (("train", "val", "test"), 20, "images/saiaprtc12/{}.jpg"),
    "flickr30k": (("train", "val", "test"), 20, "images/flickr30k/{}.jpg"),
    "synthetic": (("train", "val", "testA", "testB"), 20, "images/synthetic/{}.jpg"),
    "grefcoco": (("train", "val", "testA", "testB"), 20, COCO_NAME),  # RefCOCO's images; generalised expressions
}
MIXED_NAMES = {"coco": COCO_NAME, "flickr": "images/flickr30k/{}.jpg", "vg": "images/visual-genome/{}.jpg",
               "saiaprtc12": "images/saiaprtc12/{}.jpg"}


def picture(height: int = 40, width: int = 60, box: tuple[int, int, int, int] = (10, 8, 30, 24)) -> np.ndarray:
    """(H, W, 3) RGB: grey with a red [x1, x2) x [y1, y2) rectangle."""
    image = np.full((height, width, 3), 120, dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = RED
    return image


def save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def annotation(image_id: int, expressions=("the red box", "red thing"), **fields) -> dict:
    entry = {"image_id": image_id, "height": 40, "width": 60, "bbox": [10, 8, 20, 16],
             "mask": [[10, 8, 30, 8, 30, 24, 10, 24]], "expressions": list(expressions)}
    entry.update(fields)
    return entry


def write_annotations(root: Path, dataset: str, splits: dict[str, list[dict]]) -> Path:
    path = root / "annotations" / dataset / "instances.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits))
    return path


def one_image_dataset(root: Path, task: str = "box", image: np.ndarray | None = None, training: bool = False,
                      **fields) -> ReferDataset:
    """A synthetic-layout tree with one annotation (``fields`` override its values) of image 1."""
    save_jpeg(root / "images" / "synthetic" / "1.jpg", picture() if image is None else image)
    write_annotations(root, "synthetic", {"train": [annotation(1, **fields)]})
    return ReferDataset(root, "synthetic", "train", task, Vocabulary.build(["the red box"]), training=training,
                        image_size=64)


@pytest.mark.parametrize("dataset", sorted(FAMILIES))
def test_every_dataset_family_reads_its_on_disk_layout(tmp_path, dataset):
    splits, max_token, name = FAMILIES[dataset]
    content = {}
    for number, split in enumerate(splits):
        image_id = 100 + number
        save_jpeg(tmp_path / name.format(image_id), picture())
        content[split] = [annotation(image_id)]
    write_annotations(tmp_path, dataset, content)
    vocabulary = Vocabulary.build(["the red box", "red thing"])
    for number, split in enumerate(splits):
        data = ReferDataset(tmp_path, dataset, split, "multi", vocabulary, image_size=64)
        assert len(data) == 2  # one object, two expressions
        sample = data[0]
        assert sample["meta"]["image_path"] == str(tmp_path / name.format(100 + number))
        assert sample["expression_ids"].shape == (max_token,)
        assert sample["meta"]["ori_shape"] == (40, 60) and sample["meta"]["img_shape"] == (43, 64)


def test_mixed_routes_each_data_source_to_its_image_folder(tmp_path):
    entries = []
    for image_id, (source, name) in enumerate(MIXED_NAMES.items(), start=7):
        save_jpeg(tmp_path / name.format(image_id), picture())
        entries.append(annotation(image_id, data_source=source))
    write_annotations(tmp_path, "mixed", {"train": entries})
    data = ReferDataset(tmp_path, "mixed", "train", "box", Vocabulary.build([]), training=True, image_size=64)
    assert [data[i]["meta"]["image_path"] for i in range(4)] == [
        str(tmp_path / name.format(image_id)) for image_id, name in enumerate(MIXED_NAMES.values(), start=7)]
    assert data[0]["expression_ids"].shape == (40,)


def test_the_path_rules_name_the_files_the_paper_layout_has():
    assert annotation_path("/d", "refcoco-unc") == Path("/d/annotations/refcoco-unc/instances.json")
    assert annotation_path(Path("rel"), "synthetic") == Path("rel/annotations/synthetic/instances.json")
    assert set(DATASETS) == set(FAMILIES) | {"mixed"}
    for dataset, (splits, max_token, name) in FAMILIES.items():
        assert (DATASETS[dataset].splits, DATASETS[dataset].max_token) == (splits, max_token)
        assert image_path("/d", dataset, {"image_id": 42}) == Path("/d") / name.format(42)
    assert image_path("/d", "refcoco-unc", {"image_id": 9}) == Path(
        "/d/images/mscoco/train2014/COCO_train2014_000000000009.jpg")
    for source, name in MIXED_NAMES.items():
        assert image_path("/d", "mixed", {"image_id": 5, "data_source": source}) == Path("/d") / name.format(5)
    # The generator writes where the readers look.
    assert SYNTHETIC.directory("/d") == Path("/d/images/synthetic")
    assert SYNTHETIC.path("/d", 3) == image_path("/d", "synthetic", {"image_id": 3}) == Path("/d/images/synthetic/3.jpg")


def test_mixed_annotation_without_a_known_data_source_is_reported(tmp_path):
    write_annotations(tmp_path, "mixed", {"train": [annotation(1, data_source="coco"), annotation(2)]})
    with pytest.raises(AnnotationError, match=r"instances.json, split 'train', annotation 1 has data_source None"):
        ReferDataset(tmp_path, "mixed", "train", "box", Vocabulary.build([]))


def test_training_sample_is_an_object_with_an_expression_drawn_per_epoch(tmp_path):
    expressions = ("the red box", "red thing", "box on the left")
    data = one_image_dataset(tmp_path, training=True, expressions=expressions)
    assert len(data) == 1
    drawn = [data[(epoch, 0)]["meta"]["expression"] for epoch in range(30)]
    assert set(drawn) == set(expressions)
    for epoch in range(5):  # the same (epoch, index) always gives the same draw, in any process
        assert data[(epoch, 0)]["meta"]["expression"] == data[(epoch, 0)]["meta"]["expression"]
    sample = data[(3, 0)]
    assert sample["meta"]["expression"] == expressions[sample["meta"]["expression_index"]]
    np.testing.assert_array_equal(sample["expression_ids"],
                                  data.vocabulary.encode(sample["meta"]["expression"], data.max_token))


def test_evaluation_enumerates_every_object_expression_pair_exactly_once(tmp_path):
    save_jpeg(tmp_path / "images" / "synthetic" / "1.jpg", picture())
    objects = [annotation(1, expressions=[f"object {i} name {j}" for j in range(i + 1)]) for i in range(4)]
    write_annotations(tmp_path, "synthetic", {"val": objects})
    data = ReferDataset(tmp_path, "synthetic", "val", "box", Vocabulary.build([]), image_size=64)
    pairs = [(data[i]["meta"]["ann_index"], data[i]["meta"]["expression_index"]) for i in range(len(data))]
    assert pairs == [(i, j) for i in range(4) for j in range(i + 1)]
    assert [data[i]["meta"]["expression"] for i in range(len(data))] == [
        f"object {i} name {j}" for i in range(4) for j in range(i + 1)]


def test_missing_image_fails_fast_naming_file_split_and_index(tmp_path):
    write_annotations(tmp_path, "synthetic", {"val": [annotation(1), annotation(2)]})
    save_jpeg(tmp_path / "images" / "synthetic" / "1.jpg", picture())
    data = ReferDataset(tmp_path, "synthetic", "val", "box", Vocabulary.build([]))
    with pytest.raises(BadImageError) as error:
        data[2]
    message = str(error.value)
    assert str(tmp_path / "images" / "synthetic" / "2.jpg") in message
    assert "split 'val', annotation 1" in message and "skip_bad_images" in message


def test_corrupt_image_fails_fast_naming_file_split_and_index(tmp_path):
    data = one_image_dataset(tmp_path)
    (tmp_path / "images" / "synthetic" / "1.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(BadImageError, match=r"cannot decode image .*1\.jpg.*split 'train', annotation 0"):
        data[0]


def test_skip_bad_images_skips_and_counts_them(tmp_path, caplog):
    write_annotations(tmp_path, "synthetic", {"train": [annotation(1), annotation(2)]})
    save_jpeg(tmp_path / "images" / "synthetic" / "1.jpg", picture())
    data = ReferDataset(tmp_path, "synthetic", "train", "box", Vocabulary.build([]), training=True,
                        image_size=64, skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        samples = [data[0], data[1]]
    assert samples[1] is None and "2.jpg" in caplog.text and "annotation 1" in caplog.text
    batch = Collate(SequenceCodec(TokenLayout("box", 1000, 6)))(samples)
    assert batch["num_skipped"] == 1 and len(batch["metas"]) == 1 and batch["images"].shape[0] == 1


@pytest.mark.parametrize("task, field", [("box", "bbox"), ("mask", "mask"), ("multi", "mask"), ("box", "expressions")])
def test_annotation_missing_a_needed_field_is_reported(tmp_path, task, field):
    entries = [annotation(1), annotation(1)]
    del entries[1][field]
    write_annotations(tmp_path, "synthetic", {"testA": entries})
    with pytest.raises(AnnotationError, match=rf"instances.json, split 'testA', annotation 1 has no '{field}'"):
        ReferDataset(tmp_path, "synthetic", "testA", task, Vocabulary.build([]))


def test_annotation_with_an_empty_expression_list_is_reported(tmp_path):
    write_annotations(tmp_path, "synthetic", {"train": [annotation(1, expressions=[])]})
    with pytest.raises(AnnotationError, match="annotation 0 has no 'expressions'"):
        ReferDataset(tmp_path, "synthetic", "train", "box", Vocabulary.build([]))


def test_a_box_task_does_not_need_masks(tmp_path):
    data = one_image_dataset(tmp_path, task="box")
    write_annotations(tmp_path, "synthetic", {"train": [{k: v for k, v in annotation(1).items() if k != "mask"}]})
    assert ReferDataset(tmp_path, "synthetic", "train", "box", data.vocabulary, image_size=64)[0]["box"] is not None


def test_split_missing_from_the_file_is_reported(tmp_path):
    write_annotations(tmp_path, "refcoco-unc", {"train": [annotation(1)]})
    expected = r"has no split 'testB'; it has train \(refcoco-unc uses train, val, testA, testB\)"
    with pytest.raises(AnnotationError, match=expected):
        ReferDataset(tmp_path, "refcoco-unc", "testB", "box", Vocabulary.build([]))


def test_box_outside_the_image_is_clipped_and_counted(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = one_image_dataset(tmp_path, bbox=[-5, 30, 80, 20])  # image is 60 x 40
    assert data.num_clipped_boxes == 1 and "1 boxes reach outside their image" in caplog.text
    sample = data[0]
    # Clipped to [0, W-1] x [0, H-1] of the original, then scaled to the 64 x 43 resized image.
    assert sample["meta"]["gt_box"] == [0.0, 30.0, 59.0, 39.0]
    # resized in float32: the scale's rounding, the product's and the expected value's, 3u
    np.testing.assert_allclose(sample["box"], [0, 30 * 43 / 40, 59 * 64 / 60, 39 * 43 / 40], rtol=3 * U32)


@pytest.mark.parametrize("mask", [[[10, 10, 30, 10, 50, 10]], [], [[5, 5]]], ids=["line", "none", "point"])
def test_degenerate_mask_is_kept_with_an_all_eos_target(tmp_path, mask):
    data = one_image_dataset(tmp_path, task="mask", mask=mask)
    sample = data[0]
    assert (sample["vertices"] == -1).all()
    batch = Collate(SequenceCodec(TokenLayout("mask", 1000, data.num_ray)))([sample])
    assert (batch["mask_tokens"] == 1000).all()  # EOS


def test_empty_expression_becomes_a_single_unk(tmp_path):
    data = one_image_dataset(tmp_path, expressions=["?!..", ""])
    for index in range(2):
        ids = data[index]["expression_ids"]
        assert ids[0] == UNK_ID and (ids[1:] == 0).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grayscale_rgba_and_16_bit_images_become_rgb_8_bit(tmp_path, mode):
    gray = np.full((40, 60), 90, dtype=np.uint8)
    gray[8:24, 10:30] = 200
    if mode == "L":
        image = Image.fromarray(gray)
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 128)]), "RGBA")
    else:
        image = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit: 200 -> 51400
    path = tmp_path / "images" / "synthetic" / "1.jpg"
    path.parent.mkdir(parents=True)
    image.save(path, format="PNG")  # decoders go by content, not by the file name
    write_annotations(tmp_path, "synthetic", {"train": [annotation(1)]})
    data = ReferDataset(tmp_path, "synthetic", "train", "box", Vocabulary.build([]), image_size=60)
    pixels = np.asarray(data[0]["image"])
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 40, 60)
    np.testing.assert_array_equal(pixels[:, 12, 20], [200, 200, 200])
    np.testing.assert_array_equal(pixels[:, 35, 50], [90, 90, 90])


def test_exif_rotated_jpeg_is_decoded_upright_so_the_box_stays_aligned(tmp_path):
    upright = picture(height=40, width=60, box=(40, 4, 56, 14))  # red patch near the top-right corner
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # as a camera stores it: turned 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "images" / "synthetic" / "1.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    write_annotations(tmp_path, "synthetic", {"train": [annotation(1, bbox=[40, 4, 16, 10])]})
    data = ReferDataset(tmp_path, "synthetic", "train", "box", Vocabulary.build([]), image_size=60)
    sample = data[0]
    assert sample["meta"]["ori_shape"] == (40, 60)
    red = np.abs(np.asarray(sample["image"]).astype(int).transpose(1, 2, 0) - RED).max(-1) < 60
    ys, xs = np.nonzero(red)
    x1, y1, x2, y2 = sample["box"]
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_unknown_annotation_fields_ride_along_in_meta_extra(tmp_path):
    data = one_image_dataset(tmp_path, category="square", expression_types=["colour", "kind"])
    assert data[0]["meta"]["extra"] == {"category": "square", "expression_types": ["colour", "kind"]}


def test_mask_task_gives_the_original_size_rle_and_a_box_from_the_annotation(tmp_path):
    import pycocotools.mask as mask_utils

    data = one_image_dataset(tmp_path, task="mask")
    meta = data[0]["meta"]
    assert meta["gt_box"] == [10.0, 8.0, 30.0, 24.0]
    mask = mask_utils.decode(meta["gt_mask_rle"])
    assert mask.shape == (40, 60) and mask.sum() == 20 * 16 and mask[8:24, 10:30].all()


def test_rle_masks_are_accepted_in_compressed_and_uncompressed_form(tmp_path):
    import pycocotools.mask as mask_utils

    binary = np.zeros((40, 60), np.uint8)
    binary[8:24, 10:30] = 1
    compressed = mask_utils.encode(np.asfortranarray(binary))
    compressed = {"size": [40, 60], "counts": compressed["counts"].decode()}
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(binary.T.reshape(-1))) + 1, [binary.size]]))
    uncompressed = {"size": [40, 60], "counts": runs.tolist()}
    for rle in (compressed, uncompressed):
        sample = one_image_dataset(tmp_path, task="mask", mask=rle)[0]
        assert mask_utils.area(sample["meta"]["gt_mask_rle"]) == 320
        assert (sample["vertices"] >= 0).all()


def test_rle_mask_of_another_size_is_reported(tmp_path):
    data = one_image_dataset(tmp_path, task="mask", mask={"size": [20, 30], "counts": [600]})
    with pytest.raises(AnnotationError, match=r"split 'train', annotation 0 .*RLE mask size \[20, 30\]"):
        data[0]


def test_load_vocabulary_builds_from_the_training_split_or_reads_the_file(tmp_path):
    write_annotations(tmp_path, "synthetic", {"train": [annotation(1, expressions=["Red box", "the ball"])],
                                              "val": [annotation(1, expressions=["unseen words"])]})
    experiment = load_params(None, [f"data.data_root={tmp_path}"])
    built = load_vocabulary(experiment)
    assert built.words == ["<pad>", "<unk>", "<cls>", "red", "box", "the", "ball"]
    saved = tmp_path / "vocabulary.json"
    Vocabulary.build(["other words"]).save(saved)
    experiment = load_params(None, [f"data.data_root={tmp_path}", f"data.vocabulary={saved}"])
    assert load_vocabulary(experiment).words[3:] == ["other", "words"]


def test_build_dataset_takes_task_sizes_and_seed_from_the_experiment(tmp_path):
    one_image_dataset(tmp_path)
    experiment = load_params(None, [f"data.data_root={tmp_path}", "model.task=mask", "model.num_ray=7",
                                    "data.image_size=96", "data.max_token=9", "train.seed=5"])
    data = build_dataset(experiment, "train", Vocabulary.build([]), training=True)
    sample = data[0]
    assert (data.task, data.seed, data.max_token) == ("mask", 5, 9)
    assert sample["vertices"].shape == (2, 7) and sample["expression_ids"].shape == (9,)
    assert sample["rng_key"] == (5, 0, 0)


# ---- convert-refer ---------------------------------------------------------------------------------

def coco_instances(path: Path) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": 9, "height": 40, "width": 60, "file_name": "COCO_train2014_000000000009.jpg"}],
        "annotations": [{"id": 31, "image_id": 9, "bbox": [10, 8, 20, 16], "category_id": 3, "iscrowd": 0,
                         "segmentation": [[10, 8, 30, 8, 30, 24, 10, 24]], "area": 320}],
        "categories": [{"id": 3, "name": "car"}],
    }))
    return path


def refs(split: str, ref_id: int) -> dict:
    return {"ref_id": ref_id, "ann_id": 31, "image_id": 9, "split": split, "category_id": 3,
            "sentences": [{"raw": f"The Red Car #{ref_id}", "sent": f"the red car {ref_id}", "tokens": []}]}


def test_convert_refer_writes_instances_json_that_the_dataset_reads(tmp_path):
    refs_path = tmp_path / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps([refs("train", 0), refs("testA", 1), refs("train", 2)], protocol=2))
    out = tmp_path / "data" / "annotations" / "refcoco-unc" / "instances.json"
    counts = convert_refer(refs_path, coco_instances(tmp_path / "instances.json"), out)
    assert counts == {"train": 2, "testA": 1}
    converted = json.loads(out.read_text())
    assert converted["train"][1] == {"image_id": 9, "height": 40, "width": 60, "bbox": [10, 8, 20, 16],
                                     "mask": [[10, 8, 30, 8, 30, 24, 10, 24]], "expressions": ["the red car 2"],
                                     "category_id": 3, "ref_id": 2, "ann_id": 31}
    save_jpeg(tmp_path / "data" / COCO_NAME.format(9), picture())
    data = ReferDataset(tmp_path / "data", "refcoco-unc", "testA", "multi", Vocabulary.build([]))
    assert data[0]["meta"]["expression"] == "the red car 1"


def test_convert_refer_reads_python2_pickles_with_byte_strings(tmp_path):
    # Protocol 2 as Python 2 writes [{'split': 'val', 'ann_id': 31, 'sentences': [{'raw': 'caf\xc3\xa9'}]}]:
    # str values are SHORT_BINSTRING (U) opcodes, which Python 3 reads as bytes.
    def text(value: bytes) -> bytes:
        return b"U" + bytes([len(value)]) + value

    sentence = b"}(" + text(b"raw") + text("café".encode()) + b"u"
    body = (b"}(" + text(b"split") + text(b"val") + text(b"ann_id") + b"K\x1f"  # K: one-byte int 31
            + text(b"sentences") + b"]" + sentence + b"a" + b"u")
    refs_path = tmp_path / "refs(unc).p"
    refs_path.write_bytes(b"\x80\x02]" + body + b"a.")
    out = tmp_path / "out.json"
    convert_refer(refs_path, coco_instances(tmp_path / "instances.json"), out)
    assert json.loads(out.read_text())["val"][0]["expressions"] == ["café"]


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_convert_refer_refuses_pickles_that_reference_code(tmp_path):
    refs_path = tmp_path / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps([Exploit()]))
    out = tmp_path / "out.json"
    with pytest.raises(ValueError, match=r"refs\(unc\).p: refused to unpickle .*builtins.print"):
        convert_refer(refs_path, coco_instances(tmp_path / "instances.json"), out)
    assert not out.exists()


def test_convert_refer_failure_leaves_no_partial_output(tmp_path):
    refs_path = tmp_path / "refs.p"
    bad = refs("train", 1)
    bad["ann_id"] = 999
    refs_path.write_bytes(pickle.dumps([refs("train", 0), bad]))
    out = tmp_path / "out" / "instances.json"
    out.parent.mkdir()
    out.write_text("previous")
    with pytest.raises(ValueError, match=r"refs.p, ref 1: ann_id 999 is not in .*instances.json"):
        convert_refer(refs_path, coco_instances(tmp_path / "instances.json"), out)
    assert out.read_text() == "previous" and sorted(p.name for p in out.parent.iterdir()) == ["instances.json"]


def test_python2_pickle_helper_matches_the_pickle_module():
    # The hand-written opcodes above decode, with the standard unpickler, to the intended structure.
    raw = b"\x80\x02]}(U\x05splitU\x03valua."
    assert pickle.load(io.BytesIO(raw), encoding="bytes") == [{b"split": b"val"}]


def test_reading_an_annotation_file_again_parses_it_only_while_its_bytes_are_unchanged(tmp_path):
    from seqtr_lib.data.refer import read_annotations

    path = tmp_path / "instances.json"
    first = {"train": [{"image_id": 1, "expressions": ["a red circle"], "bbox": [1, 2, 3, 4]}]}
    path.write_text(json.dumps(first))
    document = read_annotations(path)
    assert document == first
    assert read_annotations(path) is document  # the same file, not parsed again
    # An edit of the same length that keeps the modification time: only the bytes tell it apart.
    status = path.stat()
    path.write_text(json.dumps(first).replace("red", "tan"))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_size == status.st_size
    edited = read_annotations(path)
    assert edited["train"][0]["expressions"] == ["a tan circle"]
    other = tmp_path / "copy.json"
    other.write_text(json.dumps(first).replace("red", "tan"))
    assert read_annotations(other) is not edited  # another file is another document


def test_an_annotation_file_that_is_not_json_is_reported_with_its_path(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text('{"train": [{"image_id": 1,]}')
    with pytest.raises(AnnotationError, match=rf"{path} is not valid JSON"):
        from seqtr_lib.data.refer import read_annotations
        read_annotations(path)
