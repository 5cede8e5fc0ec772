"""The instances.json datasets of SeqTR: one table of per-dataset facts and one Dataset class."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFolder:
    """Where one image source lives under ``data_root/images`` and how its files are named."""

    folder: str
    pattern: str  # formatted with the annotation's image_id

    def path_for(self, image_id: int) -> str:
        return f"{self.folder}/{self.pattern % image_id}"


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
}
