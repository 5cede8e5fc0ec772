"""Do trained weights ground a scene shown at another scale or shape? Four views of each val scene.

Each of the first ``--limit`` val expressions of a synthetic set is grounded, through `Grounder.predict`
(the path users take), on four views of its scene (S x S, 256 x 256 for the default set):

    as_generated   the image as generated                                  S x S
    strip_right    a grey strip of S/2 added on the right                  3S/2 x S  (W x H)
    strip_below    a grey strip of S/2 added below                         S x 3S/2
    shrunk         the scene resized to round(2S/3) on a grey S x S canvas  S x S, placed top-left (--shrunk-at)

The Grounder resizes a view's long side to the model's input size, so in both strip views the scene reaches
the network at 2/3 of its trained scale, in its top-left corner; `shrunk` shows the same scene at the same
scale and place (171/256 against 2/3 for the default set) on a square canvas, so it tells scale apart from
aspect ratio. ``--shrunk-at centre`` centres it instead. The grey is mid grey (128, 128, 128): the generator
has no single background grey (`synthetic._render` draws a textured background around a random level in
[70, 180]). The shrunk scene is resized with cv2 INTER_AREA, whose pixel edges map linearly
(x' = x * scale), and the target moves with its view by the same map: its box [x, y, w, h] and its
polygons are scaled and shifted, then the box is clipped and the polygons rasterised at the view's size as
the evaluation does for the original (`refer.box_corners`, `sequence.polygon_to_rle`).

Reported per checkpoint (default: both released weights) and view: box Acc@0.5 (share of IoU >= 0.5) and
mIoU, mask Prec@0.5 (share of mask IoU >= 0.5) and mIoU, each in %, with every expression's IoU; and the
same over the expressions without a region phrase ("on the left", "at the top right": thirds of the
image, which a strip or a canvas moves; size words, extremes and relations compare objects with each
other and keep their meaning in every view). The JSON names the machine.

The network runs in float32 unless ``--execution`` says otherwise: the benchmark measures the weights.
``--execution auto`` is what a CPU user's Grounder runs (folded BatchNorm; this benchmark found that the folded
backbone once ignored the padding a strip view leaves).

    python -m seqtr_lib make-synthetic --out data
    python benchmarks/scale_views.py --data-root data --limit 200 --out benchmarks/results/scale_views.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from seqtr_lib import execution as ex
from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.data.datasets import annotation_path, image_path
from seqtr_lib.data.refer import box_corners
from seqtr_lib.data.synthetic import REGION_PHRASES
from seqtr_lib.evaluation import load_trained
from seqtr_lib.images import read_image
from seqtr_lib.metrics import box_iou, mask_ious, summarize_box_ious
from seqtr_lib.predict import Grounder
from seqtr_lib.sequence import mask_to_rle, polygon_to_rle

GREY = 128  # mid grey: the generator's backgrounds have no one grey (a textured level drawn in [70, 180])
STRIP = 1 / 2  # a strip's extent, in scene sides
SHRINK = 2 / 3  # the object scale the strip views reach the network at: S / (3S/2)
CHECKPOINTS = ("weights/synthetic_det.pt", "weights/synthetic_mask.pt")


@dataclass(frozen=True)
class View:
    """One way of showing a scene: the canvas, and where and how large the scene sits on it."""

    name: str
    size: tuple[int, int]  # (width, height) of the view
    scene_size: tuple[int, int]  # (width, height) of the scene as placed
    offset: tuple[int, int]  # (left, top): where the scene's top-left corner lies in the view
    scale: tuple[float, float]  # (x, y): scene pixels as placed per original scene pixel


def views_of(width: int, height: int, shrunk_at: str = "top-left") -> list[View]:
    """The four views of a ``width`` x ``height`` scene."""
    shrunk = (round(width * SHRINK), round(height * SHRINK))
    left, top = ((width - shrunk[0]) // 2, (height - shrunk[1]) // 2) if shrunk_at == "centre" else (0, 0)
    same = dict(scene_size=(width, height), offset=(0, 0), scale=(1.0, 1.0))
    return [View("as_generated", (width, height), **same),
            View("strip_right", (width + round(width * STRIP), height), **same),
            View("strip_below", (width, height + round(height * STRIP)), **same),
            View("shrunk", (width, height), shrunk, (left, top), (shrunk[0] / width, shrunk[1] / height))]


def render(view: View, scene: np.ndarray) -> np.ndarray:
    """The view of an (H, W, 3) uint8 scene: the scene, resized if the view shrinks it, on a grey canvas."""
    canvas = np.full((view.size[1], view.size[0], 3), GREY, dtype=np.uint8)
    placed = scene if scene.shape[1::-1] == view.scene_size else cv2.resize(scene, view.scene_size,
                                                                            interpolation=cv2.INTER_AREA)
    (left, top), (width, height) = view.offset, view.scene_size
    canvas[top:top + height, left:left + width] = placed
    return canvas


def view_points(view: View, points: np.ndarray) -> np.ndarray:
    """Scene pixel coordinates (..., 2) as x, y -> the same points in the view (continuous coordinates)."""
    return np.asarray(points, dtype=np.float64) * view.scale + view.offset


def view_box(view: View, bbox: list[float]) -> np.ndarray:
    """An annotation's [x, y, w, h] -> its x1, y1, x2, y2 in the view, clipped as the evaluation clips boxes."""
    x, y, w, h = bbox
    (x1, y1), (x2, y2) = view_points(view, [[x, y], [x + w, y + h]])
    return box_corners([x1, y1, x2 - x1, y2 - y1], view.size[1], view.size[0])


def view_polygons(view: View, polygons: list[list[float]]) -> list[list[float]]:
    """An annotation's flat polygons [x1, y1, x2, y2, ...] moved into the view."""
    return [view_points(view, np.reshape(p, (-1, 2))).ravel().tolist() for p in polygons]


@dataclass(frozen=True)
class Item:
    """One val expression of one annotation."""

    annotation: dict[str, Any]
    expression: str
    image: Path

    @property
    def names_a_region(self) -> bool:
        """Whether the expression places its target in a third of the image, which the views move."""
        return any(phrase in self.expression for phrase in REGION_PHRASES.values())


def first_expressions(data_root: Path, split: str, limit: int) -> list[Item]:
    """The split's first ``limit`` expressions in the evaluation's order (annotation, then expression)."""
    path = annotation_path(data_root, "synthetic")
    if not path.is_file():
        raise SystemExit(f"no synthetic set at {data_root} ({path} is missing): make it with "
                         f"`python -m seqtr_lib make-synthetic --out {data_root}` or pass --data-root")
    items = [Item(a, e, image_path(data_root, "synthetic", a))
             for a in json.loads(path.read_text())[split] for e in a["expressions"]]
    return items[:limit]


def ground(grounder: Grounder, items: list[Item], views: list[View]) -> tuple[dict[str, dict[str, list[float]]], str]:
    """Every item grounded in every view for each task of the checkpoint: {view: {task: IoUs}}, and how the
    network ran."""
    ious: dict[str, dict[str, list[float]]] = {v.name: {task: [] for task in grounder.tasks} for v in views}
    ran = ""
    for item in items:
        scene = read_image(item.image)
        for view in views:
            image = render(view, scene)
            for task in grounder.tasks:
                prediction = grounder.predict(image, item.expression, task=task)
                ran = prediction.execution
                if task == "box":
                    iou = float(box_iou(prediction.box[None], view_box(view, item.annotation["bbox"])[None])[0])
                else:
                    truth = polygon_to_rle(view_polygons(view, item.annotation["mask"]), view.size[1], view.size[0])
                    iou = float(mask_ious([mask_to_rle(prediction.mask)], [truth])[0][0])
                ious[view.name][task].append(iou)
    return ious, ran


def summary(task: str, ious: list[float]) -> dict[str, float]:
    """Box: Acc@0.5 and mIoU; mask: Prec@0.5 and mIoU (%), as the evaluation computes them."""
    metrics = summarize_box_ious(ious)  # the share with IoU >= 0.5 and the mean, whatever the IoUs are of
    return metrics if task == "box" else {"prec@0.5": metrics["acc@0.5"], "miou": metrics["miou"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=list(CHECKPOINTS))
    parser.add_argument("--data-root", type=Path, default=Path("data"),
                        help="a synthetic set (`python -m seqtr_lib make-synthetic --out DIR`); nothing is generated")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=200, help="the split's first N expressions")
    parser.add_argument("--shrunk-at", choices=("top-left", "centre"), default="top-left",
                        help="where the shrunk scene sits on its canvas (top-left: where the strip views put it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--execution", default="fp32",
                        help="how the Grounder runs the network (seqtr_lib.execution; auto: as a user's Grounder does)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_views.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    items = first_expressions(args.data_root, args.split, args.limit)
    height, width = read_image(items[0].image).shape[:2]
    views = views_of(width, height, args.shrunk_at)
    invariant = [i for i, item in enumerate(items) if not item.names_a_region]
    report: dict[str, Any] = {
        "benchmark": "scale_views",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": ex.machine_description(), "device": args.device,
        "cuda": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
        "data_root": str(args.data_root), "split": args.split, "limit": args.limit, "num_expressions": len(items),
        "num_without_region_phrase": len(invariant), "grey": GREY, "shrunk_at": args.shrunk_at,
        "views": [asdict(v) for v in views], "results": []}
    for checkpoint in args.checkpoints:
        experiment, vocabulary, models = load_trained(checkpoint, args.device)
        weights = "ema" if "ema" in models else "raw"
        grounder = Grounder(models[weights], experiment, vocabulary, torch.device(args.device), execution=args.execution)
        ious, ran = ground(grounder, items, views)
        rows = []
        for view in views:
            row: dict[str, Any] = {"view": view.name}
            for task, values in ious[view.name].items():
                row[task] = {**summary(task, values), "ious": [round(v, 4) for v in values]}
                row[f"{task}_without_region_phrase"] = summary(task, [values[i] for i in invariant])
            rows.append(row)
            print(Path(checkpoint).stem, view.name, {k: {m: round(x, 2) for m, x in v.items() if m != "ious"}
                                                     for k, v in row.items() if k != "view"}, flush=True)
        report["results"].append({"name": Path(checkpoint).stem, "checkpoint": str(checkpoint), "weights": weights,
                                  "tasks": list(grounder.tasks), "execution": ran, "views": rows})
        write_json_atomic(args.out, report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
