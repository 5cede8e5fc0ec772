"""Read gRefCOCO (Liu et al., "GRES", CVPR 2023; henghuiding/gRefCOCO): expressions naming zero, one or
several objects. Generalised grounding, beyond the paper; in progress (docs/method.md, "Generalised grounding").

The release is ``grefs(unc).json`` (or a pickled ``grefs(unc).p``) and a COCO ``instances.json``. A ref is

    {"ref_id", "image_id", "split", "ann_id": [id, ...], "category_id": [...], "sentences": [{"sent", "raw",
     "sent_id", "tokens"}, ...], "sent_ids", "file_name"}

where ``ann_id`` lists every object the expressions name (a bare id is one object) and ``[-1]`` means none
(a no-target expression); a ref may also say ``"no_target": true``, which must then agree with ``[-1]``.
Each ref becomes one record of our instances.json, ``{split: [record, ...]}``, in the release's order:

    {"image_id", "height", "width", "expressions", "no_target", "bboxes": [[x, y, w, h], ...],
     "masks": [segmentation, ...], "category_ids", "ann_ids", "ref_id"}

one entry of ``bboxes``, ``masks``, ``category_ids`` and ``ann_ids`` per object, in the ref's order, none for
no target. The classic fields ``bbox`` and ``mask`` (one object) are absent, so the classic reader
(`seqtr_lib.data.refer`) is unchanged and refuses these records with its missing-field message. As ReLA's
loader does, crowd annotations (``iscrowd``) are left out of a ref's objects; a targeted ref left with none
is dropped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqtr_lib.atomic import write_json_atomic

NO_TARGET_ID = -1  # the ann_id list [-1] marks an expression that names nothing in the image
_REF_FIELDS = ("ref_id", "image_id", "split", "ann_id", "sentences")


class GRefCocoError(ValueError):
    """A gRefCOCO file or ref is malformed; the message names the file, the ref and the fix."""


def read_grefcoco(grefs_path: str | Path, instances_path: str | Path,
                  expression_field: str = "sent") -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The release as ``{split: [record, ...]}`` (module doc) and the number of refs dropped because every
    object they name is a crowd annotation. ``expression_field`` picks the sentence text, "sent" (normalised)
    or "raw"; a sentence without it falls back to "raw"."""
    grefs_path, instances_path = Path(grefs_path), Path(instances_path)
    refs = _load_refs(grefs_path)
    annotations, images = _load_instances(instances_path)
    splits: dict[str, list[dict[str, Any]]] = {}
    dropped = 0
    for index, ref in enumerate(refs):
        record = _record(ref, f"{grefs_path}, ref {index}", instances_path, annotations, images, expression_field)
        if record is None:
            dropped += 1
            continue
        splits.setdefault(str(ref["split"]), []).append(record)
    return splits, dropped


def convert_grefcoco(grefs_path: str | Path, instances_path: str | Path, out_path: str | Path,
                     expression_field: str = "sent") -> dict[str, int]:
    """Write ``out_path`` (our instances.json, atomically: a failure leaves any previous file as it was) from
    a gRefCOCO release; return the records per split."""
    splits, _ = read_grefcoco(grefs_path, instances_path, expression_field)
    write_json_atomic(out_path, splits, indent=None)
    return {split: len(records) for split, records in splits.items()}


def _load_refs(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"gRefCOCO refs file {path} does not exist; download the release (grefs(unc).json "
                                "and instances.json) from henghuiding/gRefCOCO and pass its path")
    if path.suffix == ".p":
        from seqtr_lib.data.convert import load_refs  # the same safe unpickler as the refer releases

        return load_refs(path)
    try:
        refs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise GRefCocoError(f"{path} is not valid JSON ({error}); is this gRefCOCO's grefs(unc).json?") from error
    if not isinstance(refs, list):
        raise GRefCocoError(f"{path}: expected a list of refs at the top level, got {type(refs).__name__}")
    return refs


def _load_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"COCO instances file {path} does not exist; use the instances.json of the "
                                "gRefCOCO release")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        return {a["id"]: a for a in coco["annotations"]}, {image["id"]: image for image in coco["images"]}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise GRefCocoError(f"{path}: not a COCO instances file with 'images' and 'annotations' ({error!r}); use "
                            "the instances.json of the gRefCOCO release") from error


def _record(ref: Any, where: str, instances_path: Path, annotations: dict[int, dict], images: dict[int, dict],
            expression_field: str) -> dict[str, Any] | None:
    """One ref -> its record, or None when every object it names is a crowd annotation."""
    if not isinstance(ref, dict):
        raise GRefCocoError(f"{where} is a {type(ref).__name__}, not a mapping; is this gRefCOCO's grefs file?")
    missing = [field for field in _REF_FIELDS if field not in ref]
    if missing:
        raise GRefCocoError(f"{where} has no {', '.join(repr(f) for f in missing)}; is this gRefCOCO's grefs file?")
    ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
    if not ann_ids or not all(isinstance(a, int) and not isinstance(a, bool) for a in ann_ids):
        raise GRefCocoError(f"{where} has ann_id {ref['ann_id']!r}; it must be a list of annotation ids, or [-1] "
                            "for an expression that names no object")
    no_target = ann_ids == [NO_TARGET_ID]
    if NO_TARGET_ID in ann_ids and not no_target:
        raise GRefCocoError(f"{where} has ann_id {ann_ids}: -1 (no target) may not stand beside object ids")
    if "no_target" in ref and bool(ref["no_target"]) != no_target:
        raise GRefCocoError(f"{where} says no_target {ref['no_target']!r} but ann_id {ann_ids}; a no-target ref "
                            "has ann_id [-1], a targeted one the ids of its objects")
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not sentences or not all(isinstance(s, dict) for s in sentences):
        raise GRefCocoError(f"{where} has no sentences; 'sentences' must be a non-empty list of "
                            "{'sent', 'raw', ...} mappings")
    image = images.get(ref["image_id"])
    if image is None:
        raise GRefCocoError(f"{where}: image_id {ref['image_id']} is not in {instances_path}'s images; use the "
                            "instances.json of the gRefCOCO release")
    objects = []
    for ann_id in [] if no_target else ann_ids:
        annotation = annotations.get(ann_id)
        if annotation is None:
            raise GRefCocoError(f"{where}: ann_id {ann_id} is not in {instances_path}; use the instances.json of "
                                "the gRefCOCO release")
        if annotation.get("image_id") != ref["image_id"]:
            raise GRefCocoError(f"{where}: annotation {ann_id} belongs to image {annotation.get('image_id')}, not "
                                f"to the ref's image {ref['image_id']}; the refs and instances files do not match")
        if not annotation.get("iscrowd"):
            objects.append(annotation)
    if not no_target and not objects:
        return None
    return {
        "image_id": ref["image_id"],
        "height": image["height"],
        "width": image["width"],
        "expressions": [s.get(expression_field) or s.get("raw") or "" for s in sentences],
        "no_target": no_target,
        "bboxes": [a["bbox"] for a in objects],
        "masks": [a["segmentation"] for a in objects],
        "category_ids": [a.get("category_id") for a in objects],
        "ann_ids": [a["id"] for a in objects],
        "ref_id": ref["ref_id"],
    }
