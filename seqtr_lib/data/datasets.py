"""The datasets SeqTR reads: one table of per-dataset facts and the rules for where their files live.

    data_root/annotations/<dataset>/instances.json   {split: [annotation, ...]}  (`annotation_path`)
    data_root/images/<folder>/<file name>            the dataset's ImageFolder, or for "mixed" the folder
                                                     of each annotation's data_source  (`image_path`)

This module imports nothing from seqtr_lib: the config, the readers and the synthetic generator all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImageFolder:
    """Where one image source lives under ``data_root/images`` and how its files are named."""

    folder: str
    pattern: str  # formatted with the annotation's image_id

    def directory(self, data_root: str | Path) -> Path:
        """The folder holding this source's images."""
        return Path(data_root) / "images" / self.folder

    def path(self, data_root: str | Path, image_id: int) -> Path:
        """The file of image ``image_id``."""
        return self.directory(data_root) / (self.pattern % image_id)


COCO = ImageFolder("mscoco/train2014", "COCO_train2014_%012d.jpg")
SAIAPRTC12 = ImageFolder("saiaprtc12", "%d.jpg")
FLICKR30K = ImageFolder("flickr30k", "%d.jpg")
VISUAL_GENOME = ImageFolder("visual-genome", "%d.jpg")
SYNTHETIC = ImageFolder("synthetic", "%d.jpg")

# The mixed pre-training set routes each annotation by its "data_source" field.
MIXED_SOURCES = {"coco": COCO, "flickr": FLICKR30K, "vg": VISUAL_GENOME, "saiaprtc12": SAIAPRTC12}


@dataclass(frozen=True)
class DatasetInfo:
    """Facts that differ between datasets; everything else is shared code."""

    splits: tuple[str, ...]
    max_token: int
    images: ImageFolder | None  # None: routed per annotation by data_source (mixed)


DATASETS: dict[str, DatasetInfo] = {
    "refcoco-unc": DatasetInfo(("train", "val", "testA", "testB"), 15, COCO),
    "refcocoplus-unc": DatasetInfo(("train", "val", "testA", "testB"), 15, COCO),
    "refcocog-umd": DatasetInfo(("train", "val", "test"), 20, COCO),
    "refcocog-google": DatasetInfo(("train", "val"), 20, COCO),
    "referitgame-berkeley": DatasetInfo(("train", "val", "test"), 20, SAIAPRTC12),
    "flickr30k": DatasetInfo(("train", "val", "test"), 20, FLICKR30K),
    "mixed": DatasetInfo(("train",), 40, None),
    "synthetic": DatasetInfo(("train", "val", "testA", "testB"), 20, SYNTHETIC),
    # gRefCOCO (generalised: zero or more objects per expression; `seqtr_lib.data.grefcoco`, convert-grefcoco):
    # RefCOCO's unc images and splits; read with data.max_objects > 0.
    "grefcoco": DatasetInfo(("train", "val", "testA", "testB"), 20, COCO),
}


def annotation_path(data_root: str | Path, dataset: str) -> Path:
    """Where a dataset's annotation file lives: ``data_root/annotations/<dataset>/instances.json``."""
    return Path(data_root) / "annotations" / dataset / "instances.json"


def image_path(data_root: str | Path, dataset: str, annotation: dict[str, Any]) -> Path:
    """Where an annotation's image lives: ``data_root/images/<folder>/<name>`` per the DATASETS table."""
    folder = DATASETS[dataset].images or MIXED_SOURCES[annotation["data_source"]]
    return folder.path(data_root, annotation["image_id"])
