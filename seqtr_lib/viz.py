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
