"""Generalised samples and batches (issue 36, data): records naming zero or more objects -> ReferDataset samples
-> padded answer tokens -> decoded objects, on a hand-written set whose geometry is computed here by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from seqtr_lib.codec import SequenceCodec, TokenLayout
from seqtr_lib.config import ConfigError, load_params
from seqtr_lib.data.datasets import SYNTHETIC, annotation_path
from seqtr_lib.data.loader import Collate
from seqtr_lib.data.refer import AnnotationError, ReferDataset
from seqtr_lib.data.synthetic import SCENE_ATTRIBUTES, named_attributes_in_words
from seqtr_lib.text import Vocabulary

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

WIDTH, HEIGHT, IMAGE_SIZE = 128, 96, 64  # the long side 128 -> 64: every coordinate halves, pad_shape (64, 64)
NUM_BIN = 32  # 2 pixels of the 64-pixel padded input per bin
HALF_BIN = 64 / NUM_BIN / 2  # a token decoded to its bin's centre is at most this far from the coordinate
RECT = {"a": (10, 20, 40, 36), "b": (70, 8, 110, 32), "c1": (20, 60, 44, 90), "c2": (50, 60, 70, 90)}  # x0 y0 x1 y1


def polygon(name: str) -> list[float]:
    x0, y0, x1, y1 = RECT[name]
    return [x0, y0, x1, y0, x1, y1, x0, y1]


RECORDS = [
    {"image_id": 0, "height": HEIGHT, "width": WIDTH, "expressions": ["all the boxes"], "no_target": False,
     "bboxes": [[10, 20, 30, 16], [70, 8, 40, 24], [20, 60, 50, 30]],
     "masks": [[polygon("a")], [polygon("b")], [polygon("c1"), polygon("c2")]]},  # the third object in two pieces
    {"image_id": 0, "height": HEIGHT, "width": WIDTH, "expressions": ["the green star"], "no_target": True,
     "bboxes": [], "masks": []},
    {"image_id": 0, "height": HEIGHT, "width": WIDTH, "expressions": ["the top box"],  # a classic record: one object
     "bbox": [70, 8, 40, 24], "mask": [polygon("b")]},
]


@pytest.fixture()
def data_root(tmp_path):
    path = annotation_path(tmp_path, "synthetic")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"train": RECORDS, "val": RECORDS}))
    SYNTHETIC.directory(tmp_path).mkdir(parents=True)
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 90, np.uint8)).save(SYNTHETIC.path(tmp_path, 0), format="JPEG")
    return tmp_path


def dataset(root, task: str, max_objects: int = 4, **options) -> ReferDataset:
    return ReferDataset(root, "synthetic", "val", task, Vocabulary(["<pad>", "<unk>", "<cls>"]), image_size=IMAGE_SIZE,
                        lsj=False, max_objects=max_objects, max_points=8, **options)


def codec(task: str) -> SequenceCodec:
    return SequenceCodec(TokenLayout(task, NUM_BIN, 8), bin_centres=True)


def halved(box: tuple[float, ...]) -> np.ndarray:
    return np.asarray(box, dtype=np.float64) / 2


def test_box_answers_round_trip_from_records_to_decoded_boxes_within_half_a_bin(data_root):
    data = dataset(data_root, "box")
    samples = [data[i] for i in range(3)]
    batch = Collate(codec("box"), max_objects=4)(samples)
    # Row-major by top-left corner: b (y 8) before a (y 20) before c (y 60); a box's right and bottom edges are
    # x + w and y + h, as box_corners makes them.
    expected = [[halved(RECT["b"]), halved(RECT["a"]), halved((20, 60, 70, 90))], [], [halved(RECT["b"])]]
    for row, boxes in enumerate(expected):
        weights = batch["answer_weights"][row]
        tokens = batch["answer_tokens"][row][weights > 0]
        decoded = codec("box").decode_boxes(tokens, samples[row]["meta"]["pad_shape"], 4)
        assert decoded.shape == (len(boxes), 4)
        assert np.abs(decoded - np.reshape(boxes, (-1, 4))).max(initial=0) <= HALF_BIN + 1e-6
        assert np.allclose(samples[row]["boxes"], np.reshape(boxes, (-1, 4)))
    assert batch["no_target"].tolist() == [False, True, False]


def test_answers_are_padded_with_eos_to_the_longest_and_weighted_zero_there(data_root):
    samples = [dataset(data_root, "box")[i] for i in range(3)]
    batch = Collate(codec("box"), max_objects=4)(samples)
    lengths = [4 * 3 + 1, 1, 4 + 1]  # K boxes of four tokens, then EOS
    assert batch["answer_tokens"].shape == batch["answer_weights"].shape == (3, max(lengths))
    for row, length in enumerate(lengths):
        assert batch["answer_weights"][row].tolist() == [1.0] * length + [0.0] * (max(lengths) - length)
        assert (batch["answer_tokens"][row, length - 1:] == NUM_BIN).all()  # its EOS, then EOS padding
        assert (batch["answer_tokens"][row, :length - 1] < NUM_BIN).all()
    assert "box_tokens" not in batch and "mask_tokens" not in batch


def test_mask_answers_hold_every_piece_of_every_object_in_first_vertex_order(data_root):
    data = dataset(data_root, "mask")
    samples = [data[i] for i in range(3)]
    batch = Collate(codec("mask"), max_objects=4, max_points=8)(samples)
    # The halved rectangles' pixels: x0/2 .. x1/2 - 1; a contour starts at its piece's top-left pixel.
    pieces = {name: (x0 // 2, y0 // 2, x1 // 2 - 1, y1 // 2 - 1) for name, (x0, y0, x1, y1) in RECT.items()}
    expected = [["b", "a", "c1", "c2"], [], ["b"]]
    for row, names in enumerate(expected):
        tokens = batch["answer_tokens"][row][batch["answer_weights"][row] > 0]
        assert (tokens == codec("mask").layout.separator).sum() == max(len(names) - 1, 0)
        contours = codec("mask").decode_contours(tokens, samples[row]["meta"]["pad_shape"], 4, 8)
        assert len(contours) == len(names)
        for contour, name in zip(contours, names):
            x0, y0, x1, y1 = pieces[name]
            assert np.abs(contour[0] - (x0, y0)).max() <= HALF_BIN
            assert (contour[:, 0] >= x0 - HALF_BIN).all() and (contour[:, 0] <= x1 + HALF_BIN).all()
            assert (contour[:, 1] >= y0 - HALF_BIN).all() and (contour[:, 1] <= y1 + HALF_BIN).all()
            on_edge = np.minimum.reduce([abs(contour[:, 0] - x0), abs(contour[:, 0] - x1),
                                         abs(contour[:, 1] - y0), abs(contour[:, 1] - y1)])
            assert (on_edge <= HALF_BIN).all() and len(contour) >= 3
    # The samples hold the contours in that order already, each starting at its top-left pixel.
    assert [tuple(c[0].tolist()) for c in samples[0]["contours"]] == [(35, 4), (5, 10), (10, 30), (25, 30)]
    assert samples[1]["contours"] == [] and samples[1]["meta"]["no_target"]
    union = samples[0]["meta"]["gt_mask_rle"]
    import pycocotools.mask as mask_utils

    assert mask_utils.area(union) == sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in RECT.values())


def test_the_cap_on_contours_keeps_the_largest_pieces(data_root):
    sample = dataset(data_root, "mask", max_objects=3)[0]
    # a: 15 x 8 = 120, b: 20 x 12 = 240, c1: 12 x 15 = 180, c2: 10 x 15 = 150 pixels after halving: a goes.
    firsts = [tuple(contour[0].tolist()) for contour in sample["contours"]]
    assert firsts == [(35, 4), (10, 30), (25, 30)]


def test_target_box_is_the_first_object_of_the_answer(data_root):
    data = dataset(data_root, "box")
    assert np.allclose(data[0]["target_box"], halved(RECT["b"]))
    assert np.array_equal(data[1]["target_box"], np.zeros(4))


def test_lsj_moves_every_box_with_the_image(data_root):
    data = ReferDataset(data_root, "synthetic", "train", "box", Vocabulary(["<pad>", "<unk>", "<cls>"]),
                        training=True, image_size=IMAGE_SIZE, lsj=True, lsj_scale=(0.5, 2.0), max_objects=4)
    crops = 0
    for epoch in range(12):
        sample = data[(epoch, 0)]
        geometry = sample["meta"]
        (sx, sy), (cx, cy) = geometry["scale_factor"], geometry["crop"]
        height, width = geometry["img_shape"]
        boxes = np.array([[10, 20, 40, 36], [70, 8, 110, 32], [20, 60, 70, 90]], np.float64)
        moved = boxes * [sx, sy, sx, sy] - [cx, cy, cx, cy]
        moved[:, 0::2] = moved[:, 0::2].clip(0, width - 1)
        moved[:, 1::2] = moved[:, 1::2].clip(0, height - 1)
        order = np.lexsort((moved[:, 2], moved[:, 3], moved[:, 0], moved[:, 1]))
        assert np.allclose(sample["boxes"], moved[order], atol=1e-4)
        crops += (cx, cy) != (0, 0)
    assert crops  # some draws enlarge and crop


def test_records_the_settings_cannot_read_are_refused_naming_the_fix(data_root):
    with pytest.raises(AnnotationError, match="annotation 0 names 3 objects, more than data.max_objects = 2"):
        dataset(data_root, "box", max_objects=2)
    with pytest.raises(AnnotationError, match="annotation 0 has no 'bbox'"):  # the classic reader, unchanged
        dataset(data_root, "box", max_objects=0)
    records = [{**RECORDS[1], "no_target": False}]
    annotation_path(data_root, "synthetic").write_text(json.dumps({"val": records}))
    with pytest.raises(AnnotationError, match="says no_target False but names 0 objects"):
        dataset(data_root, "box")


def test_generalised_settings_are_checked_with_the_key_to_change():
    with pytest.raises(ConfigError, match="data.max_objects .* needs model.task box or mask"):
        load_params(None, ["data.max_objects=4", "model.task=multi"])
    with pytest.raises(ConfigError, match="data.max_points = 0 is invalid: it must be at least 3"):
        load_params(None, ["data.max_objects=4", "model.task=mask"])
    with pytest.raises(ConfigError, match="data.shuffle_fraction"):
        load_params(None, ["data.max_objects=4", "data.shuffle_fraction=0.5"])


@pytest.mark.parametrize("expression, color, kind", [
    ("all the red circles left of the blue square", "red", "circle"),
    ("every shape", None, None),
    ("the two stars on the left", None, "star"),
    ("the green diamond", "green", "diamond"),
])
def test_the_attribute_targets_of_a_generalised_expression_come_from_its_words(expression, color, kind):
    colors, kinds = SCENE_ATTRIBUTES["color"], SCENE_ATTRIBUTES["kind"]
    expected = [colors.index(color) if color else len(colors), kinds.index(kind) if kind else len(kinds)]
    assert named_attributes_in_words(expression).tolist() == expected


@pytest.mark.parametrize("task", ["det", "mask"])
def test_the_generalised_params_give_batches_of_answers_from_a_generated_set(task, tmp_path):
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset, load_vocabulary
    from seqtr_lib.data.synthetic import generate_dataset

    experiment = load_params(f"params/synthetic_gref_{task}.yaml",
                             [f"data.data_root={tmp_path}", "data.synthetic.num_images=16", "data.image_size=64",
                              "data.synthetic.image_size=64", "data.num_workers=0", "data.batch_size=16"],
                             start_files=False)
    generate_dataset(tmp_path, 16, 0, 64, workers=1, progress=False, generalised=experiment.data.synthetic.generalised)
    data = build_dataset(experiment, "train", load_vocabulary(experiment), training=True)
    batch = next(iter(build_loader(data, experiment, training=True)))
    size = len(batch["metas"])
    assert batch["answer_tokens"].shape[0] == batch["scene_labels"].shape[0] == batch["named_attributes"].shape[0] == size
    layout = SequenceCodec.from_experiment(experiment).layout
    for tokens, weights, no_target, meta in zip(batch["answer_tokens"], batch["answer_weights"], batch["no_target"],
                                                batch["metas"]):
        answer = tokens[weights > 0]
        assert answer[-1] == layout.eos and bool(no_target) == (len(answer) == 1) == meta["no_target"]


def test_the_gallery_draws_every_object_of_an_answer_and_says_no_target_for_none(data_root):
    from matplotlib.patches import Polygon, Rectangle

    from seqtr_lib.samples import load_sample, sample_gallery

    experiment = load_params(None, [f"data.data_root={data_root}", "data.max_objects=4", "model.task=box"])
    figure = sample_gallery(experiment, "val", num_samples=3)
    panels = sorted((sum(isinstance(p, Rectangle) for p in ax.patches), sum(isinstance(p, Polygon) for p in ax.patches),
                     [t.get_text() for t in ax.texts]) for ax in figure.axes if ax.images)
    # nobody; the classic record's one object with its mask; all three objects (the third in two pieces)
    assert panels == [(0, 0, ["no target"]), (1, 1, []), (3, 4, [])]
    sample = load_sample(experiment, "val", 0)
    assert np.array_equal(sample.boxes, [RECT["a"], RECT["b"], (20, 60, 70, 90)]) and not sample.no_target
    assert load_sample(experiment, "val", 1).no_target


@pytest.mark.slow
def test_notebook_00_prepares_a_generalised_set_and_draws_its_gallery(tmp_path):
    import nbformat
    import papermill

    from conftest import ROOT

    out = tmp_path / "00.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "00_prepare_data.ipynb"), str(out), kernel_name="python3",
                               cwd=str(ROOT), progress_bar=False, parameters={
                                   "params_file": "params/synthetic_gref_det.yaml", "data_root": str(tmp_path / "data"),
                                   "output_dir": str(tmp_path / "outputs"),
                                   "overrides": ["data.synthetic.num_images=24", "data.synthetic.image_size=64"]})
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "generated 24 images" in text
    records = [r for split in json.loads(annotation_path(tmp_path / "data", "synthetic").read_text()).values()
               for r in split]
    assert any(r["no_target"] for r in records) and any(len(r["bboxes"]) >= 2 for r in records)
    assert (tmp_path / "outputs" / "synthetic_gref_det" / "samples.png").stat().st_size > 10_000


def test_a_classic_set_is_not_taken_for_the_generalised_one_the_params_ask_for(tiny_data_root):
    from seqtr_lib import dataset_check

    sizes = ["data.synthetic.num_images=24", "data.synthetic.image_size=64", "data.synthetic.seed=3"]
    generalised = load_params("params/synthetic_gref_det.yaml", [f"data.data_root={tiny_data_root}", *sizes],
                              start_files=False)
    with pytest.raises(ValueError, match=r"holds 24 images of 64 px but the params ask for 24 of 64 px \(a "
                                         r"generalised set\); set regenerate"):
        dataset_check.prepare_synthetic(generalised)
    classic = load_params("params/synthetic_det.yaml", [f"data.data_root={tiny_data_root}", *sizes], start_files=False)
    assert "kept" in dataset_check.prepare_synthetic(classic)


def test_lsj_moves_every_mask_piece_with_the_image(data_root):
    data = ReferDataset(data_root, "synthetic", "train", "mask", Vocabulary(["<pad>", "<unk>", "<cls>"]),
                        training=True, image_size=IMAGE_SIZE, lsj=True, lsj_scale=(0.5, 2.0), max_objects=4,
                        max_points=8)
    crops = 0
    for epoch in range(12):
        sample = data[(epoch, 0)]
        (sx, sy), (cx, cy) = sample["meta"]["scale_factor"], sample["meta"]["crop"]
        # Each piece's rectangle moved as a point p goes to p * scale - crop; nearest-pixel resizing moves an
        # edge by at most one pixel.
        moved = [(x0 * sx - cx - 1, y0 * sy - cy - 1, x1 * sx - cx + 1, y1 * sy - cy + 1)
                 for x0, y0, x1, y1 in RECT.values()]
        for contour in sample["contours"]:
            assert any(((contour[:, 0] >= a) & (contour[:, 0] <= c) & (contour[:, 1] >= b) & (contour[:, 1] <= d)).all()
                       for a, b, c, d in moved), (epoch, contour)
        crops += (cx, cy) != (0, 0)
    assert crops
