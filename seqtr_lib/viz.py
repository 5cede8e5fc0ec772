"""Matplotlib drawing for grounding: images with boxes, mask polygons and point sequences, attention maps,
and the notebooks' charts.

Drawing only: functions take arrays, dicts and predictions, never paths (`seqtr_lib.samples` reads
samples). They draw on an Axes, or build a bare `Figure` instead of going through pyplot, so they never
select or change a backend (a Jupyter session keeps its inline one) and need no display.

Coordinates are pixels in the COCO convention: pixel (i, j) covers [i, i+1) x [j, j+1), so images are
drawn with ``extent=(0, W, H, 0)`` and boxes and polygons land on the pixels they describe.
"""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle


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


OBJECT_COLORS = ("#00ff66", "#ffcc00", "#33ccff", "#ff66cc", "#ff8800", "#cc99ff", "#99ff33", "#ffffff")


def draw_objects(ax: Axes, image: np.ndarray, boxes: Sequence[Sequence[float]],
                 polygons: Sequence[Sequence[Sequence[float]] | None], expression: str | None = None,
                 *, wrap: int = 34) -> Axes:
    """Draw a generalised answer (docs/method.md, section 11): every object's box and mask polygons, one colour
    per object (an object in pieces has several polygons of its colour), or "no target" when there is none.

    boxes: [x1, y1, x2, y2] pixel corners, one per object; polygons: per object, COCO flat lists or None.
    """
    draw_sample(ax, image, expression=expression, wrap=wrap)
    for number, (box, object_polygons) in enumerate(zip(boxes, polygons)):
        color = OBJECT_COLORS[number % len(OBJECT_COLORS)]
        for polygon in object_polygons or ():
            vertices = np.asarray(polygon, dtype=float).reshape(-1, 2)
            # A light fill: the shapes' own colours must still read through it ("all the red shapes").
            ax.add_patch(Polygon(vertices, closed=True, facecolor=to_rgba(color, 0.12), edgecolor=color,
                                 linewidth=1.5))
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
    if not len(boxes):
        _no_target_label(ax)
    return ax


def _no_target_label(ax: Axes) -> None:
    """The red "no target" label across an answer of no object."""
    ax.text(0.5, 0.5, "no target", transform=ax.transAxes, ha="center", va="center", fontsize=11,
            color="white", bbox={"boxstyle": "round,pad=0.3", "facecolor": "#cc3333", "alpha": 0.85})


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
    """Draw a ``predict.Prediction``: its box, or its polygon with numbered points and filled mask; a generalised
    answer's objects with `draw_objects`."""
    title = f"{expression}  ({prediction.seconds * 1000:.0f} ms)" if expression else None
    if prediction.objects is not None:  # a generalised answer: every object in its colour, or "no target"
        if prediction.task == "box":
            return draw_objects(ax, image, prediction.objects, [None] * len(prediction.objects), title)
        boxes = [np.concatenate([contour.min(axis=0), contour.max(axis=0)]) for contour in prediction.objects]
        return draw_objects(ax, image, boxes, [[contour.reshape(-1)] for contour in prediction.objects], title)
    if not prediction.outlines:
        return draw_sample(ax, image, box=prediction.box, expression=title, color="#ff3366")
    outline = prediction.outline
    draw_sample(ax, image, polygons=[] if outline is None else [outline], expression=title, color="#ff3366")
    return draw_points(ax, prediction.points, prediction.point_scores())


def new_figure(width: float = 6.0, height: float = 6.0) -> tuple[Figure, Axes]:
    """A bare Figure with one Axes (no pyplot: works headless and leaves notebook backends alone)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots()


# ---------------------------------------------------------------------------------------------------
# Notebook figures: training curves, evaluation analysis, point sequences. Each returns a bare Figure.
# ---------------------------------------------------------------------------------------------------

# How tables and charts name the metrics (notebook 02's breakdowns).
METRIC_LABELS = {"miou": "mIoU", "acc@0.5": "Acc@0.5", "precision": "Precision", "n_acc": "N-acc",
                 "t_acc": "T-acc", "giou": "gIoU", "ciou": "cIoU"}
GT_COLOR = "#00ff66"
PRED_COLOR = "#ff3366"


def figure_png(figure: Figure, dpi: int = 110) -> bytes:
    """A Figure rendered as PNG bytes."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def grid_figure(count: int, columns: int = 4, cell: float = 3.0) -> tuple[Figure, list[Axes]]:
    """A Figure with ``count`` square Axes in rows of ``columns`` (unused cells hidden)."""
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(cell * columns, (cell + 0.35) * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.set_axis_off()
    return figure, axes[:count]


def draw_comparison(ax: Axes, image: np.ndarray, gt_box: Sequence[float] | None,
                    gt_polygons: Sequence[Sequence[float]] | None, pred_box: Sequence[float] | None = None,
                    pred_polygon: np.ndarray | None = None, title: str | None = None) -> Axes:
    """Ground truth in green (box, mask polygons), prediction in red (dashed box, or numbered polygon)."""
    draw_sample(ax, image, gt_box, gt_polygons, title, color=GT_COLOR)
    if pred_box is not None:
        x1, y1, x2, y2 = pred_box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=PRED_COLOR, linewidth=1.5,
                               linestyle="--"))
    if pred_polygon is not None:
        draw_points(ax, pred_polygon, color=PRED_COLOR)
    return ax


def draw_answer_comparison(ax: Axes, image: np.ndarray, gt_boxes: Sequence[Sequence[float]],
                           gt_polygons: Sequence[Sequence[float]], pred_boxes: Sequence[Sequence[float]],
                           pred_polygons: Sequence[np.ndarray], title: str | None = None) -> Axes:
    """A generalised answer against its targets: every target's box and mask polygons in green, every predicted
    box (dashed) or contour (numbered points) in red; "no target" on an image whose expression names nothing."""
    draw_sample(ax, image, polygons=gt_polygons, expression=title, color=GT_COLOR)
    for x1, y1, x2, y2 in gt_boxes:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=GT_COLOR, linewidth=1.5))
    for x1, y1, x2, y2 in pred_boxes:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=PRED_COLOR, linewidth=1.5,
                               linestyle="--"))
    for contour in pred_polygons:
        draw_points(ax, contour, color=PRED_COLOR)
    if not len(gt_boxes):
        ax.text(0.02, 0.02, "no target", transform=ax.transAxes, ha="left", va="bottom", fontsize=8, color="white",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "#333333", "alpha": 0.8})
    return ax


def training_curves(records: Sequence[dict], metrics: Sequence[str]) -> Figure:
    """Loss (per logged step and epoch mean), learning rate, and validation scores of raw vs EMA weights.

    records: log.jsonl lines (``type`` "step" or "epoch"); metrics: the validation metrics to draw (the
    task's `metrics.headline_metrics`).
    """
    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    figure = Figure(figsize=(13, 3.6), layout="constrained")
    loss_ax, lr_ax, val_ax = figure.subplots(1, 3)
    if steps:
        loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], linewidth=0.8, alpha=0.6,
                     label="logged step")
    if epochs:
        loss_ax.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], "o-", label="epoch mean")
    loss_ax.set(xlabel="step", ylabel="loss", title="training loss")
    lr_source = steps or epochs
    lr_ax.plot([r["step"] for r in lr_source], [r["lr"] for r in lr_source], ".-")
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for weights in ("raw", "ema"):
        for metric in metrics:
            points = [(r["epoch"] + 1, r["val"][weights][metric]) for r in epochs if weights in r.get("val", {})]
            if points:
                val_ax.plot(*zip(*points), "o-" if weights == "raw" else "s--", label=f"{weights} {metric}")
    val_ax.set(xlabel="epoch", ylabel="%", title="validation")
    for ax in (loss_ax, val_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return figure


def length_histogram(lengths: dict[str, Sequence[int]], max_token: int) -> Figure:
    """Words per expression, one outline per split, with the max_token cut-off marked."""
    figure, ax = new_figure(6.5, 3.5)
    longest = max((max(v) for v in lengths.values() if len(v)), default=1)
    bins = np.arange(0, max(longest, max_token) + 2) - 0.5
    for split, values in lengths.items():
        if len(values):
            ax.hist(values, bins=bins, histtype="step", density=True, linewidth=1.5, label=split)
    ax.axvline(max_token + 0.5, color="black", linestyle="--", linewidth=1,
               label=f"max_token {max_token} (longer ones are cut)")
    ax.set(xlabel="words per expression", ylabel="share of expressions", title="expression lengths")
    ax.legend(fontsize=8)
    return figure


def iou_histogram(ious: Sequence[float], title: str, score: str = "IoU") -> Figure:
    """Histogram of per-expression IoUs with the 0.5 threshold marked; ``score`` "F1" for a generalised box
    run's per-expression F1 (`reports.score_name`), where only F1 = 1 counts."""
    ious = np.asarray(ious, dtype=float)
    figure, ax = new_figure(6.0, 3.5)
    ax.hist(ious, bins=np.linspace(0, 1, 21), color="#4477aa", edgecolor="white")
    threshold, relation = (1.0, "=") if score == "F1" else (0.5, ">=")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    summary = (f"mean {ious.mean():.2f}, {np.mean(ious >= threshold):.0%} at {score} {relation} {threshold:g}"
               if ious.size else "empty")
    ax.set(xlabel=f"{score} with the ground truth", ylabel="expressions", title=f"{title}: {summary}")
    return figure


def breakdown_chart(breakdown: dict[str, dict[str, dict[str, float]]]) -> Figure:
    """Bars of each metric per group, one panel per grouping (reports.category_breakdown: mIoU and Acc@0.5;
    reports.target_breakdown: a generalised run's metrics per number of objects named)."""
    figure = Figure(figsize=(5.5 * len(breakdown), 3.8), layout="constrained")
    axes = figure.subplots(1, max(len(breakdown), 1), squeeze=False)[0]
    colors = ("#4477aa", "#ee6677", "#228833", "#ccbb44")
    for ax, (grouping, members) in zip(axes, breakdown.items()):
        x = np.arange(len(members))
        keys = [key for key in METRIC_LABELS if any(key in m for m in members.values())]
        width = 0.8 / max(len(keys), 1)
        for number, (key, color) in enumerate(zip(keys, colors)):
            values = [m.get(key, np.nan) for m in members.values()]  # N-acc of a type that names objects: none
            bars = ax.bar(x + (number - (len(keys) - 1) / 2) * width, values, width, label=METRIC_LABELS[key],
                          color=color)
            ax.bar_label(bars, labels=["" if np.isnan(value) else f"{value:.0f}" for value in values], fontsize=7)
        ax.set_xticks(x, [f"{name}\nn={m['n']}" for name, m in members.items()], fontsize=8)
        ax.set(ylim=(0, 100), ylabel="%", title=f"by {grouping}")
        ax.legend(fontsize=8)
    return figure


def ablation_chart(results: dict, metric: str) -> Figure:
    """Matched vs shuffled expressions (evaluation.evaluate's ``<weights>_shuffled`` entries), per split and weights."""
    pairs = [(f"{split}\n{weights}", scores[metric], per_split[f"{weights}_shuffled"][metric])
             for split, per_split in results["splits"].items()
             for weights, scores in per_split.items() if f"{weights}_shuffled" in per_split]
    figure, ax = new_figure(max(4.0, 1.2 * len(pairs) + 1), 3.6)
    x = np.arange(len(pairs))
    for offset, index, label, color in ((-0.2, 1, "its own expression", "#4477aa"),
                                        (0.2, 2, "another sample's expression", "#bbbbbb")):
        bars = ax.bar(x + offset, [p[index] for p in pairs], 0.4, label=label, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [p[0] for p in pairs], fontsize=8)
    ax.set(ylabel=f"{metric} (%)", ylim=(0, 100), title="does the model read the expression?")
    ax.legend(fontsize=8)
    return figure


def cmap_color(index: int) -> tuple[float, float, float, float]:
    """A distinct colour per point index (tab20, cycling)."""
    from matplotlib import colormaps

    return colormaps["tab20"](index % 20)


def draw_token_scores(ax: Axes, tokens: Sequence[int], scores: Sequence[float], eos: int,
                      separator: int | None = None, box_objects: bool = False) -> Axes:
    """Bar per emitted token (x1, y1, x2, ... up to the first EOS) with its probability, coloured per point.

    A generalised answer (``separator``: its separator id; ``box_objects``: 4 tokens an object, else contours
    split at separators) labels each token with its object ("2:x1") in that object's `OBJECT_COLORS` colour,
    and shows each separator as a grey "SEP" bar."""
    tokens = np.asarray(tokens).reshape(-1)
    stop = np.flatnonzero(tokens == eos)
    length = int(stop[0]) + 1 if len(stop) else len(tokens)
    if separator is None:
        labels = ["EOS" if tokens[i] == eos else f"{'xy'[i % 2]}{i // 2 + 1}" for i in range(length)]
        colors = [to_rgba("black") if tokens[i] == eos else cmap_color(i // 2) for i in range(length)]
    else:
        labels, colors, number, position = [], [], 0, 0
        for token in tokens[:length]:
            if token in (eos, separator):
                labels.append("EOS" if token == eos else "SEP")
                colors.append(to_rgba("black" if token == eos else "#999999"))
                number, position = number + (token == separator), 0
                continue
            labels.append(f"{number + 1}:{'xy'[position % 2]}{position // 2 + 1}")
            colors.append(to_rgba(OBJECT_COLORS[number % len(OBJECT_COLORS)]))
            position += 1
            if box_objects and position == 4:
                number, position = number + 1, 0
        if length > 40:  # a long answer: name each object's first token, the separators and EOS only
            labels = [label if ":" not in label or label.endswith(":x1") else "" for label in labels]
    ax.bar(np.arange(length), np.asarray(scores, dtype=float)[:length], color=colors, edgecolor="#444444",
           linewidth=0.3)
    ax.set_xticks(np.arange(length), labels, rotation=90, fontsize=7)
    ax.set(ylim=(0, 1), ylabel="probability", title="confidence of each emitted token")
    return ax


def sequence_view(image: np.ndarray, gt_points: np.ndarray, expression: str, task: str, prediction=None,
                  eos: int | None = None) -> Figure:
    """The target and predicted point sequences, numbered in emission order, and per-token confidences.

    gt_points: (K, 2) pixels, the training target's vertices, or for ``task`` "box" its two corners
    (x1, y1) and (x2, y2). ``prediction``
    (a predict.Prediction, optional) adds its points (polygon, or the box corners) sized by confidence
    and a bar chart of its token probabilities (``eos`` is the EOS id).
    """
    panels = 3 if prediction is not None else 1
    figure = Figure(figsize=(4.6 * panels, 4.8), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    gt_box = np.asarray(gt_points).reshape(-1) if task == "box" else None
    draw_sample(axes[0], image, box=gt_box, expression=f"target: {expression}", color=GT_COLOR)
    draw_points(axes[0], gt_points, color=GT_COLOR, close=task != "box")
    if len(gt_points):  # the numbers of a small object's points need room: zoom on the target
        _zoom(axes[0], np.asarray(gt_points, dtype=float), margin=0.3 * float(np.ptp(gt_points, axis=0).max()) + 8,
              shape=image.shape)
    if prediction is not None:
        outline = prediction.outline
        draw_sample(axes[1], image, box=prediction.box, polygons=None if outline is None else [outline],
                    color=PRED_COLOR, expression=f"predicted ({prediction.seconds * 1000:.0f} ms)")
        draw_points(axes[1], prediction.points, prediction.point_scores(), color=PRED_COLOR, close=prediction.outlines)
        draw_token_scores(axes[2], prediction.tokens, prediction.scores, eos)
    return figure


def answer_view(image: np.ndarray, objects: Sequence[np.ndarray], expression: str, task: str, prediction=None,
                eos: int | None = None, separator: int | None = None) -> Figure:
    """A generalised answer (docs/method.md, section 11) as `sequence_view` draws one object: the target's and
    the prediction's objects in emission order, each in its `OBJECT_COLORS` colour with its number at its first
    point and its points numbered (a box: its two corners; a mask: its contour), and the prediction's token
    confidences with every separator shown.

    objects: the target's objects in emission order, each (2, 2) box corners or (K, 2) contour points; a
    prediction's are its ``objects`` (boxes (4,) x1, y1, x2, y2, or contours).
    """
    panels = 3 if prediction is not None else 1
    figure = Figure(figsize=(4.6 * panels, 4.8), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    _draw_answer(axes[0], image, [np.asarray(o, float).reshape(-1, 2) for o in objects], task,
                 f"target: {expression}")
    if prediction is not None:
        _draw_answer(axes[1], image, [np.asarray(o, float).reshape(-1, 2) for o in prediction.objects], task,
                     f"predicted ({prediction.seconds * 1000:.0f} ms)")
        draw_token_scores(axes[2], prediction.tokens, prediction.scores, eos, separator, box_objects=task == "box")
    return figure


def _draw_answer(ax: Axes, image: np.ndarray, objects: Sequence[np.ndarray], task: str, title: str) -> None:
    draw_sample(ax, image, expression=title)
    for number, points in enumerate(objects):
        color = OBJECT_COLORS[number % len(OBJECT_COLORS)]
        if task == "box":
            (x1, y1), (x2, y2) = points
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        draw_points(ax, points, color=color, close=task != "box")
        ax.annotate(f"object {number + 1}", points[0], xytext=(-4, -10), textcoords="offset points", fontsize=8,
                    color="black", ha="right", bbox={"boxstyle": "round,pad=0.15", "facecolor": color, "alpha": 0.9})
    if not len(objects):
        _no_target_label(ax)


def _zoom(ax: Axes, points: np.ndarray, margin: float, shape: tuple[int, ...]) -> None:
    """Limit the view to the points' extent plus ``margin`` pixels (y axis pointing down)."""
    low, high = points.min(axis=0) - margin, points.max(axis=0) + margin
    ax.set_xlim(max(low[0], 0), min(high[0], shape[1]))
    ax.set_ylim(min(high[1], shape[0]), max(low[1], 0))


def quantization_figure(image: np.ndarray, points: np.ndarray, quantized: dict[int, np.ndarray],
                        pad_shape: tuple[int, int]) -> Figure:
    """How coarse coordinate bins move the vertices: one panel per num_bin, zoomed on the object.

    points: (K, 2) exact vertices; quantized[num_bin]: (K, 2) the same after quantize -> dequantize
    (a bin's lower edge or centre). Bin boundaries are drawn where they are wider than about two screen pixels.
    """
    pad_h, pad_w = pad_shape
    figure, axes = grid_figure(len(quantized), columns=len(quantized), cell=3.4)
    for ax, (num_bin, moved) in zip(axes, quantized.items()):
        error = float(np.abs(moved - points).max()) if len(points) else 0.0
        draw_sample(ax, image, expression=f"num_bin {num_bin}: bin {pad_w / num_bin:.2f} px, "
                                          f"max error {error:.2f} px")
        if num_bin <= 100:
            for x in np.arange(num_bin + 1) * pad_w / num_bin:
                ax.axvline(x, color="white", linewidth=0.3, alpha=0.6)
            for y in np.arange(num_bin + 1) * pad_h / num_bin:
                ax.axhline(y, color="white", linewidth=0.3, alpha=0.6)
        draw_points(ax, points, color=GT_COLOR)
        draw_points(ax, moved, color=PRED_COLOR)
        if len(points):
            _zoom(ax, points, margin=0.15 * float(np.ptp(points, axis=0).max()) + 2, shape=image.shape)
    return figure


def sampling_figure(image: np.ndarray, vertices: dict[tuple[int, bool], np.ndarray]) -> Figure:
    """Mask targets for several (num_ray, center_sampling) settings: rows by mode, columns by num_ray.

    vertices[(num_ray, center_sampling)]: (2, num_ray) as sample_mask_vertices returns (-1 = missing).
    """
    num_rays = sorted({n for n, _ in vertices})
    modes = sorted({c for _, c in vertices})
    figure = Figure(figsize=(3.2 * len(num_rays), 3.5 * len(modes)), layout="constrained")
    axes = figure.subplots(len(modes), len(num_rays), squeeze=False)
    for row, center in enumerate(modes):
        for column, num_ray in enumerate(num_rays):
            target = vertices[(num_ray, center)]
            points = target.T[(target >= 0).all(axis=0)]
            mode = "rays from the centre" if center else "contour steps"
            draw_sample(axes[row, column], image, expression=f"{mode}, num_ray {num_ray}: {len(points)} points")
            draw_points(axes[row, column], points, color=GT_COLOR)
            if len(points):
                _zoom(axes[row, column], points, margin=6, shape=image.shape)
    return figure


def shuffle_figure(image: np.ndarray, vertices: np.ndarray, shuffled: np.ndarray) -> Figure:
    """A mask target before and after point-order shuffling (same points, another emission order)."""
    figure = Figure(figsize=(8, 4.3), layout="constrained")
    for ax, target, title in zip(figure.subplots(1, 2), (vertices, shuffled), ("contour order", "shuffled order")):
        points = target.T[(target >= 0).all(axis=0)]
        draw_sample(ax, image, expression=title)
        draw_points(ax, points, color=GT_COLOR)
        if len(points):
            _zoom(ax, points, margin=6, shape=image.shape)
    return figure


# ---------------------------------------------------------------------------------------------------
# Where the decoder looked: per-token cross-attention (the paper's Figure 5).
# ---------------------------------------------------------------------------------------------------

def draw_attention_overlay(ax: Axes, image: np.ndarray, attention: np.ndarray, title: str | None = None,
                           point: Sequence[float] | None = None) -> Axes:
    """The image with an attention map (H, W) over it as a heat map, and optionally the point it produced."""
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    peak = float(attention.max()) or 1.0
    ax.imshow(attention / peak, extent=(0, width, height, 0), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    if point is not None:
        ax.scatter([point[0]], [point[1]], s=28, color="#00e5ff", edgecolors="black", linewidths=0.6, zorder=3)
    ax.set_axis_off()
    if title:
        ax.set_title(textwrap.fill(title, 44), fontsize=8)
    return ax


def attention_figure(image: np.ndarray, prediction, expression: str, columns: int = 6, cell: float = 2.2) -> Figure:
    """The prediction with its numbered points, then where the decoder looked for each token or point.

    Each panel is the cross-attention of the query that emitted the token, averaged over decoder layers
    and heads, over the original image (``prediction`` from ``Grounder.predict(..., return_attention=True)``).
    """
    panels = prediction.attention_panels()
    figure, axes = grid_figure(len(panels) + 1, columns=columns, cell=cell)
    draw_prediction(axes[0], image, prediction)
    axes[0].set_title(textwrap.shorten(expression, 40), fontsize=8)
    for ax, (label, attention, point) in zip(axes[1:], panels):
        draw_attention_overlay(ax, image, attention, label, point)
    return figure
