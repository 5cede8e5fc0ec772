"""Reading instances.json datasets: annotation files, masks, and one Dataset class of ready samples.

The per-dataset facts and path rules live in `seqtr_lib.data.datasets`, image decoding in `seqtr_lib.images`.
This module loads only the standard library, numpy and the config at import time; OpenCV, torch and the
transforms load on first use.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqtr_lib.config import TASK_PARTS, Experiment
from seqtr_lib.data.datasets import DATASETS, MIXED_SOURCES, annotation_path, image_path
from seqtr_lib.images import BadImageError, read_image
from seqtr_lib.text import Vocabulary

if TYPE_CHECKING:
    from seqtr_lib.data.transforms import Canvas

log = logging.getLogger(__name__)

# The annotation field each part of a task's sequence is made from; "expressions" and "image_id" are always needed.
PART_FIELD = {"box": "bbox", "mask": "mask"}
# Fields the pipeline interprets; any other field (category, colour, ...) rides along in meta["extra"].
KNOWN_FIELDS = frozenset({"image_id", "height", "width", "bbox", "expressions", "mask", "data_source",
                          "bboxes", "masks", "no_target"})
# Generalised records (issue 36: gRefCOCO's reader, a generalised synthetic set) name zero or more objects.
GENERALISED_FIELD = {"box": "bboxes", "mask": "masks"}
SCENE_FIELDS = ("scene", "color", "category")  # what the scene loss and the attribute prior read
ZOOM_FIELDS = ("scene", "object_index")  # what data.zoom_out reads to keep region words true
FIELD_HINTS = {"bbox": "[x, y, w, h] in pixels", "mask": "polygons or an RLE",
               "scene": "every object of the image with its bbox, color, kind and size (make-synthetic writes it)",
               "color": "the target's colour name (make-synthetic writes it)",
               "category": "the target's kind (make-synthetic writes it)",
               "object_index": "the target's index in 'scene' (make-synthetic writes it)"}


class AnnotationError(ValueError):
    """An annotation file or entry is malformed; the message names the file, split, index and fix."""


def _parse_json(data: bytes) -> Any:
    """JSON text -> Python values, with orjson when installed: it parses the synthetic set's annotation file
    (millions of polygon floats, read by every notebook) in well under half the standard parser's time."""
    try:
        import orjson
    except ImportError:  # a minimal install (the GPU machines) keeps the standard parser
        return json.loads(data)
    return orjson.loads(data)  # its JSONDecodeError is json's


# The last annotation file parsed in this process, with its path and bytes: the vocabulary, the training split and
# the validation split of one run each read the whole file. Reading and comparing the bytes costs a small part of
# a parse and, unlike a modification time, cannot miss an edit.
_last_parsed: tuple[str, bytes, dict[str, list[dict[str, Any]]]] | None = None


def read_annotations(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Parse an instances.json file: ``{split: [annotation, ...]}``.

    Reading the same unchanged file again in this process returns the same document without parsing it
    again, so the document is shared: treat it as read-only (copy what you change).
    """
    global _last_parsed
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file {path} does not exist; generate the synthetic set with `python -m seqtr_lib "
            "make-synthetic`, convert a refer release with `convert-refer`, or set data.data_root / "
            "data.annotation_file"
        )
    where, data = str(path.resolve()), path.read_bytes()
    if _last_parsed is not None and _last_parsed[:2] == (where, data):
        return _last_parsed[2]
    try:
        document = _parse_json(data)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(document, dict) or not all(isinstance(v, list) for v in document.values()):
        raise AnnotationError(f"{path}: expected {{split: [annotation, ...]}} at the top level")
    _last_parsed = (where, data, document)
    return document


def decode_mask(mask: list | dict, height: int, width: int) -> tuple[np.ndarray, dict]:
    """An annotation's ``mask`` (polygons or RLE) -> ((H, W) uint8 mask, compressed RLE with bytes counts)."""
    from seqtr_lib.sequence import compressed_rle, polygon_to_rle, rle_to_mask

    if isinstance(mask, list):
        rle = polygon_to_rle(mask, height, width)
    else:
        size = [int(v) for v in mask["size"]]
        if size != [height, width]:
            raise AnnotationError(f"RLE mask size {size} differs from the image size [{height}, {width}]")
        rle = compressed_rle(mask)
    return rle_to_mask(rle), rle


def _annotation_problem(annotation: Any, needed: tuple[str, ...], dataset: str) -> str | None:
    """What is wrong with one annotation entry, or None."""
    if not isinstance(annotation, dict):
        return f"is a {type(annotation).__name__}, not a mapping"
    image_id = annotation.get("image_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return f"has image_id {image_id!r}; it must be an integer"
    expressions = annotation.get("expressions")
    if not isinstance(expressions, list) or not expressions:
        return "has no 'expressions'; give a non-empty list of referring expressions"
    if not all(isinstance(e, str) for e in expressions):
        return "has an expression that is not a string"
    for field in needed:
        if field not in annotation:
            hint = FIELD_HINTS[field]
            needer = "model.scene_loss" if field in SCENE_FIELDS else "the task"
            return f"has no '{field}' ({needer} needs it); add {hint} or drop the annotation"
    bbox = annotation.get("bbox")
    if bbox is not None and not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
        and bbox[2] >= 0 and bbox[3] >= 0
    ):
        return f"has bbox {bbox!r}; it must be [x, y, w, h] with w, h >= 0"
    mask = annotation.get("mask")
    is_rle = isinstance(mask, dict) and {"size", "counts"} <= set(mask)
    if mask is not None and not (isinstance(mask, list) or is_rle):
        return "has a 'mask' that is neither a list of polygons nor an RLE {'size', 'counts'}"
    if DATASETS[dataset].images is None and annotation.get("data_source") not in MIXED_SOURCES:
        return f"has data_source {annotation.get('data_source')!r}; it must be one of {', '.join(MIXED_SOURCES)}"
    return None


def _box_outside_image(annotation: dict[str, Any]) -> bool:
    """Whether the bbox reaches outside [0, width] x [0, height] (known only when both are recorded)."""
    if "bbox" not in annotation or "height" not in annotation or "width" not in annotation:
        return False
    x, y, w, h = annotation["bbox"]
    return x < 0 or y < 0 or x + w > annotation["width"] or y + h > annotation["height"]


def _generalised_problem(annotation: dict[str, Any], task: str, max_objects: int) -> str | None:
    """What keeps a record from giving a generalised answer, or None. A classic record (``bbox`` / ``mask``)
    is an answer of its one object."""
    field = GENERALISED_FIELD[task]
    if field not in annotation:
        if PART_FIELD[task] in annotation:
            return None
        return (f"has no '{field}' (data.max_objects > 0 reads generalised records); convert gRefCOCO with "
                "convert-grefcoco, generate a generalised synthetic set, or set data.max_objects: 0")
    objects = annotation[field]
    if not isinstance(objects, list) or not isinstance(annotation.get("no_target"), bool):
        return f"needs '{field}' as a list and 'no_target' as true or false"
    if annotation["no_target"] != (not objects):
        return f"says no_target {annotation['no_target']} but names {len(objects)} objects"
    if task == "box" and not all(isinstance(b, list) and len(b) == 4 and b[2] >= 0 and b[3] >= 0 for b in objects):
        return "has a box in 'bboxes' that is not [x, y, w, h] with w, h >= 0"
    if len(objects) > max_objects:
        return f"names {len(objects)} objects, more than data.max_objects = {max_objects}; raise the cap"
    return None


class _PackedAnnotations:
    """Annotations stored as one byte buffer of pickled records, decoded on access.

    A list of dicts would be copied page by page into every forked loader worker as Python touches
    reference counts; a numpy buffer is only read, so all workers share one copy. The records are
    pickled in this process from plain JSON values (never read from a file), and pickling the long
    polygon lists is about 14x faster than JSON (0.5 s instead of 7 s for the 18,434 synthetic ones).
    """

    def __init__(self, annotations: list[dict[str, Any]]) -> None:
        records = [pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL) for a in annotations]
        self._ends = np.cumsum([len(r) for r in records], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(records), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._ends):
            raise IndexError(f"annotation index {index} is out of range (0 .. {len(self._ends) - 1})")
        start = self._ends[index - 1] if index > 0 else 0
        return pickle.loads(self._buffer[start : self._ends[index]].tobytes())


@dataclass(frozen=True)
class _HeldSample:
    """A training object's sample with held images (`ReferDataset._with_expression`), and what its expressions
    need: their texts and, for model.attribute_prior, the object's colour and kind."""

    sample: dict[str, Any]
    path: str
    expressions: list[str]
    color: str | None
    kind: str | None


class ReferDataset:
    """One split of an instances.json dataset, as samples ready for the collate function.

    Training (``training=True``): one sample per annotated object. Each load draws one of its
    expressions, and the LSJ scale and crop, from a generator seeded by (seed, epoch, index), so a
    sample is the same whichever worker or process loads it. Evaluation: one sample per
    (object, expression) pair, each exactly once, in file order; plain resize of the long side.

    ``dataset[index]`` draws for epoch 0; ``dataset[(epoch, index)]`` names the epoch, which is what the
    loader's batch sampler does. A sample is a dict:

    - ``image``: tv_tensors.Image uint8 (3, h, w) RGB 0-255, the un-padded img_shape region; with
      ``device_transforms``, the payload of `device_images.read_encoded_image` instead (the file's bytes,
      or the decoded original pixels), transformed on the training device from the meta's geometry; with
      ``precomputed_shapes`` set (`seqtr_lib.precompute`), the int key of the training process's held image;
    - ``expression_ids``: int64 (max_token,), the encoded expression;
    - ``box`` (task box/multi): float32 (4,) x1, y1, x2, y2 in pixels of the transformed image;
    - ``vertices`` (task mask/multi): float32 (2, num_ray) mask contour points, -1 where missing;
    - ``target_box``: float32 (4,) the target's tight box in pixels of the transformed image (``box``
      when there is one, else the mask's), for the target-cell departures;
    - ``scene_centres`` float32 (K, 2) and ``scene_labels`` int64 (K, 3) (with ``scene_targets``, for
      model.scene_loss): every object of the image from the annotation's ``scene``,
      `seqtr_lib.data.synthetic.scene_targets`;
    - ``meta``: plain values: image_id, ann_index, expression, expression_index, image_path,
      ori_shape, img_shape, pad_shape, scale_factor, crop (see transforms.Geometry), gt_box (x1, y1,
      x2, y2 in original pixels), gt_mask_rle (mask tasks, original size), extra (unknown fields); with
      data.zoom_out in training, zoom_out (the canvas's shape, offset and grey, or None): "original" then
      means the canvas the image was placed on;
    - ``rng_key``: (seed, epoch, index), from which the collate function seeds batch-level draws.

    An unreadable image raises BadImageError, or with ``skip_bad_images`` logs a warning and returns
    None (the collate function drops and counts it).
    """

    def __init__(
        self,
        data_root: str | Path,
        dataset: str,
        split: str,
        task: str,
        vocabulary: Vocabulary,
        *,
        annotation_file: str | Path | None = None,
        training: bool = False,
        max_token: int | None = None,
        image_size: int = 640,
        lsj: bool = True,
        lsj_scale: tuple[float, float] = (0.3, 1.4),
        num_ray: int = 18,
        center_sampling: bool = False,
        skip_bad_images: bool = False,
        device_transforms: bool = False,
        scene_targets: bool = False,
        zoom_out_probability: float = 0.0,
        zoom_out_max_factor: float = 2.0,
        max_objects: int = 0,
        max_points: int = 0,
        seed: int = 0,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        if task not in TASK_PARTS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_PARTS)}")
        self.data_root = Path(data_root)
        self.dataset, self.split, self.task = dataset, split, task
        self.annotation_file = Path(annotation_file or annotation_path(self.data_root, dataset))
        self.vocabulary = vocabulary
        self.training = training
        self.max_token = max_token or DATASETS[dataset].max_token
        self.image_size, self.lsj, self.lsj_scale = image_size, lsj, tuple(lsj_scale)
        self.num_ray, self.center_sampling = num_ray, center_sampling
        self.skip_bad_images = skip_bad_images
        self.device_transforms = device_transforms
        self.scene_targets = scene_targets
        self.zoom_out_probability, self.zoom_out_max_factor = zoom_out_probability, zoom_out_max_factor
        self.max_objects, self.max_points = max_objects, max_points
        if max_objects and task not in GENERALISED_FIELD:
            raise ValueError(f"generalised answers (max_objects > 0) are boxes or contours: task box or mask, "
                             f"not {task!r}")
        if max_objects and zoom_out_probability > 0:
            raise ValueError("data.zoom_out re-reads one target's region words; it cannot take generalised records "
                             "(data.max_objects > 0) yet: set one of them to 0")
        if zoom_out_probability > 0 and device_transforms:
            raise ValueError("data.zoom_out places the decoded image on a canvas in the loader, which "
                             "data.device_transforms skips; turn one off")
        self.seed = seed
        # path -> (key, (height, width)) of the training process's held images (data.precompute_images,
        # `seqtr_lib.precompute`): samples then carry the key instead of pixels.
        self.precomputed_shapes: dict[str, tuple[int, tuple[int, int]]] | None = None
        self._held_samples: dict[int, _HeldSample] = {}  # ann_index -> its sample, with held images only

        document = read_annotations(self.annotation_file)
        if split not in document:
            raise AnnotationError(
                f"{self.annotation_file} has no split '{split}'; it has {', '.join(document) or 'none'} "
                f"({dataset} uses {', '.join(DATASETS[dataset].splits)})"
            )
        annotations = document[split]
        needed = tuple(PART_FIELD[part] for part in TASK_PARTS[task]) + (SCENE_FIELDS if scene_targets else ())
        if max_objects:  # the objects' fields are checked by _generalised_problem; the scene loss reads the words
            needed = ("scene",) if scene_targets else ()
        if training and zoom_out_probability > 0:
            needed += ZOOM_FIELDS
        for index, annotation in enumerate(annotations):
            problem = _annotation_problem(annotation, needed, dataset)
            if problem is None and max_objects:
                problem = _generalised_problem(annotation, task, max_objects)
            if problem:
                raise AnnotationError(f"{self.annotation_file}, split '{split}', annotation {index} {problem}")
        outside = [i for i, a in enumerate(annotations) if _box_outside_image(a)]
        self.num_clipped_boxes = len(outside)
        if outside:
            log.warning("%s, split '%s': %d boxes reach outside their image (first: annotation %d); they are "
                        "clipped to it", self.annotation_file, split, len(outside), outside[0])
        self._annotations = _PackedAnnotations(annotations)
        # Evaluation samples: every (annotation index, expression index) pair, (P, 2).
        pairs = [(i, j) for i, a in enumerate(annotations) for j in range(len(a["expressions"]))]
        self._pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._annotations) if self.training else len(self._pairs)

    def __repr__(self) -> str:
        unit = "objects" if self.training else "expressions"
        return (f"ReferDataset({self.dataset}, split {self.split}, task {self.task}, {len(self)} {unit}, "
                f"{self.num_clipped_boxes} clipped boxes)")

    def annotation(self, ann_index: int) -> dict[str, Any]:
        """The raw annotation entry at ``ann_index`` of this split."""
        return self._annotations[ann_index]

    def image_path(self, annotation: dict[str, Any]) -> Path:
        """The image file of an annotation of this dataset."""
        return image_path(self.data_root, self.dataset, annotation)

    def image_paths(self) -> list[str]:
        """Every image file of this split once, in the order of its first annotation."""
        return list(dict.fromkeys(str(self.image_path(self._annotations[i])) for i in range(len(self._annotations))))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng((self.seed, epoch, index))
        ann_index = index if self.training else int(self._pairs[index, 0])
        held = self._held_samples.get(ann_index) if self.training and self.precomputed_shapes is not None else None
        if held is not None:  # made in an earlier epoch: only the expression is drawn again
            return self._with_expression(held, int(rng.integers(len(held.expressions))), (self.seed, epoch, index))
        annotation = self._annotations[ann_index]
        if self.training:
            expression_index = int(rng.integers(len(annotation["expressions"])))
        else:
            expression_index = int(self._pairs[index, 1])
        where = f"{self.dataset} split '{self.split}', annotation {ann_index}"
        path = self.image_path(annotation)
        rng_key = (self.seed, epoch, index)
        make = self._generalised_sample if self.max_objects else self._sample
        if self.precomputed_shapes is not None:
            image_key, ori_shape = self.precomputed_shapes[str(path)]
            sample = make(annotation, None, path, ann_index, expression_index, rng, rng_key, ori_shape)
            if not self.training or self.max_objects:  # only a classic training sample is held (`_with_expression`)
                sample["image"] = image_key
                return sample
            held = _HeldSample(sample, str(path), annotation["expressions"], annotation.get("color"),
                               annotation.get("category"))
            self._held_samples[ann_index] = held
            return self._with_expression(held, expression_index, rng_key)
        try:
            if self.device_transforms:
                from seqtr_lib.data.device_images import read_encoded_image

                payload, ori_shape = read_encoded_image(path)
            else:
                image = read_image(path)
        except BadImageError as error:
            if not self.skip_bad_images:
                raise BadImageError(f"{error} ({where}); fix or remove the file, or set data.skip_bad_images: "
                                    "true to skip and count such images") from None
            log.warning("skipping %s (%s)", error, where)
            return None
        if not self.device_transforms:
            return make(annotation, image, path, ann_index, expression_index, rng, rng_key)
        # The geometry and targets as on the host, without the pixels; the image travels as its file's bytes.
        sample = make(annotation, None, path, ann_index, expression_index, rng, rng_key, ori_shape)
        sample["image"] = payload
        return sample

    def _with_expression(self, held: _HeldSample, expression_index: int, rng_key: tuple[int, int, int]) -> dict[str, Any]:
        """The sample of a held image's object with expression ``expression_index``: with held images there is no
        LSJ and no zoom-out, so the image's geometry and the targets are the same every epoch and only the fields
        `_sample` makes from the expression change. A new dict each time (the held one is never handed out)."""
        expression = held.expressions[expression_index]
        sample = {**held.sample, "image": self.precomputed_shapes[held.path][0], "rng_key": rng_key,
                  "expression_ids": self.vocabulary.encode(expression, self.max_token),
                  "meta": {**held.sample["meta"], "expression": expression, "expression_index": expression_index}}
        if self.scene_targets:
            from seqtr_lib.data.synthetic import named_attributes

            sample["named_attributes"] = named_attributes(expression, held.color, held.kind)
        return sample

    def _sample(self, annotation: dict[str, Any], image: np.ndarray | None, path: Path, ann_index: int,
                expression_index: int, rng: np.random.Generator, rng_key: tuple[int, int, int],
                ori_shape: tuple[int, int] | None = None) -> dict[str, Any]:
        from seqtr_lib.data import transforms
        from seqtr_lib.sequence import sample_mask_vertices

        height, width = image.shape[:2] if image is not None else ori_shape
        box = box_corners(annotation["bbox"], height, width) if "bbox" in annotation else None
        mask = rle = None
        if "mask" in TASK_PARTS[self.task]:
            try:
                mask, rle = decode_mask(annotation["mask"], height, width)
            except (ValueError, TypeError, KeyError) as error:
                raise AnnotationError(f"{self.annotation_file}, split '{self.split}', annotation {ann_index} "
                                      f"({path}): cannot decode its mask: {error}") from error
        gt_box = box if box is not None else ground_truth_box(annotation, height, width, rle)
        scene = annotation.get("scene")
        canvas = self._zoom_canvas(annotation, expression_index, (height, width), rng)
        if canvas is not None:
            from seqtr_lib.data.synthetic import shifted_scene
            from seqtr_lib.sequence import mask_to_rle

            image, box, mask = transforms.place_on_canvas(image, box, mask, canvas)
            gt_box = transforms.place_on_canvas(None, gt_box, None, canvas)[1]
            (height, width), scene = canvas.shape, shifted_scene(scene, canvas.offset)
            rle = None if mask is None else mask_to_rle(mask)

        box_target = box if "box" in TASK_PARTS[self.task] else None
        image_tv, box_tv, mask_tv = transforms.to_tv_tensors(image, box_target, mask, (height, width))
        if self.training and self.lsj:
            out = transforms.large_scale_jitter(image_tv, box_tv, mask_tv, rng, self.image_size, self.lsj_scale,
                                                (height, width))
        else:
            out = transforms.resize_long_side(image_tv, box_tv, mask_tv, self.image_size, (height, width))
        expression = annotation["expressions"][expression_index]
        meta = {
            "image_id": annotation["image_id"],
            "ann_index": ann_index,
            "expression": expression,
            "expression_index": expression_index,
            "image_path": str(path),
            **vars(out.geometry),
            "gt_box": [float(v) for v in gt_box],
            "extra": {k: v for k, v in annotation.items() if k not in KNOWN_FIELDS},
        }
        if self.training and self.zoom_out_probability > 0:  # absent when off: the samples stay as they were
            meta["zoom_out"] = None if canvas is None else dict(vars(canvas))
        sample: dict[str, Any] = {
            "image": out.image,
            "expression_ids": self.vocabulary.encode(expression, self.max_token),
            "meta": meta,
            "rng_key": rng_key,
        }
        if out.box is not None:
            sample["box"] = out.box[0].numpy().astype(np.float32)
            sample["target_box"] = sample["box"]
        else:
            sample["target_box"] = _tight_box(out.mask[0].numpy())
        if self.scene_targets:
            from seqtr_lib.data.synthetic import named_attributes, scene_targets

            try:
                sample["scene_centres"], sample["scene_labels"] = scene_targets(
                    scene, out.geometry.scale_factor, out.geometry.crop, out.geometry.img_shape)
                sample["named_attributes"] = named_attributes(expression, annotation["color"], annotation["category"])
            except (KeyError, ValueError, TypeError) as error:
                raise AnnotationError(f"{self.annotation_file}, split '{self.split}', annotation {ann_index}: its "
                                      f"'scene', 'color' or 'category' cannot give scene-loss targets ({error!r}); regenerate the set "
                                      "with make-synthetic or set model.scene_loss: 0") from error
        if out.mask is not None:
            meta["gt_mask_rle"] = rle
            sample["vertices"] = sample_mask_vertices(
                out.mask[0].numpy(), self.num_ray, out.geometry.pad_shape, self.center_sampling
            )
        return sample

    def _generalised_sample(self, annotation: dict[str, Any], image: np.ndarray | None, path: Path, ann_index: int,
                            expression_index: int, rng: np.random.Generator, rng_key: tuple[int, int, int],
                            ori_shape: tuple[int, int] | None = None) -> dict[str, Any]:
        """A sample of a record naming zero or more objects (data.max_objects > 0; docs/method.md, section 11).

        The transform is drawn as for one object, the LSJ crop kept around all of them (their enclosing box, or
        the union of their masks), and then moves every object (`transforms.transformed_targets`). Instead of
        ``box`` / ``vertices`` the sample holds ``boxes`` float32 (K, 4) x1, y1, x2, y2 (task box) or
        ``contours``, a list of float32 (K_i, 2) x, y (task mask: each visible piece of each object, up to
        ``max_points`` points sampled as the classic contour, pieces of fewer than 3 points dropped, at most
        ``max_objects`` of them, the largest kept), in pixels of the transformed image, in the codec's order
        (row-major by top-left corner or first vertex; the codec breaks ties between equal tokens); and
        ``no_target``. ``target_box`` is the box of the first object in that order (zeros for none). The meta
        holds ``gt_boxes`` (original pixels), ``no_target`` and, for masks, ``gt_mask_rle``: the union.
        """
        from seqtr_lib.data import transforms
        from seqtr_lib.sequence import mask_to_rle

        height, width = image.shape[:2] if image is not None else ori_shape
        boxes, masks = self._objects(annotation, height, width, path, ann_index)
        mask_task = self.task == "mask"
        union_mask = np.any(masks, axis=0).astype(np.uint8) if masks else np.zeros((height, width), np.uint8)
        enclosing = None if mask_task or not len(boxes) else np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])
        image_tv, box_tv, mask_tv = transforms.to_tv_tensors(image, enclosing, union_mask if mask_task and masks
                                                             else None, (height, width))
        lsj = self.training and self.lsj
        if lsj:
            out = transforms.large_scale_jitter(image_tv, box_tv, mask_tv, rng, self.image_size, self.lsj_scale,
                                                (height, width))
        else:
            out = transforms.resize_long_side(image_tv, box_tv, mask_tv, self.image_size, (height, width))
        moved_boxes, moved_masks = transforms.transformed_targets(out.geometry, None if mask_task else boxes,
                                                                  masks, clip_boxes=lsj)
        expression = annotation["expressions"][expression_index]
        no_target = bool(annotation.get("no_target", False))
        meta = {
            "image_id": annotation["image_id"], "ann_index": ann_index, "expression": expression,
            "expression_index": expression_index, "image_path": str(path), **vars(out.geometry),
            "gt_boxes": boxes.tolist(), "no_target": no_target,
            "extra": {k: v for k, v in annotation.items() if k not in KNOWN_FIELDS},
        }
        sample: dict[str, Any] = {"image": out.image, "expression_ids": self.vocabulary.encode(expression, self.max_token),
                                  "meta": meta, "rng_key": rng_key, "no_target": no_target}
        if mask_task:
            meta["gt_mask_rle"] = mask_to_rle(union_mask)
            sample["contours"] = answer_contours(moved_masks, self.max_points, self.max_objects,
                                                 out.geometry.pad_shape, self.center_sampling)
            first = sample["contours"][0] if sample["contours"] else None
            sample["target_box"] = (np.zeros(4, np.float32) if first is None
                                    else np.concatenate([first.min(0), first.max(0)]).astype(np.float32))
        else:
            order = np.lexsort((moved_boxes[:, 2], moved_boxes[:, 3], moved_boxes[:, 0], moved_boxes[:, 1]))
            sample["boxes"] = moved_boxes[order]
            sample["target_box"] = sample["boxes"][0] if len(order) else np.zeros(4, np.float32)
        if self.scene_targets:
            from seqtr_lib.data.synthetic import named_attributes_in_words, scene_targets

            try:
                sample["scene_centres"], sample["scene_labels"] = scene_targets(
                    annotation["scene"], out.geometry.scale_factor, out.geometry.crop, out.geometry.img_shape)
            except (KeyError, ValueError, TypeError) as error:
                raise AnnotationError(f"{self.annotation_file}, split '{self.split}', annotation {ann_index}: its "
                                      f"'scene' cannot give scene-loss targets ({error!r}); regenerate the set with "
                                      "make-synthetic or set model.scene_loss: 0") from error
            sample["named_attributes"] = named_attributes_in_words(expression)
        return sample

    def _objects(self, annotation: dict[str, Any], height: int, width: int, path: Path,
                 ann_index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """A record's objects in original pixels: boxes float64 (K, 4) x1, y1, x2, y2 (`box_corners`; for the mask
        task the tight boxes of the masks) and, for the mask task, (H, W) uint8 masks. A classic record is one."""
        generalised = GENERALISED_FIELD[self.task] in annotation
        if self.task == "box":
            bboxes = annotation["bboxes"] if generalised else [annotation["bbox"]]
            return np.array([box_corners(b, height, width) for b in bboxes]).reshape(-1, 4), []
        masks, boxes = [], []
        for number, polygons in enumerate(annotation["masks"] if generalised else [annotation["mask"]]):
            try:
                mask, rle = decode_mask(polygons, height, width)
            except (ValueError, TypeError, KeyError) as error:
                raise AnnotationError(f"{self.annotation_file}, split '{self.split}', annotation {ann_index} "
                                      f"({path}): cannot decode the mask of object {number}: {error}") from error
            masks.append(mask)
            boxes.append(ground_truth_box({}, height, width, rle))
        return np.array(boxes).reshape(-1, 4), masks

    def _zoom_canvas(self, annotation: dict[str, Any], expression_index: int, ori_shape: tuple[int, int],
                     rng: np.random.Generator) -> Canvas | None:
        """The canvas (`transforms.Canvas`) a training sample is zoomed out onto, or None: with
        data.zoom_out.probability, unless the larger frame changes what the expression denotes (a region word,
        `synthetic.zoom_keeps_denotation`); then the sample stays as it is. Draws nothing when it is off."""
        if not self.training or self.zoom_out_probability <= 0 or rng.random() >= self.zoom_out_probability:
            return None
        from seqtr_lib.data import transforms
        from seqtr_lib.data.synthetic import BACKGROUND_BASE, zoom_keeps_denotation

        canvas = transforms.draw_canvas(ori_shape, self.zoom_out_max_factor, BACKGROUND_BASE, rng)
        expression = annotation["expressions"][expression_index]
        return canvas if zoom_keeps_denotation(expression, annotation, canvas.shape, canvas.offset) else None


def answer_contours(masks: list[np.ndarray], max_points: int, max_objects: int, pad_shape: tuple[int, int],
                    center_sampling: bool = False) -> list[np.ndarray]:
    """The contours of a generalised mask answer: each 8-connected piece of each (H, W) mask, sampled as the
    classic contour (`sample_mask_vertices`, ``max_points`` slots) without its missing points; pieces of fewer
    than 3 points dropped; the ``max_objects`` largest pieces kept; row-major by first vertex (y, then x).
    Returns float32 (K_i, 2) x, y arrays."""
    import cv2

    from seqtr_lib.sequence import sample_mask_vertices

    pieces = []
    for mask in masks:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, np.uint8),
                                                                   connectivity=8)
        for label in range(1, count):
            vertices = sample_mask_vertices((labels == label).astype(np.uint8), max_points, pad_shape,
                                            center_sampling)
            points = vertices.T[(vertices >= 0).all(axis=0)]
            if len(points) >= 3:
                pieces.append((int(stats[label, cv2.CC_STAT_AREA]), points.astype(np.float32)))
    kept = sorted(pieces, key=lambda piece: -piece[0])[:max_objects]  # sorted() is stable: ties keep mask order
    return sorted((points for _, points in kept), key=lambda points: (points[0, 1], points[0, 0]))


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """The tight x1, y1, x2, y2 box (float32, inclusive pixels) of a binary mask; zeros when it is empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros(4, dtype=np.float32)
    return np.array([columns[0], rows[0], columns[-1], rows[-1]], dtype=np.float32)


def box_corners(bbox: Any, height: int, width: int) -> np.ndarray:
    """An [x, y, w, h] box -> float64 [x1, y1, x2, y2] clipped to the last pixel, [0, W-1] x [0, H-1], as the
    reference clips annotation boxes before any resize."""
    x, y, w, h = (float(v) for v in bbox)
    box = np.array([x, y, x + w, y + h], dtype=np.float64)
    box[0::2] = box[0::2].clip(0, width - 1)
    box[1::2] = box[1::2].clip(0, height - 1)
    return box


def ground_truth_box(annotation: dict[str, Any], height: int, width: int, rle: dict | None = None) -> np.ndarray:
    """The target's box in original pixels (`box_corners`): its bbox, or the tight box of its mask ``rle``
    (zeros for an empty mask) when it has none."""
    if "bbox" in annotation:
        return box_corners(annotation["bbox"], height, width)
    import pycocotools.mask as mask_utils

    return box_corners(mask_utils.toBbox(rle), height, width)


def scene_classes(experiment: Experiment) -> dict[str, int] | None:
    """The class counts of the scene attributes the model classifies (model.scene_loss, a training aid), in
    their logits' order; None when it classifies none. Only the synthetic set annotates whole scenes."""
    if experiment.model.scene_loss <= 0:
        return None
    from seqtr_lib.data.synthetic import scene_class_counts

    return scene_class_counts()


def load_vocabulary(experiment: Experiment) -> Vocabulary:
    """The experiment's vocabulary: ``data.vocabulary`` if set, else built from the annotation file.

    With pre-trained, frozen word vectors (the paper's setting) it holds the words of every split, as the
    original builds it (`original_vocabulary`), so a word seen only in val or test keeps its vector; no
    label leaks, since the vectors do not train. Trainable vectors take the training split's words only.
    """
    if experiment.data.vocabulary:
        return Vocabulary.load(experiment.data.vocabulary)
    path = experiment.annotation_path
    document = read_annotations(path)
    if experiment.model.word_vectors != "random" and experiment.model.freeze_word_vectors:
        return original_vocabulary(document)
    if "train" not in document:
        raise AnnotationError(f"{path} has no 'train' split to build the vocabulary from; set data.vocabulary "
                              "to a vocabulary JSON file")
    return Vocabulary.build(_expressions(document["train"]))


def original_vocabulary(document: dict[str, Any]) -> Vocabulary:
    """The original SeqTR's vocabulary of an annotation file: PAD, UNK, CLS, then every new word of every
    split, splits in the file's order (the order its release checkpoints' word-embedding rows follow)."""
    return Vocabulary.build(e for split in document.values() if isinstance(split, list) for e in _expressions(split))


def _expressions(annotations: list[dict[str, Any]]) -> Iterable[str]:
    for annotation in annotations:
        if isinstance(annotation, dict):
            yield from (e for e in annotation.get("expressions") or () if isinstance(e, str))


def build_dataset(experiment: Experiment, split: str, vocabulary: Vocabulary, training: bool,
                  scene_targets: bool | None = None) -> ReferDataset:
    """The ReferDataset of ``split`` configured by an experiment (task and num_ray from its model).

    Samples carry scene targets when ``scene_targets`` says so; by default in training with model.scene_loss.
    """
    data, model = experiment.data, experiment.model
    return ReferDataset(
        data.data_root,
        data.dataset,
        split,
        model.task,
        vocabulary,
        annotation_file=experiment.annotation_path,
        training=training,
        max_token=experiment.max_token,
        image_size=data.image_size,
        lsj=data.lsj,
        lsj_scale=data.lsj_scale,
        num_ray=model.num_ray,
        center_sampling=data.center_sampling,
        skip_bad_images=data.skip_bad_images,
        device_transforms=data.device_transforms,
        zoom_out_probability=data.zoom_out.probability,
        zoom_out_max_factor=data.zoom_out.max_factor,
        max_objects=data.max_objects,
        max_points=data.max_points,
        scene_targets=training and model.scene_loss > 0 if scene_targets is None else scene_targets,
        seed=experiment.train.seed,
    )
