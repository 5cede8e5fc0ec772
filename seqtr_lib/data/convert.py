"""Convert an original refer release (``refs(unc).p`` + COCO ``instances.json``) to our instances.json.

The refer toolkit's release (RefCOCO, RefCOCO+, RefCOCOg) pickles a list of referring objects, each
``{"ref_id", "ann_id", "image_id", "split", "sentences": [{"raw", "sent", ...}], ...}``; the boxes and
segmentations live in the COCO-style ``instances.json`` next to it. The output has one entry per
referring object (the format the README's "Real datasets and weights" lays out)::

    {"train": [{"image_id", "height", "width", "bbox", "mask", "expressions",
                "category_id", "ref_id", "ann_id"}, ...], "val": [...], ...}
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.text import PlainDataUnpickler


def _decoded(value: Any) -> Any:
    """Python 2 pickles hold byte strings (keys included); make them text, recursively."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_decoded(k): _decoded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decoded(v) for v in value]
    return value


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """Read a refer release's ``refs(*).p`` safely (plain data only; Python 2 or 3 pickles)."""
    path = Path(path)
    try:
        # encoding="bytes" keeps Python 2 strings as bytes, decoded as UTF-8 by _decoded.
        refs = _decoded(PlainDataUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as error:
        raise ValueError(f"{path}: refused to unpickle ({error}); a refs file must hold plain data "
                         "(lists, dicts, strings, numbers)") from error
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"{path}: expected a list of referring objects (dicts), got {type(refs).__name__}")
    return refs


def _entry(ref: dict[str, Any], index: int, refs_path: Path, instances_path: Path,
           annotations: dict[int, dict], images: dict[int, dict], expression_field: str) -> dict[str, Any]:
    """One output annotation from a referring object and its COCO annotation and image."""
    where = f"{refs_path}, ref {index}"
    missing = [key for key in ("ann_id", "split", "sentences") if key not in ref]
    if missing:
        raise ValueError(f"{where} has no {', '.join(missing)}; is this a refer release's refs file?")
    annotation = annotations.get(ref["ann_id"])
    if annotation is None:
        raise ValueError(f"{where}: ann_id {ref['ann_id']} is not in {instances_path}; use the instances.json "
                         "of the same release")
    image = images.get(annotation["image_id"])
    if image is None:
        raise ValueError(f"{instances_path}: annotation {annotation['id']} names image {annotation['image_id']}, "
                         "which is not in its 'images'")
    expressions = [s.get(expression_field) or s.get("raw") or "" for s in ref["sentences"]]
    return {
        "image_id": annotation["image_id"],
        "height": image["height"],
        "width": image["width"],
        "bbox": annotation["bbox"],
        "mask": annotation["segmentation"],
        "expressions": expressions,
        "category_id": annotation.get("category_id"),
        "ref_id": ref.get("ref_id"),
        "ann_id": ref["ann_id"],
    }


def convert_refer(refs_path: str | Path, instances_path: str | Path, out_path: str | Path,
                  expression_field: str = "sent") -> dict[str, int]:
    """Write ``out_path`` (instances.json, atomically) from a refer release; return objects per split.

    ``expression_field`` picks the sentence text: "sent" (the toolkit's normalised text) or "raw";
    a sentence without it falls back to "raw". Splits keep the release's names and object order.
    """
    refs_path, instances_path, out_path = Path(refs_path), Path(instances_path), Path(out_path)
    refs = load_refs(refs_path)
    try:
        coco = json.loads(instances_path.read_text(encoding="utf-8"))
        annotations = {a["id"]: a for a in coco["annotations"]}
        images = {image["id"]: image for image in coco["images"]}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{instances_path}: not a COCO instances file with 'images' and 'annotations' "
                         f"({error!r})") from error
    splits: dict[str, list[dict[str, Any]]] = {}
    for index, ref in enumerate(refs):
        entry = _entry(ref, index, refs_path, instances_path, annotations, images, expression_field)
        splits.setdefault(str(ref["split"]), []).append(entry)
    write_json_atomic(out_path, splits, indent=None)
    return {split: len(entries) for split, entries in splits.items()}
