"""Matplotlib drawing for grounding samples: image, box, mask polygons, expression.

Drawing functions take an Axes, so they serve notebooks (inline backend) and scripts alike.
`contact_sheet` builds a bare `Figure` instead of going through pyplot: it never selects or changes
a backend (a Jupyter session keeps its inline one) and needs no display.

Coordinates are pixels in the COCO convention: pixel (i, j) covers [i, i+1) x [j, j+1), so images are
drawn with ``extent=(0, W, H, 0)`` and boxes and polygons land on the pixels they describe.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle

from seqtr_lib.data.synthetic import annotation_path, image_path


def draw_sample(ax: Axes, image: np.ndarray, box: Sequence[float] | None = None,
                polygons: Sequence[Sequence[float]] | None = None, expression: str | None = None,
                *, color: str = "#00ff66", mask_alpha: float = 0.25, wrap: int = 34) -> Axes:
    """Draw an RGB image (H, W, 3) with an optional box, mask polygons and expression (as the title).

    box: [x1, y1, x2, y2] pixel corners (an annotation's [x, y, w, h] is [x, y, x + w, y + h]).
    polygons: COCO flat lists [x1, y1, x2, y2, ...], filled with ``mask_alpha`` and outlined.
    """
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    for polygon in polygons or ():
        vertices = np.asarray(polygon, dtype=float).reshape(-1, 2)
        ax.add_patch(Polygon(vertices, closed=True, facecolor=to_rgba(color, mask_alpha),
                             edgecolor=color, linewidth=1))
    if box is not None:
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
    if expression:
        ax.set_title(textwrap.fill(expression, wrap), fontsize=8)
    ax.set_axis_off()
    return ax


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}: missing or not an image; "
                                "regenerate the data with `python -m seqtr_lib make-synthetic`")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def contact_sheet(data_root: str | Path, split: str = "train",
                  out_path: str | Path = "outputs/synthetic_samples.png", num_samples: int = 12,
                  seed: int = 0) -> Path:
    """Write a PNG grid of random synthetic samples (box, mask, one of their expressions); return its path."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}")
    json_path = annotation_path(data_root)
    with open(json_path) as f:
        dataset = json.load(f)
    if not dataset.get(split):
        raise KeyError(f"{json_path} has no annotations for split {split!r}; "
                       f"splits with annotations: {[name for name, anns in dataset.items() if anns]}")
    annotations = dataset[split]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(annotations), size=min(num_samples, len(annotations)), replace=False)
    columns = min(4, len(picks))
    rows = math.ceil(len(picks) / columns)
    figure = Figure(figsize=(3 * columns, 3.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, pick in zip(axes, picks):
        ann = annotations[pick]
        x, y, w, h = ann["bbox"]
        expression = ann["expressions"][rng.integers(len(ann["expressions"]))]
        polygons = ann["mask"] if isinstance(ann.get("mask"), list) else None
        draw_sample(ax, read_rgb(image_path(data_root, ann["image_id"])), (x, y, x + w, y + h),
                    polygons, expression)
    for ax in axes[len(picks):]:
        ax.set_axis_off()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=100)
    return out_path


def draw_points(ax: Axes, points: np.ndarray, scores: Sequence[float] | None = None, *, color: str = "#ff3366",
                close: bool = True) -> Axes:
    """Draw contour vertices (K, 2) numbered in emission order, joined into the polygon they close.

    With ``scores`` (the probability of each point, e.g. the mean of its x and y token scores) the
    marker size shows the confidence.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(points) == 0:
        return ax
    path = np.vstack([points, points[:1]]) if close and len(points) > 2 else points
    ax.plot(path[:, 0], path[:, 1], color=color, linewidth=1)
    sizes = 12 + 60 * np.asarray(scores, dtype=float) if scores is not None else 20
    ax.scatter(points[:, 0], points[:, 1], s=sizes, color=color, edgecolors="white", linewidths=0.5, zorder=3)
    for number, (x, y) in enumerate(points, start=1):
        ax.annotate(str(number), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7, color="white",
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": color, "alpha": 0.7, "linewidth": 0})
    return ax


def draw_prediction(ax: Axes, image: np.ndarray, prediction, expression: str | None = None) -> Axes:
    """Draw a ``predict.Prediction``: its box, or its polygon with numbered points and filled mask."""
    title = f"{expression}  ({prediction.seconds * 1000:.0f} ms)" if expression else None
    if prediction.task == "box":
        return draw_sample(ax, image, box=prediction.box, expression=title, color="#ff3366")
    polygons = [prediction.polygon.reshape(-1)] if len(prediction.polygon) > 2 else []
    draw_sample(ax, image, polygons=polygons, expression=title, color="#ff3366")
    pair_scores = prediction.scores[: 2 * len(prediction.polygon)].reshape(-1, 2).mean(axis=1)
    return draw_points(ax, prediction.polygon, pair_scores)


def new_figure(width: float = 6.0, height: float = 6.0) -> tuple[Figure, Axes]:
    """A bare Figure with one Axes (no pyplot: works headless and leaves notebook backends alone)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots()
