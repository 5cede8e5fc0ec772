"""Dataset samples for the notebooks' pictures: an object with its image, box, mask and expression, the
training target it becomes, galleries of samples and of failed predictions, attention examples.

Samples are read through the split's ReferDataset, which indexes annotations without re-parsing the file;
`split_dataset` builds one per experiment, split and version of the annotation file, since cells ask for
samples one at a time and a RefCOCO file takes seconds to parse. Drawing is `seqtr_lib.viz`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from seqtr_lib.config import DataConfig, Experiment
from seqtr_lib.data.refer import ReferDataset, box_corners, build_dataset, decode_mask, ground_truth_box
from seqtr_lib.data.transforms import pad_shape_for
from seqtr_lib.images import read_image
from seqtr_lib.reports import generalised_records, score_name
from seqtr_lib.text import SPECIAL_TOKENS, Vocabulary
from seqtr_lib.viz import draw_answer_comparison, draw_comparison, draw_objects, grid_figure

# Samples are read by annotation, never encoded: the vocabulary's words do not matter, and building the
# real one would parse the annotation file a second time.
_NO_WORDS = Vocabulary(list(SPECIAL_TOKENS))
_DATASETS: dict[tuple[Experiment, str, tuple[int, int] | None], ReferDataset] = {}
_KEEP_DATASETS = 4  # splits kept at once: 03 reads one, 02 one or two


@dataclass
class Sample:
    """One annotated object of a split with its image, in original pixels."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    annotation: dict[str, Any]
    expression: str
    box: np.ndarray  # (4,) x1, y1, x2, y2 (of a generalised record: the box around all its objects, zeros for none)
    mask: np.ndarray | None  # (H, W) uint8, None when the annotation has no mask (generalised: the objects' union)
    boxes: np.ndarray | None = None  # generalised records only (docs/method.md, 11): (K, 4) per object, K = 0 for none

    @property
    def no_target(self) -> bool:
        """Whether the expression names nothing in the image (a generalised record's flag)."""
        return self.boxes is not None and not len(self.boxes)


def split_dataset(experiment: Experiment, split: str) -> ReferDataset:
    """The ReferDataset of a split, one item per annotated object, built once per version of its file.

    Built with ``training=True`` only for its length, the number of objects (an evaluation dataset
    counts (object, expression) pairs); samples are read with ``annotation`` and ``image_path``, so no
    augmentation runs. A regenerated file (00's ``regenerate``) gives a new dataset.
    """
    stat = experiment.annotation_path.stat() if experiment.annotation_path.is_file() else None
    version = (stat.st_mtime_ns, stat.st_size) if stat else None
    key = (experiment, split, version)
    if key not in _DATASETS:
        if len(_DATASETS) >= _KEEP_DATASETS:
            del _DATASETS[next(iter(_DATASETS))]  # the oldest
        # A missing file raises here, naming the fix, and nothing is kept.
        _DATASETS[key] = build_dataset(experiment, split, _NO_WORDS, training=True)
    return _DATASETS[key]


def load_sample(experiment: Experiment, split: str, index: int, expression_index: int = 0) -> Sample:
    """Annotation ``index`` of ``split`` with its image, box, mask and one of its expressions (modulo their number)."""
    dataset = split_dataset(experiment, split)
    if not 0 <= index < len(dataset):
        raise IndexError(f"sample_index {index} is outside split {split!r} of {experiment.annotation_path} "
                         f"(0 .. {len(dataset) - 1})")
    annotation = dataset.annotation(index)
    image = read_image(dataset.image_path(annotation))
    height, width = image.shape[:2]
    expressions = annotation["expressions"]
    expression = expressions[expression_index % len(expressions)]
    if "bboxes" in annotation:
        return _generalised_sample(image, annotation, expression)
    mask, rle = decode_mask(annotation["mask"], height, width) if "mask" in annotation else (None, None)
    box = ground_truth_box(annotation, height, width, rle).astype(np.float32)  # the box evaluation scores against
    return Sample(image, annotation, expression, box, mask)


def _generalised_sample(image: np.ndarray, annotation: dict[str, Any], expression: str) -> Sample:
    """A record naming zero or more objects (gRefCOCO's shape): every object's box, their masks' union."""
    height, width = image.shape[:2]
    boxes = np.array([box_corners(b, height, width) for b in annotation["bboxes"]], np.float32).reshape(-1, 4)
    masks = [decode_mask(m, height, width)[0] for m in annotation.get("masks", [])]
    union = np.any(masks, axis=0).astype(np.uint8) if masks else np.zeros((height, width), np.uint8)
    around = np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)]) if len(boxes) else np.zeros(4, np.float32)
    return Sample(image, annotation, expression, around, union, boxes)


def padded(mask: np.ndarray, pad_shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) mask zero-padded at the bottom and right to pad_shape."""
    return np.pad(mask, ((0, pad_shape[0] - mask.shape[0]), (0, pad_shape[1] - mask.shape[1])))


def target_sequence(experiment: Experiment, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The training target of a sample at its original resolution: points (K, 2) and tokens.

    Box task: the two corners and 4 tokens; mask and multi-task: the sampled contour vertices
    (``model.num_ray``, ``data.center_sampling``) and 2 * num_ray tokens (EOS for missing points).
    Training does the same after resizing the long side to ``data.image_size`` (tokens relative to the
    padded size here, whatever ``model.mapping``: the absolute mapping refers to the network input).
    """
    from seqtr_lib.codec import SequenceCodec, TokenLayout
    from seqtr_lib.sequence import sample_mask_vertices

    model = experiment.model
    codec = SequenceCodec(TokenLayout(model.task, model.num_bin, model.num_ray))
    pad_shape = pad_shape_for(sample.image.shape[:2])
    if "mask" not in codec.layout.parts:
        return sample.box.reshape(2, 2), codec.encode_box(sample.box, pad_shape)
    if sample.mask is None:
        raise ValueError(f"annotation {sample.annotation.get('image_id')} has no mask, but task "
                         f"{experiment.model.task!r} needs one")
    vertices = sample_mask_vertices(padded(sample.mask, pad_shape), experiment.model.num_ray, pad_shape,
                                    experiment.data.center_sampling)
    return vertices.T[(vertices >= 0).all(axis=0)], codec.encode_vertices(vertices, pad_shape)


def answer_sequence(experiment: Experiment, sample: Sample) -> tuple[list[np.ndarray], np.ndarray]:
    """A generalised sample's training target at its original resolution: its objects in emission order and
    the answer's tokens (docs/method.md, section 11).

    Box task: each object's two corners (2, 2) as its tokens decode; mask task: each visible piece of each
    object sampled as training samples it (``data.max_points``, `refer.answer_contours`), exact. Training does
    the same after resizing the long side to ``data.image_size``.
    """
    from seqtr_lib.codec import SequenceCodec
    from seqtr_lib.data.refer import answer_contours

    if sample.boxes is None:
        raise ValueError("this sample names one object (a classic record): use target_sequence")
    codec, max_objects = SequenceCodec.from_experiment(experiment), experiment.data.max_objects
    pad_shape = pad_shape_for(sample.image.shape[:2])
    if experiment.model.task == "box":
        tokens = codec.encode_boxes(sample.boxes, pad_shape, max_objects)
        return list(codec.decode_boxes(tokens, pad_shape, max_objects).reshape(-1, 2, 2)), tokens
    height, width = sample.image.shape[:2]
    masks = [padded(decode_mask(m, height, width)[0], pad_shape) for m in sample.annotation.get("masks", [])]
    contours = answer_contours(masks, experiment.data.max_points, max_objects, pad_shape,
                               experiment.data.center_sampling)
    return contours, codec.encode_contours(contours, pad_shape, max_objects, experiment.data.max_points)


def prediction_iou(sample: Sample, prediction: Any) -> float:
    """IoU of a `predict.Prediction` with the sample's annotation: boxes for a box, masks for a mask."""
    if prediction.outlines and sample.mask is None:
        raise ValueError(f"annotation {sample.annotation.get('image_id')} has no mask to compare a mask with")
    return prediction.iou(sample.box, sample.mask)


def attention_examples(experiment: Experiment, grounder: Any, split: str = "val",
                       count: int = 12) -> list[tuple[Sample, Any, float]]:
    """The first ``count`` samples of a split (all, if it has fewer) predicted with their attention maps,
    best IoU first: [(sample, prediction, iou)]."""
    examples = []
    for index in range(min(count, len(split_dataset(experiment, split)))):
        sample = load_sample(experiment, split, index)
        prediction = grounder.predict(sample.image, sample.expression, return_attention=True)
        examples.append((sample, prediction, prediction_iou(sample, prediction)))
    return sorted(examples, key=lambda example: -example[2])


def _polygons(annotation: dict[str, Any]) -> list | None:
    """The annotation's mask polygons, None for an RLE mask or none (drawn as outlines, not rasterised)."""
    return annotation["mask"] if isinstance(annotation.get("mask"), list) else None


def sample_gallery(experiment: Experiment, split: str = "train", num_samples: int = 12, seed: int = 0) -> Figure:
    """A grid of random objects of a split with box, mask polygons and one expression each; for generalised
    records (docs/method.md, section 11) every object the expression names in its own colour, or "no target"."""
    count = len(split_dataset(experiment, split))
    if count == 0:
        raise ValueError(f"split {split!r} of {experiment.annotation_path} has no annotations")
    rng = np.random.default_rng(seed)
    picks = rng.choice(count, size=min(num_samples, count), replace=False)
    figure, axes = grid_figure(len(picks))
    for ax, pick in zip(axes, picks):
        sample = load_sample(experiment, split, int(pick), int(rng.integers(1000)))
        if sample.boxes is None:
            draw_comparison(ax, sample.image, sample.box, _polygons(sample.annotation), title=sample.expression)
            continue
        masks = sample.annotation.get("masks") or [None] * len(sample.boxes)
        draw_objects(ax, sample.image, sample.boxes, [m if isinstance(m, list) else None for m in masks],
                     sample.expression)
    return figure


def failure_gallery(experiment: Experiment, split: str, records: Sequence[dict[str, Any]], ious: np.ndarray,
                    count: int = 8) -> Figure:
    """The ``count`` objects whose worst expression has the lowest IoU, worst first.

    One panel per object (its expressions often fail together); ground truth green, prediction red. A
    generalised run's records (zero or more objects per expression): one panel per record, scored by
    ``ious`` as `reports.expression_ious` gives them (F1 for boxes), every target and every answer drawn.
    """
    task = experiment.model.task
    generalised = generalised_records(records)
    worst, shown = [], set()
    for i in np.argsort(ious, kind="stable"):
        key = (records[i]["ann_index"], records[i]["expression_index"]) if generalised else records[i]["ann_index"]
        if key not in shown and len(worst) < count:
            worst.append(i)
            shown.add(key)
    figure, axes = grid_figure(len(worst))
    for ax, i in zip(axes, worst):
        record = records[i]
        sample = load_sample(experiment, split, record["ann_index"], record["expression_index"])
        if generalised:
            masks = sample.annotation.get("masks") or []
            draw_answer_comparison(ax, sample.image, sample.boxes, [p for m in masks if isinstance(m, list) for p in m],
                                   record.get("pred_boxes", []),
                                   [np.reshape(c, (-1, 2)) for c in record.get("pred_polygons", [])],
                                   title=f"{score_name(records, task)} {ious[i]:.2f}: {record['expression']}")
            continue
        polygon = record.get("pred_polygon")
        draw_comparison(ax, sample.image, sample.box if task != "mask" else None,
                        _polygons(sample.annotation) if task != "box" else None, record.get("pred_box"),
                        np.reshape(polygon, (-1, 2)) if polygon is not None and task != "box" else None,
                        title=f"IoU {ious[i]:.2f}: {record['expression']}")
    return figure


def contact_sheet(data_root: str | Path, split: str = "train", out_path: str | Path = "outputs/synthetic_samples.png",
                  num_samples: int = 12, seed: int = 0) -> Path:
    """Write `sample_gallery` of the synthetic set under ``data_root`` as a PNG; return its path.

    The command line's ``contact-sheet``: it needs a data root only, no params file.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}")
    experiment = Experiment(data=DataConfig(dataset="synthetic", data_root=str(data_root)))
    figure = sample_gallery(experiment, split, num_samples, seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=100)
    return out_path
