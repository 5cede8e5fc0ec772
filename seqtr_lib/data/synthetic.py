"""The built-in "shapes" grounding dataset: seeded scenes of coloured shapes, expressions naming one.

Each image holds a few shapes (``KINDS`` x ``COLORS`` x ``SIZES``) on a textured background. Shapes
drawn later occlude earlier ones, so an object's mask is its *visible* region and its box is the tight
box of that region; objects left mostly hidden are removed from the scene. Expressions come from a
small grammar (colour, kind, relative size, position in the image, relation to another object) and a
semantic evaluator keeps only those that denote exactly their target. Scenes draw colours and kinds
from small pools, so distractors share the target's colour or kind and every word matters.

Splits: train / val / testA share one distribution; testB targets are colour-kind pairs
(``HELD_OUT_PAIRS``) that never appear in the other splits' scenes.

Generalised sets (issue 36, beyond the paper; docs/method.md section 11), when `generate_dataset` gets
``generalised`` shares: expressions may also name several objects ("all the red shapes", "the two circles on
the left", "both squares", "every star left of the blue circle"; `group_denotation`) or none ("the green
star" in a scene with green things and stars but no green star; `no_target_referents`), and a share of images
has one object cut into pieces by a shape drawn in front of it (`_add_occluder`). Every record then has the
shape of the gRefCOCO reader's (`seqtr_lib.data.grefcoco`): ``bboxes`` and ``masks``, one per object it names
(none for no target), and ``no_target``. Without them the output is the classic one, byte for byte.

Layout written by `generate_dataset` (a ``data_root`` like the real datasets', by the rules of
`seqtr_lib.data.datasets`):

    data_root/annotations/synthetic/instances.json   {"train": [ann, ...], "val", "testA", "testB"}
    data_root/images/synthetic/{image_id}.jpg

Coordinates are pixels with the origin at the top-left image corner and pixel (i, j) covering
[i, i+1) x [j, j+1) (COCO): ``bbox`` is [x, y, w, h], ``mask`` a list of flat [x1, y1, x2, y2, ...]
polygons that pycocotools rasterises back to exactly the visible pixels.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.data.datasets import SYNTHETIC, annotation_path

if TYPE_CHECKING:
    from seqtr_lib.config import GeneralisedConfig

COLORS: dict[str, tuple[int, int, int]] = {  # RGB, far apart so that noise and JPEG cannot mix them up
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "cyan": (40, 200, 210),
}
KINDS = ("circle", "square", "triangle", "star", "diamond")
SIZES = {"small": 0.065, "medium": 0.095, "large": 0.135}  # circumradius / image side (+-5 % jitter)
# One held-out kind per colour: every colour and every kind is still seen in training, only the pair is new.
HELD_OUT_PAIRS = frozenset({("red", "star"), ("green", "diamond"), ("blue", "triangle"),
                            ("yellow", "circle"), ("purple", "square"), ("cyan", "triangle")})
SPLITS = ("train", "val", "testA", "testB")
# The classes of model.scene_loss, in its logits' order: each scene object's colour, kind and size class.
SCENE_ATTRIBUTES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "kind": KINDS, "size": tuple(SIZES)}


def scene_class_counts() -> dict[str, int]:
    """How many classes each scene attribute has, in the scene classifiers' order (color, kind, size)."""
    return {field: len(classes) for field, classes in SCENE_ATTRIBUTES.items()}

MAX_EXPRESSIONS = 4          # per object
MIN_VISIBLE_FRACTION = 0.6   # of an object's own area; below it the object is removed from the scene
CLEAR_MARGIN = 0.04          # x image side: how clearly a spatial word must hold, or fail, for a distractor
SIZE_MARGIN = math.log(1.2)  # radius ratio for "big"/"small"; the size classes differ by >= 1.32
JPEG_QUALITY = 90
BACKGROUND_BASE = (70, 180)  # the range of a scene's mean background grey (`_render`); a zoom-out canvas's grey
MAX_SCENE_ATTEMPTS = 100

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
SIZE_WORDS = {"big": ("big", "large"), "small": ("small", "little")}
EXTREME_WORDS = {"left": ("leftmost",), "right": ("rightmost",), "top": ("topmost", "highest"),
                 "bottom": ("bottommost", "lowest")}
RELATION_WORDS = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
                  "top": ("above",), "bottom": ("below", "under")}
# Generalised sets: the quantity words of an expression naming several objects, and how many each names
# (None: two or more, as many as match).
QUANTITY_COUNTS: dict[str, int | None] = {"all": None, "every": None, "both": 2, "two": 2, "three": 3}
SPLIT_MIN_VISIBLE = 0.3      # of a deliberately split object's own area (the others keep MIN_VISIBLE_FRACTION)
MIN_PIECE_FRACTION = 0.08    # each piece of a split object, of its own area: no speck counts as a piece
OCCLUDER_TRIES = 40          # placements of the shape in front tried per scene before the scene is redrawn
REGION_PHRASES = {("left",): "on the left", ("right",): "on the right", ("top",): "at the top",
                  ("bottom",): "at the bottom", ("top", "left"): "at the top left",
                  ("top", "right"): "at the top right", ("bottom", "left"): "at the bottom left",
                  ("bottom", "right"): "at the bottom right"}


def _unit_outline(kind: str) -> np.ndarray:
    """Vertices (N, 2) of a kind at circumradius 1, centred on the origin, y pointing down."""
    if kind == "star":
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if kind == "diamond":  # narrower than tall, so that it never reads as a rotated square
        return np.array([[0.0, -1.0], [0.65, 0.0], [0.0, 1.0], [-0.65, 0.0]])
    corners = {"circle": 40, "square": 4, "triangle": 3}[kind]
    start = {"circle": 0.0, "square": np.pi / 4, "triangle": -np.pi / 2}[kind]
    angles = start + np.linspace(0, 2 * np.pi, corners, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


UNIT_OUTLINES = {kind: _unit_outline(kind) for kind in KINDS}
ROTATION_JITTER = {"circle": 0, "square": 12, "triangle": 15, "star": 36, "diamond": 12}  # degrees


@dataclass(frozen=True)
class SceneObject:
    """One visible shape. Spatial words use ``center``, the centre of the visible box."""

    color: str
    kind: str
    size: str                      # size class, a key of SIZES
    radius: float                  # circumradius as drawn, pixels
    center: tuple[float, float]    # (x, y) pixels
    bbox: tuple[int, int, int, int]  # x, y, w, h of the visible mask
    polygons: list[list[float]]    # visible region, COCO polygons
    area: int                      # visible pixels


@dataclass(frozen=True)
class Referent:
    """The meaning of an expression: colour/kind filters, then at most one size or spatial word."""

    color: str | None = None
    kind: str | None = None        # None reads as "shape"
    size: str | None = None        # "big" | "small", among the objects matching colour and kind
    region: tuple[str, ...] = ()   # a key of REGION_PHRASES: thirds of the image
    extreme: str | None = None     # a key of DIRECTIONS: "left" -> the leftmost
    relation: str | None = None    # a key of DIRECTIONS: "left" -> left of ``landmark``
    landmark: Referent | None = None
    quantity: str | None = None    # a key of QUANTITY_COUNTS: several objects (`group_denotation`); None: one

    @property
    def expression_type(self) -> str:
        if self.relation:
            return "relation"
        if self.region or self.extreme:
            return "position"
        return "size" if self.size else "attribute"


def _keep(sure: set[int], maybe: set[int], value: Callable[[int], float],
          margin: float) -> tuple[set[int], set[int]]:
    return {i for i in sure if value(i) > margin}, {i for i in maybe if value(i) > -margin}


def _keep_best(sure: set[int], maybe: set[int], difference: Callable[[int, int], float],
               margin: float) -> tuple[set[int], set[int]]:
    """Superlative: keep the members that beat every other possible member by ``difference(i, j)``."""
    if len(maybe) < 2:  # "the big circle" needs a second circle
        return set(), set()
    return _keep(sure, maybe, lambda i: min(difference(i, j) for j in maybe if j != i), margin)


def _region_value(center: tuple[float, float], direction: str, frame: tuple[float, float]) -> float:
    """How far (pixels) ``center`` lies inside the outer third of the ``frame`` (width, height) towards
    ``direction``: thirds of the width for left and right, of the height for top and bottom."""
    dx, dy = DIRECTIONS[direction]
    width, height = frame
    return dx * (center[0] - width / 2) + dy * (center[1] - height / 2) - (width if dx else height) / 6


def _relation_value(center: tuple[float, float], landmark: tuple[float, float], direction: str) -> float:
    """How clearly (pixels) ``center`` lies towards ``direction`` of ``landmark``: along minus across."""
    dx, dy = DIRECTIONS[direction]
    offset_x, offset_y = center[0] - landmark[0], center[1] - landmark[1]
    return (dx * offset_x + dy * offset_y) - abs(dy * offset_x - dx * offset_y)


def denotation(referent: Referent, objects: list[SceneObject], image_size: int,
               frame: tuple[float, float] | None = None) -> tuple[frozenset[int], frozenset[int]]:
    """The objects (indices) that ``referent`` surely denotes, and those it may denote.

    Size and spatial words are vague near their thresholds, so each is read with a margin: an object
    surely matches when the word holds by more than the margin, and may match unless it fails by more
    than the margin. An expression is unique when the target surely matches and nothing else may.
    Region words read the thirds of ``frame`` (width, height), by default the ``image_size`` square the
    scene was drawn in; a zoom-out canvas is another frame, with the same objects and margin.
    """
    margin = CLEAR_MARGIN * image_size
    frame = frame or (image_size, image_size)
    sure = {i for i, o in enumerate(objects)
            if referent.color in (None, o.color) and referent.kind in (None, o.kind)}
    maybe = set(sure)
    if referent.size:
        sign = 1 if referent.size == "big" else -1
        log_radius = [math.log(o.radius) for o in objects]
        sure, maybe = _keep_best(sure, maybe, lambda i, j: sign * (log_radius[i] - log_radius[j]),
                                 SIZE_MARGIN)
    if referent.region:
        sure, maybe = _keep(sure, maybe, lambda i: min(
            _region_value(objects[i].center, d, frame) for d in referent.region), margin)
    if referent.extreme:
        dx, dy = DIRECTIONS[referent.extreme]
        reach = [dx * o.center[0] + dy * o.center[1] for o in objects]
        sure, maybe = _keep_best(sure, maybe, lambda i, j: reach[i] - reach[j], margin)
    if referent.relation:
        landmark_sure, landmark_maybe = denotation(referent.landmark, objects, image_size, frame)
        if len(landmark_maybe) != 1 or landmark_sure != landmark_maybe:
            return frozenset(), frozenset()
        (landmark,) = landmark_sure
        sure.discard(landmark)
        maybe.discard(landmark)
        sure, maybe = _keep(sure, maybe, lambda i: _relation_value(
            objects[i].center, objects[landmark].center, referent.relation), margin)
    return frozenset(sure), frozenset(maybe)


def expression_text(referent: Referent, rng: np.random.Generator) -> str:
    """Words for a referent, synonyms drawn from ``rng``: "the leftmost red circle", ..."""
    def pick(options: tuple[str, ...]) -> str:
        return options[rng.integers(len(options))]

    if referent.quantity:
        return _group_text(referent, rng)
    words = ["the"]
    if referent.extreme:
        words.append(pick(EXTREME_WORDS[referent.extreme]))
    if referent.size:
        words.append(pick(SIZE_WORDS[referent.size]))
    if referent.color:
        words.append(referent.color)
    words.append(referent.kind or "shape")
    if referent.region:
        words.append(REGION_PHRASES[referent.region])
    if referent.relation:
        words += [pick(RELATION_WORDS[referent.relation]), expression_text(referent.landmark, rng)]
    return " ".join(words)


def _group_text(referent: Referent, rng: np.random.Generator) -> str:
    """Words for a referent of several objects: "all the red circles", "every circle", "both squares", "the
    two stars on the left", "the three shapes left of the blue square"."""
    noun = referent.kind or "shape"
    color = [referent.color] if referent.color else []
    quantity = referent.quantity
    if quantity == "every":
        words = ["every", *color, noun]
    elif quantity == "both":
        words = ["both", *color, f"{noun}s"]
    elif quantity == "all":
        words = ["all", "the", *color, f"{noun}s"]
    else:
        words = ["the", quantity, *color, f"{noun}s"]
    if referent.region:
        words.append(REGION_PHRASES[referent.region])
    if referent.relation:
        options = RELATION_WORDS[referent.relation]
        words += [options[rng.integers(len(options))], expression_text(referent.landmark, rng)]
    return " ".join(words)


def group_denotation(referent: Referent, objects: list[SceneObject], image_size: int) -> frozenset[int] | None:
    """The objects (indices) a referent of several objects names, or None when it names no clear group.

    Its colour, kind, region and relation are read as `denotation` reads them; the group is what they
    surely denote, and it is clear when nothing else may match (no object near a threshold), when it has at
    least two members and when its quantity word counts them ("both" and "two": exactly two, "three":
    exactly three, "all" and "every": two or more).
    """
    sure, maybe = denotation(referent, objects, image_size)
    count = QUANTITY_COUNTS[referent.quantity]
    if sure != maybe or len(sure) < 2 or count not in (None, len(sure)):
        return None
    return sure


def _landmarks(objects: list[SceneObject]) -> list[Referent]:
    """Every way the grammar names one object as a landmark: colour and kind, kind, or colour."""
    named = {r: None for o in objects
             for r in (Referent(o.color, o.kind), Referent(kind=o.kind), Referent(color=o.color))}
    return list(named)


def group_referents(objects: list[SceneObject], image_size: int) -> dict[frozenset[int], list[Referent]]:
    """Every clear group of two or more objects the grammar can name, with the referents naming it:
    colour and/or kind ("all the red shapes"), with a region ("the two circles on the left") or a relation
    to a landmark ("every star left of the blue circle"), each with every quantity word that fits."""
    colors, kinds = sorted({o.color for o in objects}), sorted({o.kind for o in objects})
    landmarks = _landmarks(objects)
    groups: dict[frozenset[int], list[Referent]] = {}
    for color in (None, *colors):
        for kind in (None, *kinds):
            bases = [Referent(color, kind), *(Referent(color, kind, region=r) for r in REGION_PHRASES),
                     *(Referent(color, kind, relation=d, landmark=m) for d in DIRECTIONS for m in landmarks)]
            for base in bases:
                # The quantity does not change what colour, kind and place select; "all" accepts any group.
                group = group_denotation(replace(base, quantity="all"), objects, image_size)
                if group is None:
                    continue
                groups.setdefault(group, []).extend(
                    replace(base, quantity=q) for q, n in QUANTITY_COUNTS.items()
                    if n in (None, len(group)))
    return groups


def no_target_referents(objects: list[SceneObject], image_size: int, split: str) -> list[Referent]:
    """Referents that name nothing in the scene, from words the scene shows: a colour and a kind that both
    occur in it but never together ("the green star" beside a green circle and a red star), or a pair that
    occurs, with a region where none of its objects clearly is. Held-out pairs only in testB, as for objects."""
    colors, kinds = sorted({o.color for o in objects}), sorted({o.kind for o in objects})
    present = {(o.color, o.kind) for o in objects}
    nothing = (frozenset(), frozenset())
    referents = []
    for color in colors:
        for kind in kinds:
            if (color, kind) not in present:
                if split == "testB" or (color, kind) not in HELD_OUT_PAIRS:
                    referents.append(Referent(color, kind))
                continue
            referents += [r for r in (Referent(color, kind, region=region) for region in REGION_PHRASES)
                          if denotation(r, objects, image_size) == nothing]
    return referents


def _candidate_referents(target: int, objects: list[SceneObject], image_size: int) -> Iterator[Referent]:
    """Referents the grammar offers for ``target``; regions and relations only where they hold for it."""
    t = objects[target]
    margin = CLEAR_MARGIN * image_size
    square = (image_size, image_size)
    regions = [r for r in REGION_PHRASES if all(_region_value(t.center, d, square) > margin for d in r)]
    landmarks = {d: [o for o in objects if o is not t and _relation_value(t.center, o.center, d) > margin]
                 for d in DIRECTIONS}
    for color in (t.color, None):
        for kind in (t.kind, None):
            if color or kind:
                yield Referent(color, kind)
            if kind:  # size is relative to objects of the same kind
                yield from (Referent(color, kind, size=size) for size in SIZE_WORDS)
            yield from (Referent(color, kind, region=region) for region in regions)
            for direction, others in landmarks.items():
                yield Referent(color, kind, extreme=direction)
                for o in others:
                    for landmark in (Referent(o.color, o.kind), Referent(kind=o.kind), Referent(color=o.color)):
                        yield Referent(color, kind, relation=direction, landmark=landmark)


def _choose_expressions(referents: list[Referent], rng: np.random.Generator) -> list[tuple[str, str]]:
    """Up to MAX_EXPRESSIONS distinct (text, type) pairs, taking expression types in turn."""
    by_type: dict[str, list[Referent]] = {}
    for referent in referents:
        by_type.setdefault(referent.expression_type, []).append(referent)
    queues = [[group[i] for i in rng.permutation(len(group))] for group in by_type.values()]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    chosen: dict[str, str] = {}
    while len(chosen) < MAX_EXPRESSIONS and any(queues):
        for queue in queues:
            if queue and len(chosen) < MAX_EXPRESSIONS:
                referent = queue.pop()
                chosen.setdefault(expression_text(referent, rng), referent.expression_type)
    return list(chosen.items())


@dataclass(frozen=True)
class _Shape:
    color: str
    kind: str
    size: str
    radius: float
    center: np.ndarray    # (2,) x, y pixels, as placed
    vertices: np.ndarray  # (N, 1, 2) int32 pixel positions, as cv2 drawing wants them


def _free_pair(rng: np.random.Generator, colors: list[str], kinds: list[str], split: str) -> tuple[str, str]:
    while True:
        pair = (str(rng.choice(colors)), str(rng.choice(kinds)))
        if split == "testB" or pair not in HELD_OUT_PAIRS:
            return pair


def _layout(rng: np.random.Generator, image_size: int, split: str) -> list[_Shape]:
    """Shapes in drawing order; colours and kinds come from small pools so that attributes repeat."""
    # Sorted, never in set order: string hashes, hence set order, change from one process to the next.
    colors = sorted(str(c) for c in rng.choice(list(COLORS), size=rng.integers(2, 4), replace=False))
    kinds = sorted(str(k) for k in rng.choice(KINDS, size=rng.integers(2, 4), replace=False))
    num_objects = int(rng.integers(3, 7))
    forced, forced_index = None, -1
    if split == "testB":  # one target from the held-out pairs; other objects may be held-out too
        forced = sorted(HELD_OUT_PAIRS)[rng.integers(len(HELD_OUT_PAIRS))]
        colors, kinds = sorted({forced[0], *colors}), sorted({forced[1], *kinds})
        forced_index = rng.integers(num_objects)
    shapes: list[_Shape] = []
    for index in range(num_objects):
        color, kind = forced if index == forced_index else _free_pair(rng, colors, kinds, split)
        size = str(rng.choice(list(SIZES)))
        radius = float(SIZES[size] * image_size * rng.uniform(0.95, 1.05))
        for _ in range(30):  # partial overlaps are welcome; near-coincident centres are not
            center = rng.uniform(radius + 2, image_size - radius - 2, size=2)
            if all(np.linalg.norm(center - s.center) > 0.6 * (radius + s.radius) for s in shapes):
                break
        else:
            continue
        angle = np.deg2rad(rng.uniform(-1, 1) * ROTATION_JITTER[kind])
        shapes.append(_placed(color, kind, size, radius, center, angle))
    return shapes


def _placed(color: str, kind: str, size: str, radius: float, center: np.ndarray, angle: float) -> _Shape:
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = center + radius * UNIT_OUTLINES[kind] @ rotation.T
    return _Shape(color, kind, size, radius, center, np.round(points).astype(np.int32).reshape(-1, 1, 2))


def _add_occluder(rng: np.random.Generator, shapes: list[_Shape], image_size: int,
                  split: str) -> tuple[list[_Shape], _Shape | None]:
    """One more shape, drawn last, across a random shape so that what stays visible of it is several pieces
    (each at least MIN_PIECE_FRACTION of its area, together at least SPLIT_MIN_VISIBLE): the shapes and the
    one split, or None when OCCLUDER_TRIES placements cut nothing in two. Its colour is another of the
    scene's when there is one, its kind any, its pair not held out (except in testB)."""
    if not shapes:
        return shapes, None
    target_index = int(rng.integers(len(shapes)))
    target = shapes[target_index]
    full = _full_mask(target, image_size)
    covered = np.zeros_like(full)
    for later in shapes[target_index + 1:]:
        covered |= _full_mask(later, image_size)
    colors = sorted({s.color for s in shapes} - {target.color}) or sorted(COLORS)
    for _ in range(OCCLUDER_TRIES):
        color, kind = _free_pair(rng, colors, list(KINDS), split)
        size = str(rng.choice(list(SIZES)))
        radius = float(SIZES[size] * image_size * rng.uniform(0.95, 1.05))
        center = target.center + rng.uniform(-0.4, 0.4, size=2) * target.radius
        angle = np.deg2rad(rng.uniform(-1, 1) * ROTATION_JITTER[kind])
        if not (radius + 2 <= center).all() or not (center <= image_size - radius - 2).all():
            continue
        occluder = _placed(color, kind, size, radius, center, angle)
        visible = full & (1 - (covered | _full_mask(occluder, image_size)))
        count, _, stats, _ = cv2.connectedComponentsWithStats(visible, connectivity=8)
        areas = stats[1:count, cv2.CC_STAT_AREA]
        if (len(areas) >= 2 and areas.min() >= MIN_PIECE_FRACTION * full.sum()
                and areas.sum() >= SPLIT_MIN_VISIBLE * full.sum()):
            return [*shapes, occluder], target
    return shapes, None


def _outline_thickness(image_size: int) -> int:
    return max(1, round(image_size / 128))


def _full_mask(shape: _Shape, image_size: int) -> np.ndarray:
    """Every pixel the shape paints, outline included (the same calls as `_render`)."""
    mask = np.zeros((image_size, image_size), np.uint8)
    cv2.fillPoly(mask, [shape.vertices], 1)
    cv2.polylines(mask, [shape.vertices], True, 1, _outline_thickness(image_size))
    return mask


def mask_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """COCO polygons that rasterise back to exactly ``mask`` (H, W); None if the mask has a hole.

    Contours of the 2x nearest-upsampled mask run a quarter pixel inside the pixel edges, so each
    polygon encloses the centres of its boundary pixels, even on one-pixel-wide parts. Polygons
    cannot carry holes (pycocotools merges them as a union), hence the None.
    """
    upsampled = cv2.resize(mask, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(upsampled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0, :, 3] >= 0).any():
        return None
    return [((c.reshape(-1, 2) + 0.5) / 2).ravel().tolist() for c in contours]


def _visible_objects(shapes: list[_Shape], image_size: int,
                     split_shape: _Shape | None = None) -> tuple[list[_Shape], list[SceneObject]]:
    """Drop shapes left mostly hidden (or with holes) until every remaining one is clearly visible;
    ``split_shape``, cut into pieces on purpose, needs SPLIT_MIN_VISIBLE of its area only."""
    full = [_full_mask(s, image_size) for s in shapes]
    keep = list(range(len(shapes)))
    while True:
        covered = np.zeros((image_size, image_size), np.uint8)
        objects: dict[int, SceneObject] = {}
        for k in reversed(keep):
            visible = full[k] & (1 - covered)
            covered |= full[k]
            area = int(visible.sum())
            least = SPLIT_MIN_VISIBLE if shapes[k] is split_shape else MIN_VISIBLE_FRACTION
            polygons = mask_polygons(visible) if area >= least * full[k].sum() else None
            if polygons is not None:
                x, y, w, h = cv2.boundingRect(visible)
                s = shapes[k]
                objects[k] = SceneObject(s.color, s.kind, s.size, round(s.radius, 2),
                                         (x + w / 2, y + h / 2), (x, y, w, h), polygons, area)
        if len(objects) == len(keep):
            return [shapes[k] for k in keep], [objects[k] for k in keep]
        keep = [k for k in keep if k in objects]


def _render(rng: np.random.Generator, shapes: list[_Shape], image_size: int) -> np.ndarray:
    """RGB uint8 image (H, W, 3): muted textured background, shapes in order, grain over all."""
    base = rng.uniform(*BACKGROUND_BASE) + rng.uniform(-20, 20, size=3)
    cells = int(rng.integers(3, 9))
    blotches = rng.normal(0, 22, (cells, cells, 1)) + rng.normal(0, 6, (cells, cells, 3))
    background = base.astype(np.float32) + cv2.resize(
        blotches.astype(np.float32), (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24) * image_size / 256
        grid = np.arange(image_size, dtype=np.float32)
        phase = np.float32(np.cos(angle)) * grid[None, :] + np.float32(np.sin(angle)) * grid[:, None]
        background += (12 * np.sin(phase * np.float32(2 * np.pi / period)))[:, :, None]
    image = np.clip(background, 0, 255).astype(np.uint8)
    for s in shapes:
        color = np.clip(np.array(COLORS[s.color]) + rng.integers(-12, 13, size=3), 0, 255)
        cv2.fillPoly(image, [s.vertices], color.tolist())
        cv2.polylines(image, [s.vertices], True, (color * 0.5).tolist(), _outline_thickness(image_size))
    grain = rng.integers(-8, 9, size=image.shape, dtype=np.int16)  # uniform: much cheaper than normal
    return np.clip(image + grain, 0, 255).astype(np.uint8)


def _annotation(image_id: int, image_size: int, target: int, objects: list[SceneObject],
                rng: np.random.Generator) -> dict | None:
    unique = (frozenset({target}), frozenset({target}))
    referents = [r for r in _candidate_referents(target, objects, image_size)
                 if denotation(r, objects, image_size) == unique]
    expressions = _choose_expressions(referents, rng)
    if not expressions:
        return None
    o = objects[target]
    return {
        "image_id": image_id, "height": image_size, "width": image_size,
        "bbox": list(o.bbox), "expressions": [text for text, _ in expressions],
        "mask": o.polygons,
        "category": o.kind, "color": o.color, "size": o.size,
        "expression_types": [kind for _, kind in expressions],
        "object_index": target,  # into "scene", the whole scene, for analysis and independent checks
        "scene": _scene_entries(objects),
    }


def _scene_entries(objects: list[SceneObject]) -> list[dict]:
    return [{"color": s.color, "kind": s.kind, "size": s.size, "radius": s.radius, "center": list(s.center),
             "bbox": list(s.bbox), "area": s.area} for s in objects]


def _record(image_id: int, image_size: int, indices: list[int], expressions: list[tuple[str, str]],
            objects: list[SceneObject], split_object: int | None) -> dict:
    """A generalised record: the gRefCOCO reader's fields (``bboxes``, ``masks``, ``no_target``) for the
    objects at ``indices`` (in scene order; none: no target), and the scene for analysis."""
    return {
        "image_id": image_id, "height": image_size, "width": image_size,
        "expressions": [text for text, _ in expressions], "no_target": not indices,
        "bboxes": [list(objects[i].bbox) for i in indices], "masks": [objects[i].polygons for i in indices],
        "expression_types": [kind for _, kind in expressions],
        "object_indices": list(indices),  # into "scene"
        "split_object": split_object,  # the scene object cut into pieces on purpose, or None
        "scene": _scene_entries(objects),
    }


def _generalised_records(image_id: int, image_size: int, split: str, objects: list[SceneObject],
                         singles: list[dict], shares: GeneralisedConfig, split_object: int | None,
                         rng: np.random.Generator) -> list[dict] | None:
    """One record per classic annotation slot, each drawn to name several objects (``multi_target``), none
    (``no_target``) or, else, its one object; None when the scene has too few groups or absent descriptions
    for the draws (the scene is then redrawn). A group or description is used once per image."""
    groups = group_referents(objects, image_size)
    unused = [g for g in groups if split != "testB" or any(
        (objects[i].color, objects[i].kind) in HELD_OUT_PAIRS for i in g)]
    unused = [unused[i] for i in rng.permutation(len(unused))]
    empty = no_target_referents(objects, image_size, split)
    empty = [empty[i] for i in rng.permutation(len(empty))]
    records = []
    for single in singles:
        draw = rng.random()
        if draw < shares.multi_target:
            if not unused:
                return None
            group = unused.pop()
            records.append(_record(image_id, image_size, sorted(group), _choose_expressions(groups[group], rng),
                                   objects, split_object))
        elif draw < shares.multi_target + shares.no_target:
            if not empty:
                return None
            chosen, empty = empty[:MAX_EXPRESSIONS], empty[MAX_EXPRESSIONS:]
            records.append(_record(image_id, image_size, [], _choose_expressions(chosen, rng), objects,
                                   split_object))
        else:
            records.append(_record(image_id, image_size, [single["object_index"]],
                                   list(zip(single["expressions"], single["expression_types"])), objects,
                                   split_object))
    return records


def _generalised_image(seed: int, index: int, image_size: int, split: str,
                       shares: GeneralisedConfig) -> tuple[np.ndarray, list[dict]]:
    """`make_image` for a generalised set: whether the image has a split object is drawn first (a scene
    that cannot cut one is redrawn), then each classic annotation's slot (`_generalised_records`)."""
    rng = np.random.default_rng([seed, index])
    split_wanted = rng.random() < shares.split_objects
    for _ in range(MAX_SCENE_ATTEMPTS):
        shapes, split_shape = _layout(rng, image_size, split), None
        if split_wanted:
            shapes, split_shape = _add_occluder(rng, shapes, image_size, split)
            if split_shape is None:
                continue
        shapes, objects = _visible_objects(shapes, image_size, split_shape)
        split_object = next((i for i, s in enumerate(shapes) if s is split_shape), None)
        if split_wanted and (split_object is None or len(objects[split_object].polygons) < 2):
            continue
        targets = [i for i, o in enumerate(objects)
                   if split != "testB" or (o.color, o.kind) in HELD_OUT_PAIRS]
        singles = [a for i in targets if (a := _annotation(index, image_size, i, objects, rng))]
        records = singles and _generalised_records(index, image_size, split, objects, singles, shares,
                                                   split_object, rng)
        if records:
            return _render(rng, shapes, image_size), records
    raise RuntimeError(f"no generalised scene after {MAX_SCENE_ATTEMPTS} attempts (seed={seed}, index={index}, "
                       f"image_size={image_size}, split={split}); lower the generalised shares")


def make_image(seed: int, index: int, image_size: int, split: str,
               generalised: GeneralisedConfig | None = None) -> tuple[np.ndarray, list[dict]]:
    """One scene: RGB uint8 image (H, W, 3) and its annotations (instances.json format, image_id = index).

    Depends only on (seed, index, image_size, split, generalised). A scene whose objects all lack a unique
    expression (or, in testB, that keeps no held-out target) is redrawn. With ``generalised`` shares
    (`_generalised_image`) the annotations are generalised records; without, the classic ones.
    """
    if generalised is not None and generalised.on:
        return _generalised_image(seed, index, image_size, split, generalised)
    rng = np.random.default_rng([seed, index])
    for _ in range(MAX_SCENE_ATTEMPTS):
        shapes, objects = _visible_objects(_layout(rng, image_size, split), image_size)
        targets = [i for i, o in enumerate(objects)
                   if split != "testB" or (o.color, o.kind) in HELD_OUT_PAIRS]
        annotations = [a for i in targets if (a := _annotation(index, image_size, i, objects, rng))]
        if annotations:
            return _render(rng, shapes, image_size), annotations
    raise RuntimeError(f"no scene with a uniquely described object after {MAX_SCENE_ATTEMPTS} "
                       f"attempts (seed={seed}, index={index}, image_size={image_size}, split={split})")


def split_sizes(num_images: int) -> dict[str, int]:
    """Images per split: 10 % (at least one) each for val, testA and testB, the rest train."""
    held = max(1, round(0.1 * num_images))
    return {"train": num_images - 3 * held, "val": held, "testA": held, "testB": held}


def _write_image(task: tuple[int, int, int, str, str, GeneralisedConfig | None]) -> list[dict]:
    seed, index, image_size, split, data_root, generalised = task
    image, annotations = make_image(seed, index, image_size, split, generalised)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"cv2 could not encode image {index} as JPEG")
    SYNTHETIC.path(data_root, index).write_bytes(encoded.tobytes())  # where the readers look (datasets.py)
    return annotations


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses the cores


def generate_dataset(out_dir: str | Path, num_images: int = 6000, seed: int = 0, image_size: int = 256,
                     workers: int | None = None, progress: bool = True,
                     generalised: GeneralisedConfig | None = None) -> dict:
    """Write the synthetic dataset under ``out_dir`` (a data_root); return its summary.

    Byte-identical output for a given (num_images, seed, image_size, generalised), whatever ``workers``;
    ``generalised`` shares (data.synthetic.generalised) make a generalised set, None or all-zero shares the
    classic one. Summary: {"annotation_file", "image_dir", "seconds", "splits": {split: {"images",
    "objects", "expressions"}}}; "objects" counts records (annotated objects, or groups and no-targets).
    """
    if num_images < 4:
        raise ValueError(f"num_images must be at least 4 (one image for each of {', '.join(SPLITS)}); "
                         f"got {num_images}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels (smaller shapes are unreadable); got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed}")
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    start = time.perf_counter()
    json_path = annotation_path(out_dir, "synthetic")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    SYNTHETIC.directory(out_dir).mkdir(parents=True, exist_ok=True)
    # A run that dies half-way must not leave an old instances.json describing overwritten images.
    json_path.unlink(missing_ok=True)

    splits = [name for name, count in split_sizes(num_images).items() for _ in range(count)]
    tasks = [(seed, index, image_size, split, str(out_dir), generalised) for index, split in enumerate(splits)]
    bar = tqdm(total=num_images, desc="synthetic images", unit="img", disable=not progress)
    dataset: dict[str, list[dict]] = {name: [] for name in SPLITS}

    def collect(results: Iterator[list[dict]]) -> None:
        for split, annotations in zip(splits, results):  # in index order, whatever the worker count
            dataset[split] += annotations
            bar.update()

    if workers == 1:
        collect(map(_write_image, tasks))
    else:
        chunksize = max(1, min(32, num_images // (8 * workers)))
        # Spawned, not forked: a forked child that touches OpenCV's thread pool after the parent used it
        # deadlocks (seen when the generator ran inside a test session or a notebook kernel).
        with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            collect(pool.imap(_write_image, tasks, chunksize=chunksize))
    bar.close()

    write_json_atomic(json_path, dataset, indent=None)
    counts = {name: {"images": splits.count(name), "objects": len(annotations),
                     "expressions": sum(len(a["expressions"]) for a in annotations)}
              for name, annotations in dataset.items()}
    return {"annotation_file": str(json_path), "image_dir": str(SYNTHETIC.directory(out_dir)),
            "seconds": round(time.perf_counter() - start, 2), "splits": counts}


def _target_words(expression: str) -> list[str]:
    """The words before a relation ("... left of the blue square"): those that describe the target(s)."""
    padded = f" {expression} "
    cut = min((padded.find(f" {p} ") for words in RELATION_WORDS.values() for p in words if f" {p} " in padded),
              default=len(padded))
    return padded[:cut].split()


def named_attributes(expression: str, color: str, kind: str) -> np.ndarray:
    """Which colour and kind ``expression`` names for its target, whose own are ``color`` and ``kind``.

    Only the words before a relation ("... left of the blue square") describe the target. Returns int64
    (2,): the index of ``color`` in ``SCENE_ATTRIBUTES["color"]`` when that word is among them, else the
    number of colours ("names none"); then the same for the kind. For model.attribute_prior.
    """
    words = _target_words(expression)
    colors, kinds = SCENE_ATTRIBUTES["color"], SCENE_ATTRIBUTES["kind"]
    return np.array([colors.index(color) if color in words else len(colors),
                     kinds.index(kind) if kind in words else len(kinds)], np.int64)


def named_attributes_in_words(expression: str) -> np.ndarray:
    """`named_attributes` read from the words alone, for generalised records (several targets or none): the
    first colour and the first kind (singular or plural) before a relation, each "names none" when absent."""
    words = _target_words(expression)
    colors, kinds = SCENE_ATTRIBUTES["color"], SCENE_ATTRIBUTES["kind"]
    color = next((colors.index(w) for w in words if w in colors), len(colors))
    kind = next((kinds.index(w.removesuffix("s")) for w in words if w.removesuffix("s") in kinds), len(kinds))
    return np.array([color, kind], np.int64)


def scene_targets(scene: list[dict], scale_factor: tuple[float, float], crop: tuple[int, int],
                  img_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every visible object of an annotation's ``scene``, for model.scene_loss: where it is and what it is.

    The centre of each object's (visible) box is mapped into the transformed image (``p * scale_factor -
    crop``, `seqtr_lib.data.transforms.Geometry`); objects whose centre falls outside ``img_shape`` (an LSJ
    crop) are dropped. Returns centres float32 (K, 2) x, y in pixels of the transformed image and labels
    int64 (K, 3): the indices of colour, kind and size in ``SCENE_ATTRIBUTES``. Raises KeyError or
    ValueError naming the object and field when the scene holds something else.
    """
    centres, labels = [], []
    for number, thing in enumerate(scene):
        x, y, width, height = thing["bbox"]
        centre = ((x + width / 2) * scale_factor[0] - crop[0], (y + height / 2) * scale_factor[1] - crop[1])
        if not (0 <= centre[0] < img_shape[1] and 0 <= centre[1] < img_shape[0]):
            continue
        row = []
        for field, classes in SCENE_ATTRIBUTES.items():
            if thing[field] not in classes:
                raise ValueError(f"scene object {number} has {field} {thing[field]!r}; the scene loss knows "
                                 f"{', '.join(classes)}")
            row.append(classes.index(thing[field]))
        centres.append(centre)
        labels.append(row)
    return np.array(centres, np.float32).reshape(-1, 2), np.array(labels, np.int64).reshape(-1, 3)


def shifted_scene(scene: list[dict], offset: tuple[int, int]) -> list[dict]:
    """An annotation's ``scene`` with every object's box and centre moved by ``offset`` (x, y) pixels: the
    scene of its image placed on a zoom-out canvas (`seqtr_lib.data.transforms.place_on_canvas`)."""
    dx, dy = offset
    return [{**thing, "bbox": [thing["bbox"][0] + dx, thing["bbox"][1] + dy, *thing["bbox"][2:]],
             "center": [thing["center"][0] + dx, thing["center"][1] + dy]} for thing in scene]


def region_referent(expression: str) -> Referent | None:
    """The referent of a region expression of the grammar, "the [colour] kind|shape <region phrase>"; None
    for any other text (an expression with a region phrase outside that pattern included)."""
    for region, phrase in sorted(REGION_PHRASES.items(), key=lambda item: -len(item[1])):
        if expression.endswith(f" {phrase}"):
            words = expression[:-len(phrase) - 1].split()
            if not 2 <= len(words) <= 3 or words[0] != "the" or words[-1] not in (*KINDS, "shape"):
                return None
            if len(words) == 3 and words[1] not in COLORS:
                return None
            color = words[1] if len(words) == 3 else None
            return Referent(color, None if words[-1] == "shape" else words[-1], region=region)
    return None


def zoom_keeps_denotation(expression: str, annotation: dict, canvas_shape: tuple[int, int],
                          offset: tuple[int, int]) -> bool:
    """Whether ``expression`` still denotes exactly the annotation's target once its scene is placed at
    ``offset`` (x, y) on a ``canvas_shape`` (height, width) canvas.

    A shift (and the later uniform resize) keeps every difference between objects, so colour, kind, size,
    extremes ("the leftmost") and relations ("left of the ...") denote what they did. Only region words
    ("on the left": the outer third of the image) read the frame; a region expression is read again in the
    canvas's thirds, with the same objects and margin, and must still single out the target surely. A region
    phrase outside the grammar cannot be read again, so it counts as changed.
    """
    if not any(f" {phrase}" in f" {expression}" for phrase in REGION_PHRASES.values()):
        return True
    referent = region_referent(expression)
    if referent is None:
        return False
    objects = [SceneObject(o["color"], o["kind"], o["size"], o["radius"], tuple(o["center"]), tuple(o["bbox"]),
                           [], o["area"]) for o in shifted_scene(annotation["scene"], offset)]
    target = frozenset({annotation["object_index"]})
    image_size = max(annotation["height"], annotation["width"])
    frame = (canvas_shape[1], canvas_shape[0])
    return denotation(referent, objects, image_size, frame) == (target, target)
