"""The token format of SeqTR, in one place: sequence layout, targets and their weights, pixels <-> tokens.

Vocabulary: ids ``0 .. num_bin - 1`` are quantized coordinates, ``num_bin`` is EOS, so the decoder
predicts ``num_bin + 1`` classes. A sequence is made of parts: a ``box`` part is x1, y1, x2, y2 and a
``mask`` part N = num_ray contour points, x and y interleaved. Each part starts with its own first
input (a zero vector, or a row of the learned task embedding in multi-task sequences) and its targets
end with EOS:

    task   parts       decoder inputs                                      targets                          length
    box    box         [start, x1, y1, x2, y2]                             [x1, y1, x2, y2, EOS]            5
    mask   mask        [start, px1, py1, ..., pxN, pyN]                    [px1, ..., pyN, EOS]             2N + 1
    multi  box, mask   [start_box, x1, .., y2, start_mask, px1, .., pyN]   [x1, .., y2, EOS, px1, .., EOS]  2N + 6

Every input after a start is the embedding of the previous target. A box is always four tokens (EOS is
excluded when generating it); a mask stops at its first EOS, and a missing contour point is two EOS
targets. What each target weighs in the loss is the criterion's (`seqtr_lib.loss.LossWeights`).

Quantization (`seqtr_lib.sequence.quantize`) divides x and y by an extent: the sample's padded size
(``relative`` mapping, the paper's) or the network input size in both directions (``absolute``).
`TokenLayout` is what the model needs (no pixels); `SequenceCodec` adds the mapping for the data
pipeline, evaluation and the Grounder.

Generalised answers (issue 36, beyond the paper). An expression may name zero, one or several objects, and
an object may be several contours. A layout with ``max_objects > 0`` (the data's caps) is one answer of
``num_bin + 2`` classes; the paper's layouts keep ``num_bin + 1``. The special ids are `TokenLayout.eos`
(``num_bin``) and `TokenLayout.separator` (``num_bin + 1``), nowhere else. The decoder inputs are the
start, then the answer shifted right; the targets are the answer, its EOS included:

    box answer     x1 y1 x2 y2  x1 y1 x2 y2 ... EOS        4K + 1 tokens for K boxes; no box: [EOS]
    contour answer x y x y ... SEP x y x y ... EOS        contours of 3 or more points, SEP between them

Order: boxes by their top-left corner, row-major on tokens (y1, then x1, then y2, x2); contours by their
first vertex, row-major (y, then x), equal first vertices keeping their given order; a contour's points
keep their given order. Caps: at most ``max_objects`` boxes or contours and ``max_points`` points per
contour, so an answer is at most 4 * max_objects + 1 or max_objects * (2 * max_points + 1) tokens.
Encoding refuses what the caps or the format cannot hold; decoding takes what a model emits: it reads up
to the first EOS (or the end), drops a box cut short or holding a separator, a contour of fewer than 3
points and an odd trailing token, keeps the first ``max_points`` points of a contour and the first
``max_objects`` objects, in emission order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seqtr_lib.config import TASK_PARTS
from seqtr_lib.sequence import dequantize, offset_polygon, polygon_to_rle, quantize

if TYPE_CHECKING:
    from seqtr_lib.config import Experiment

_BOX_TOKENS = 4


@dataclass(frozen=True)
class TokenLayout:
    """Which parts a task's sequence holds, their lengths and targets."""

    task: str
    num_bin: int
    num_ray: int
    # The caps of a generalised answer (data.max_objects, data.max_points; module doc): 0 objects is the paper's
    # one-object sequence.
    max_objects: int = 0
    max_points: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASK_PARTS:
            raise ValueError(f"task {self.task!r} is unknown; use one of {', '.join(TASK_PARTS)}")
        if self.max_objects and self.task not in ("box", "mask"):
            raise ValueError(f"a generalised answer (max_objects > 0) is boxes or contours: task 'box' or 'mask', "
                             f"not {self.task!r}")
        if self.max_objects and self.task == "mask" and self.max_points < 3:
            raise ValueError("a generalised contour answer needs max_points >= 3 (data.max_points)")

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> TokenLayout:
        """The layout of a params file's model: the model's format with the data's caps."""
        model, data = experiment.model, experiment.data
        return cls(model.task, model.num_bin, model.num_ray, data.max_objects, data.max_points)

    @property
    def generalised(self) -> bool:
        """Whether the sequence is a generalised answer of zero or more objects (module doc)."""
        return self.max_objects > 0

    @property
    def parts(self) -> tuple[str, ...]:
        return TASK_PARTS[self.task]

    @property
    def eos(self) -> int:
        return self.num_bin

    @property
    def separator(self) -> int:
        """The token between two contours of a generalised answer (module doc): the id after EOS. The paper's
        sequences never hold it, and `vocab_size` does not count it."""
        return self.num_bin + 1

    @property
    def vocab_size(self) -> int:
        """Decoder output classes: the coordinate bins plus EOS, and the separator in a generalised answer."""
        return self.num_bin + (2 if self.generalised else 1)

    @property
    def answer_length(self) -> int:
        """The longest generalised answer, its EOS included: 4 * max_objects + 1 tokens (boxes) or
        max_objects * (2 * max_points + 1) (contours: the separators between them and the EOS)."""
        if not self.generalised:
            raise ValueError("answer_length is a generalised answer's (max_objects > 0)")
        if self.task == "box":
            return _BOX_TOKENS * self.max_objects + 1
        return self.max_objects * (2 * self.max_points + 1)

    def length(self, part: str) -> int:
        """Coordinate tokens of a part: 4 for a box, 2 * num_ray for a mask."""
        return {"box": _BOX_TOKENS, "mask": 2 * self.num_ray}[_known(part)]

    def stops_at_eos(self, part: str) -> bool:
        """Whether generation may emit EOS (and stop) in this part; a box always has four coordinates."""
        return _known(part) == "mask"

    @property
    def decoder_length(self) -> int:
        """Decoder positions of the whole sequence: 5, 2N + 1 or 2N + 6; a generalised answer's cap."""
        if self.generalised:
            return self.answer_length
        return sum(self.length(part) + 1 for part in self.parts)

    def parts_to_generate(self, task: str | None = None) -> tuple[str, ...]:
        """The parts decoded for a request: a multi-task model decodes its box alone, or box then mask."""
        task = task or self.task
        allowed = (*TASK_PARTS, ) if self.task == "multi" else (self.task,)
        if task not in allowed:
            raise ValueError(f"this model was built for task {self.task!r}; it can generate {', '.join(allowed)}, "
                             f"not {task!r}")
        if self.task == "multi" and task == "box":
            return ("box",)
        return self.parts

    def split(self, per_position: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, decoder_length, ...) -> ``{part: (B, length(part) + 1, ...)}``, in sequence order."""
        chunks = per_position.split([self.length(part) + 1 for part in self.parts], dim=1)
        return dict(zip(self.parts, chunks))

    def targets(self, tokens: torch.Tensor) -> torch.Tensor:
        """A part's tokens (B, length) -> its targets (B, length + 1), ending with EOS."""
        return torch.cat([tokens, torch.full_like(tokens[:, :1], self.eos)], dim=1)

    def num_emitted(self, tokens: Any) -> int:
        """Coordinate tokens (T,) before the first EOS."""
        eos_at = np.flatnonzero(_numpy(tokens).reshape(-1) == self.eos)
        return int(eos_at[0]) if len(eos_at) else _numpy(tokens).size

    def valid_points(self, tokens: Any) -> np.ndarray:
        """Mask tokens -> (K, 2) int64 x, y tokens before the first EOS (an odd trailing token dropped)."""
        tokens = _numpy(tokens).astype(np.int64).reshape(-1)[: self.num_emitted(tokens)]
        return tokens[: len(tokens) // 2 * 2].reshape(-1, 2)


def noisy_coordinates(tokens: torch.Tensor, share: float, num_bin: int) -> torch.Tensor:
    """Teacher-forcing inputs with ``share`` of the coordinate tokens (never EOS, id ``num_bin``) replaced by
    uniformly random coordinates: the ``input_token_noise`` departure (docs/method.md), applied by the
    training step to the inputs only, so that a contour cannot be continued from its previous points alone."""
    replace = (torch.rand(tokens.shape, device=tokens.device) < share) & (tokens < num_bin)
    return torch.where(replace, torch.randint_like(tokens, num_bin), tokens)


@dataclass(frozen=True)
class SequenceCodec:
    """Pixels <-> tokens for one experiment: the layout plus the coordinate mapping.

    ``relative`` divides coordinates by each sample's padded size (pad_h, pad_w); ``absolute`` by
    ``image_size`` in both directions, the same for encoding and decoding.
    """

    layout: TokenLayout
    mapping: str = "relative"
    image_size: int = 640
    # Decoding (docs/method.md, 9.1 (j)): a token to its bin's centre instead of its lower edge (the reference),
    # and a contour moved this many input pixels outward (`offset_polygon`). With one bin per input pixel, both
    # together put a contour through the boundary pixels' centres onto their outer edges.
    bin_centres: bool = False
    outline_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.mapping not in ("relative", "absolute"):
            raise ValueError(f"coordinate mapping {self.mapping!r} is unknown; use 'relative' or 'absolute'")

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> SequenceCodec:
        model = experiment.model
        return cls(TokenLayout.from_experiment(experiment), model.mapping, experiment.data.image_size,
                   model.decode_bin_centres, model.outline_offset)

    def extent(self, pad_shape: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) that pixel coordinates of a sample with this pad_shape are divided by."""
        return tuple(pad_shape) if self.mapping == "relative" else (self.image_size, self.image_size)

    def encode_box(self, box_xyxy: Any, pad_shape: tuple[int, int]) -> np.ndarray:
        """Box x1, y1, x2, y2 in pixels of the padded input -> int64 (4,) tokens."""
        box = np.asarray(box_xyxy, dtype=np.float64)
        if box.shape != (4,):
            raise ValueError(f"a box is 4 values x1, y1, x2, y2, got shape {box.shape}")
        height, width = self.extent(pad_shape)
        return quantize(box, width, height, self.layout.num_bin)

    def encode_vertices(self, vertices: np.ndarray, pad_shape: tuple[int, int]) -> np.ndarray:
        """Contour vertices (2, N) (x row, y row; -1 = missing) -> int64 (2N,) tokens, EOS pairs for missing."""
        vertices = np.asarray(vertices)
        if vertices.ndim != 2 or vertices.shape[0] != 2:
            raise ValueError(f"vertices must be (2, N) (x row, y row), got {vertices.shape}")
        points = vertices.T  # (N, 2)
        height, width = self.extent(pad_shape)
        tokens = quantize(points, width, height, self.layout.num_bin)
        tokens[(points < 0).any(axis=1)] = self.layout.eos
        return tokens.reshape(-1)

    def box_pixels(self, tokens: Any, pad_shape: tuple[int, int]) -> np.ndarray:
        """Four box tokens -> float32 (4,) x1, y1, x2, y2 in pixels of the padded input (bin lower edges or centres)."""
        values = _numpy(tokens)
        if values.shape != (_BOX_TOKENS,):
            raise ValueError(f"a box is 4 tokens x1, y1, x2, y2, got shape {values.shape}")
        height, width = self.extent(pad_shape)
        return dequantize(values, width, height, self.layout.num_bin, self.bin_centres)

    def polygon_pixels(self, tokens: Any, pad_shape: tuple[int, int]) -> np.ndarray:
        """Mask tokens -> float32 (K, 2) points in pixels of the padded input, cut at the first EOS, moved
        ``outline_offset`` outward."""
        height, width = self.extent(pad_shape)
        points = dequantize(self.layout.valid_points(tokens).astype(np.float64), width, height,
                            self.layout.num_bin, self.bin_centres)
        if self.outline_offset:
            points = offset_polygon(points, self.outline_offset)
        return points.astype(np.float32)

    def box_in_original(self, tokens: Any, meta: dict[str, Any]) -> np.ndarray:
        """Box tokens -> float32 (4,) x1, y1, x2, y2 in the original image's pixels, clipped to it."""
        sx, sy = meta["scale_factor"]
        box = self.box_pixels(tokens, meta["pad_shape"]) / np.array([sx, sy, sx, sy], dtype=np.float32)
        ori_h, ori_w = meta["ori_shape"]
        return np.clip(box, 0, [ori_w, ori_h, ori_w, ori_h]).astype(np.float32)

    def polygon_in_original(self, tokens: Any, meta: dict[str, Any]) -> np.ndarray:
        """Mask tokens -> float32 (K, 2) polygon vertices in the original image's pixels, in emission order."""
        sx, sy = meta["scale_factor"]
        return (self.polygon_pixels(tokens, meta["pad_shape"]) / np.array([sx, sy], dtype=np.float32)).astype(np.float32)

    def decode(self, generated: dict[str, np.ndarray], index: int, meta: dict[str, Any]) -> dict[str, Any]:
        """Sample ``index`` of `SeqTR.generate`'s numpy output -> ``pred_box`` (list of 4) and/or
        ``pred_polygon`` (flat list) and ``pred_rle`` (at the original size), as evaluation records hold them."""
        decoded: dict[str, Any] = {}
        if "box_tokens" in generated:
            decoded["pred_box"] = self.box_in_original(generated["box_tokens"][index], meta).tolist()
        if "mask_tokens" in generated:
            polygon = self.polygon_in_original(generated["mask_tokens"][index], meta)
            decoded["pred_polygon"] = polygon.reshape(-1).tolist()
            decoded["pred_rle"] = polygon_rle(polygon, meta["ori_shape"])
        return decoded

    def decode_answer(self, generated: dict[str, np.ndarray], index: int, meta: dict[str, Any]) -> dict[str, Any]:
        """Sample ``index`` of a generalised model's numpy output (``answer_tokens``) -> its objects in the
        original image's pixels, in emission order, as evaluation records hold them: ``pred_boxes`` (K lists
        of 4, clipped to the image) or ``pred_polygons`` (K flat lists) and ``pred_rle``, their union (empty
        for no object)."""
        layout, tokens = self.layout, generated["answer_tokens"][index]
        sx, sy = meta["scale_factor"]
        ori_h, ori_w = meta["ori_shape"]
        if layout.task == "box":
            boxes = self.decode_boxes(tokens, meta["pad_shape"], layout.max_objects) / np.array([sx, sy, sx, sy])
            return {"pred_boxes": np.clip(boxes, 0, [ori_w, ori_h, ori_w, ori_h]).astype(np.float32).tolist()}
        polygons = [(contour / np.array([sx, sy])).astype(np.float32).reshape(-1).tolist()
                    for contour in self.decode_contours(tokens, meta["pad_shape"], layout.max_objects,
                                                        layout.max_points)]
        return {"pred_polygons": polygons, "pred_rle": polygon_to_rle(polygons, ori_h, ori_w)}

    def encode_boxes(self, boxes_xyxy: Any, pad_shape: tuple[int, int], max_objects: int) -> np.ndarray:
        """A generalised box answer: boxes (K, 4) x1, y1, x2, y2 in pixels of the padded input -> int64
        (4K + 1,) tokens, boxes in row-major order of their top-left corners, then EOS (module doc)."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (K, 4) x1, y1, x2, y2, got shape {boxes.shape}")
        height, width = self.extent(pad_shape)
        return box_answer(quantize(boxes, width, height, self.layout.num_bin), self.layout, max_objects)

    def decode_boxes(self, tokens: Any, pad_shape: tuple[int, int], max_objects: int) -> np.ndarray:
        """A generalised box answer's tokens -> float32 (K, 4) boxes in pixels of the padded input, in emission
        order (K = 0 for an answer of no object)."""
        boxes = read_box_answer(tokens, self.layout, max_objects)
        height, width = self.extent(pad_shape)
        return dequantize(boxes.astype(np.float64), width, height, self.layout.num_bin, self.bin_centres
                          ).astype(np.float32).reshape(-1, 4)

    def encode_contours(self, contours: Any, pad_shape: tuple[int, int], max_objects: int,
                        max_points: int) -> np.ndarray:
        """A generalised contour answer: contours, each (K_i, 2) x, y points in pixels of the padded input
        (3 <= K_i <= max_points, none missing) -> int64 tokens, contours ordered by their first vertex and
        separated by the separator token, then EOS (module doc)."""
        height, width = self.extent(pad_shape)
        quantized = []
        for index, contour in enumerate(contours):
            points = np.asarray(contour, dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 2:
                raise ValueError(f"contour {index} must be (K, 2) x, y points, got shape {points.shape}")
            if (points < 0).any():
                raise ValueError(f"contour {index} has a negative coordinate; drop missing points (-1) first")
            quantized.append(quantize(points, width, height, self.layout.num_bin))
        return contour_answer(quantized, self.layout, max_objects, max_points)

    def decode_contours(self, tokens: Any, pad_shape: tuple[int, int], max_objects: int,
                        max_points: int) -> list[np.ndarray]:
        """A generalised contour answer's tokens -> float32 (K_i, 2) contours in pixels of the padded input, in
        emission order (none for an answer of no object), each moved ``outline_offset`` outward."""
        height, width = self.extent(pad_shape)
        contours = []
        for points in read_contour_answer(tokens, self.layout, max_objects, max_points):
            pixels = dequantize(points.astype(np.float64), width, height, self.layout.num_bin, self.bin_centres)
            if self.outline_offset:
                pixels = offset_polygon(pixels, self.outline_offset)
            contours.append(pixels.astype(np.float32))
        return contours


def box_answer(boxes: Any, layout: TokenLayout, max_objects: int) -> np.ndarray:
    """Box tokens (K, 4) -> the generalised box answer (4K + 1,): boxes row-major by (y1, x1, y2, x2), then EOS."""
    boxes = _coordinate_tokens(boxes, layout).reshape(-1, _BOX_TOKENS)
    if len(boxes) > max_objects:
        raise ValueError(f"the answer has {len(boxes)} boxes but the cap is {max_objects}; raise the cap on "
                         "objects or leave the expression out")
    order = np.lexsort((boxes[:, 2], boxes[:, 3], boxes[:, 0], boxes[:, 1]))  # the last key sorts first
    return np.append(boxes[order].reshape(-1), layout.eos)


def read_box_answer(tokens: Any, layout: TokenLayout, max_objects: int) -> np.ndarray:
    """A generalised box answer as a model emits it -> int64 (K, 4) box tokens, K <= max_objects, in emission
    order: read to the first EOS; a box cut short or holding a separator is dropped."""
    emitted = _answer_tokens(tokens, layout)
    groups = emitted[: len(emitted) // _BOX_TOKENS * _BOX_TOKENS].reshape(-1, _BOX_TOKENS)
    return groups[(groups < layout.num_bin).all(axis=1)][:max_objects]


def contour_answer(contours: Any, layout: TokenLayout, max_objects: int, max_points: int) -> np.ndarray:
    """Contour tokens, each (K_i, 2) x, y -> the generalised contour answer: contours ordered by their first
    vertex (y, then x; ties keep the given order), separator between them, then EOS."""
    contours = [_coordinate_tokens(c, layout).reshape(-1, 2) for c in contours]
    if len(contours) > max_objects:
        raise ValueError(f"the answer has {len(contours)} contours but the cap is {max_objects}; raise the cap "
                         "on objects or leave the expression out")
    for index, contour in enumerate(contours):
        if not 3 <= len(contour) <= max_points:
            raise ValueError(f"contour {index} has {len(contour)} points; a contour needs 3 to {max_points} "
                             "(max_points); resample it or drop it")
    ordered = sorted(contours, key=lambda contour: (contour[0, 1], contour[0, 0]))  # sorted() is stable
    tokens: list[int] = []
    for index, contour in enumerate(ordered):
        tokens += ([layout.separator] if index else []) + contour.reshape(-1).tolist()
    return np.array(tokens + [layout.eos], dtype=np.int64)


def read_contour_answer(tokens: Any, layout: TokenLayout, max_objects: int, max_points: int) -> list[np.ndarray]:
    """A generalised contour answer as a model emits it -> int64 (K_i, 2) contours, at most max_objects, in
    emission order: read to the first EOS, split at separators; a contour keeps its first max_points points
    (an odd trailing token dropped) and one of fewer than 3 is dropped."""
    emitted = _answer_tokens(tokens, layout)
    pieces = np.split(emitted, np.flatnonzero(emitted == layout.separator))
    contours = []
    for piece in pieces:
        coordinates = piece[piece != layout.separator]
        points = coordinates[: len(coordinates) // 2 * 2].reshape(-1, 2)[:max_points]
        if len(points) >= 3:
            contours.append(points)
    return contours[:max_objects]


def _answer_tokens(tokens: Any, layout: TokenLayout) -> np.ndarray:
    """A generalised answer's ids (T,) up to its first EOS, int64; an id outside the vocabulary is refused."""
    ids = _numpy(tokens).astype(np.int64).reshape(-1)
    outside = ids[(ids < 0) | (ids > layout.separator)]
    if len(outside):
        raise ValueError(f"token {int(outside[0])} is not in the generalised vocabulary 0 .. {layout.separator} "
                         f"(coordinates, EOS {layout.eos}, separator {layout.separator})")
    eos_at = np.flatnonzero(ids == layout.eos)
    return ids[: eos_at[0]] if len(eos_at) else ids


def _coordinate_tokens(tokens: Any, layout: TokenLayout) -> np.ndarray:
    ids = _numpy(tokens).astype(np.int64)
    if ((ids < 0) | (ids >= layout.num_bin)).any():
        raise ValueError(f"coordinate tokens must lie in 0 .. {layout.num_bin - 1}")
    return ids


def polygon_rle(points: np.ndarray, shape: tuple[int, int]) -> dict:
    """A predicted polygon (K, 2) -> RLE of ``shape`` (height, width): fewer than 2 points give an empty
    mask, exactly 2 the box they span, more the polygon (the reference's rules, `polygon_to_rle`'s)."""
    return polygon_to_rle([np.asarray(points).reshape(-1).tolist()], *shape)


def _known(part: str) -> str:
    if part not in ("box", "mask"):
        raise ValueError(f"part {part!r} is unknown; a sequence is made of 'box' and 'mask' parts")
    return part


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
