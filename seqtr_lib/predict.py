"""Grounder: one image and one expression in, a box or a mask out, in the original image's pixels.

    grounder = Grounder.from_checkpoint("outputs/synthetic_det/best.pt")
    prediction = grounder.predict("scene.jpg", "the red circle left of the blue square")
    prediction.box       # array([x1, y1, x2, y2]) in pixels of scene.jpg

    prediction = grounder.predict("scene.jpg", "the red circle", return_attention=True)
    prediction.attention  # (4, H, W): where the decoder looked for x1, y1, x2, y2 (viz.attention_figure)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seqtr_lib.codec import SequenceCodec
from seqtr_lib.config import Experiment
from seqtr_lib.data.loader import pad_images
from seqtr_lib.data.transforms import resize_long_side, to_tv_tensors
from seqtr_lib.evaluation import load_trained
from seqtr_lib.execution import FP32, Execution, ran_as, resolve
from seqtr_lib.execution import generate as generate_under
from seqtr_lib.images import MAX_IMAGE_PIXELS, to_rgb_uint8
from seqtr_lib.model.seqtr import SeqTR
from seqtr_lib.runtime import ExportedSeqTR
from seqtr_lib.metrics import box_iou, mask_ious
from seqtr_lib.sequence import mask_to_rle, rle_to_mask
from seqtr_lib.text import Vocabulary


def prepare_inference_image(rgb: np.ndarray, image_size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The evaluation transform for one image: resize the long side, pad to /32; returns a batch of one."""
    image, _, _ = to_tv_tensors(rgb, None, None)
    transformed = resize_long_side(image, image_size=image_size)
    geometry = transformed.geometry
    images, pad_mask = pad_images([transformed.image], geometry.pad_shape, torch.float32)
    meta = {"ori_shape": geometry.ori_shape, "img_shape": geometry.img_shape, "pad_shape": geometry.pad_shape,
            "scale_factor": geometry.scale_factor}
    return images, pad_mask, meta


def attention_in_original_pixels(grid: torch.Tensor, meta: dict[str, Any], stride: int) -> np.ndarray:
    """Attention maps on the memory grid (K, h, w) -> (K, H, W) float32 over the original image's pixels.

    Cell (r, c) covers network-input pixels [r * stride, (r + 1) * stride) x [c * stride, (c + 1) * stride);
    the grid is upsampled bilinearly to the padded input, cropped to the image (``img_shape``; padding
    cells fall away) and resized to ``ori_shape``.
    """
    maps = torch.as_tensor(grid, dtype=torch.float32)[None]  # (1, K, h, w)
    if maps.shape[1] == 0:  # a mask that ended at once: no token, no map
        return np.zeros((0, *meta["ori_shape"][:2]), dtype=np.float32)
    height, width = maps.shape[-2:]
    maps = F.interpolate(maps, size=(height * stride, width * stride), mode="bilinear", align_corners=False)
    image_height, image_width = meta["img_shape"]
    maps = F.interpolate(maps[..., :image_height, :image_width], size=tuple(meta["ori_shape"][:2]),
                         mode="bilinear", align_corners=False)
    return maps[0].cpu().numpy()


@dataclass
class Prediction:
    """Plain results in original-image pixels; ``tokens``/``scores`` are the raw sequence and its confidences."""

    task: str
    box: np.ndarray | None  # (4,) x1, y1, x2, y2
    polygon: np.ndarray | None  # (K, 2) vertices in emission order
    mask: np.ndarray | None  # (H, W) uint8
    tokens: np.ndarray  # generated coordinate tokens (EOS = num_bin)
    scores: np.ndarray  # probability of each generated token
    seconds: float  # wall time of preprocessing + network + decoding
    # With return_attention, per emitted coordinate token (K: 4 for a box, the tokens before EOS for a mask):
    attention: np.ndarray | None = None  # (K, H, W) over the original pixels, mean over layers and heads
    attention_grid: np.ndarray | None = None  # (L, nh, K, h, w) every layer and head, on the memory grid
    execution: str = ""  # how the network ran (`seqtr_lib.execution`), e.g. "channels_last+bf16+fold_bn"
    # A generalised checkpoint's answer (docs/method.md, section 11), in emission order: boxes (4,) x1, y1, x2, y2
    # or contours (K, 2); [] when nothing matches. None for the paper's one-object result (box or polygon).
    # ``mask`` is then the union of the contours; ``box`` and ``polygon`` are None.
    objects: list[np.ndarray] | None = None

    @property
    def outlines(self) -> bool:
        """True when the points trace a closed contour (a mask), False for a box's two corners."""
        return self.polygon is not None

    @property
    def points(self) -> np.ndarray:
        """The emitted points (K, 2) in emission order: the box's corners (x1, y1), (x2, y2), or the contour."""
        return self.polygon if self.polygon is not None else np.asarray(self.box, dtype=float).reshape(2, 2)

    @property
    def outline(self) -> np.ndarray | None:
        """The contour as one flat polygon [x1, y1, x2, y2, ...] when it has an area (3 points or more)."""
        return self.polygon.reshape(-1) if self.polygon is not None and len(self.polygon) > 2 else None

    def point_scores(self) -> np.ndarray:
        """Each point's confidence (K,): the mean probability of its x and y tokens."""
        return np.asarray(self.scores, dtype=float)[: 2 * len(self.points)].reshape(-1, 2).mean(axis=1)

    def description(self) -> str:
        """One line of plain numbers: the box, or the contour's points and pixels (or a generalised answer's
        objects); and the latency."""
        if self.objects is not None and not self.objects:
            where = "no matching object"
        elif self.objects is not None and self.task == "box":
            where = f"{len(self.objects)} box(es) (x1, y1, x2, y2) " + "; ".join(
                ", ".join(f"{v:.0f}" for v in box) for box in self.objects)
        elif self.objects is not None:
            where = f"{len(self.objects)} contour(s) of {', '.join(str(len(c)) for c in self.objects)} points, " \
                    f"{int(self.mask.sum())} pixels"
        elif self.outlines:
            where = f"mask from {len(self.polygon)} points, {int(self.mask.sum())} pixels"
        else:
            where = "box (x1, y1, x2, y2) " + ", ".join(f"{v:.0f}" for v in self.box)
        ran = f" ({self.execution})" if self.execution else ""  # how the network ran (`seqtr_lib.execution`)
        return f"{where}; {self.seconds * 1000:.0f} ms{ran}"

    def attention_panels(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(label, attention map (H, W), the point it produced) per token of a box (x1, y1, x2, y2: the point is
        the corner the token belongs to), per point of a contour (its x and y tokens' maps averaged)."""
        if self.attention is None:
            raise ValueError("this prediction has no attention maps: call Grounder.predict(..., return_attention=True)")
        points = self.points
        if not self.outlines:
            return [(name, self.attention[i], points[i // 2]) for i, name in enumerate(("x1", "y1", "x2", "y2"))]
        return [(f"point {i + 1}", self.attention[2 * i: 2 * i + 2].mean(axis=0), points[i]) for i in range(len(points))]

    def iou(self, box: np.ndarray, mask: np.ndarray | None) -> float:
        """IoU with a ground truth: masks for a contour (``mask`` (H, W) required), boxes (x1, y1, x2, y2) else."""
        if not self.outlines:
            return float(box_iou(self.box[None], np.asarray(box)[None])[0])
        if mask is None:
            raise ValueError("no ground-truth mask to compare a mask prediction with")
        return float(mask_ious([mask_to_rle(self.mask)], [mask_to_rle(mask)])[0][0])


class Grounder:
    """A trained SeqTR ready for single-image inference (EMA weights when the checkpoint has them).

    ``execution`` is how the network runs (`seqtr_lib.execution`): ``auto`` picks the fastest safe choice
    for this model and device (on a CPU with bf16 units and a large backbone, ``channels_last+bf16+fold_bn+recheck``;
    float32 on a GPU), ``fp32`` or steps joined by ``+`` force one; `Grounder.execution` says which ran.
    """

    def __init__(self, model: SeqTR | ExportedSeqTR, experiment: Experiment, vocabulary: Vocabulary,
                 device: torch.device, max_pixels: int | None = MAX_IMAGE_PIXELS,
                 execution: str | Execution = "auto") -> None:
        device = torch.device(device)
        self.codec = SequenceCodec.from_experiment(experiment)
        # An exported network (`from_export`) runs as its runtime compiled it, on the CPU.
        self.exported = model if isinstance(model, ExportedSeqTR) else None
        if self.exported is not None:
            self.execution, self.model, device = FP32, None, torch.device("cpu")
        else:
            self.execution: Execution = resolve(execution, device, experiment.model, experiment.data.image_size,
                                                generalised=self.codec.layout.generalised) or FP32
            # fold_bn works on a copy: the model given keeps its weights
            self.model = self.execution.prepare(model.eval().to(device))
        self.experiment = experiment
        self.vocabulary = vocabulary
        self.device = device
        self.max_pixels = max_pixels  # larger images are refused (ImageTooLarge); None: no limit

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        weights: str = "ema", max_pixels: int | None = MAX_IMAGE_PIXELS,
                        execution: str | Execution = "auto") -> Grounder:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        experiment, vocabulary, models = load_trained(path, device)
        model = models.get(weights) or models["raw"]
        return cls(model, experiment, vocabulary, device, max_pixels, execution)

    @classmethod
    def from_export(cls, directory: str | Path, runtime: str = "auto", precision: str = "auto",
                    max_pixels: int | None = MAX_IMAGE_PIXELS, threads: int | None = None) -> Grounder:
        """A Grounder on an export folder (`python -m seqtr_lib export`), run by OpenVINO or ONNX Runtime
        (`seqtr_lib.runtime`; ``pip install ".[deploy]"``); ``precision`` auto takes int8 + recheck only where the
        export's measured agreement allows it. `describe_backend` says what runs and why."""
        exported = ExportedSeqTR(directory, runtime, precision, threads)
        return cls(exported, exported.experiment, exported.vocabulary, torch.device("cpu"), max_pixels)

    def describe_backend(self) -> str:
        """What runs the network: the torch execution (`seqtr_lib.execution`), or the runtime and precision of an
        export, with the reason for the choice."""
        if self.exported is not None:
            return f"{self.exported.name} ({self.exported.reason}; {self.exported.directory})"
        return f"torch {self.execution.describe()}"

    def _ran_as(self) -> str:
        return self.exported.name if self.exported is not None else ran_as(self.model, self.execution)

    @property
    def tasks(self) -> tuple[str, ...]:
        """What this checkpoint can predict: its sequence's parts ("box", "mask")."""
        return self.codec.layout.parts

    @torch.inference_mode()
    def predict(self, image: Any, expression: str, task: str | None = None, return_attention: bool = False,
                strategy: str = "greedy", top_p: float = 0.9, seed: int = 0) -> Prediction:
        """Ground ``expression`` in ``image`` (a path, a PIL image or an HxWx3/HxW uint8 array).

        ``return_attention`` adds the decoder's cross-attention for every emitted coordinate token
        (`Prediction.attention`, `Prediction.attention_grid`); it costs K x H x W floats for an H x W image.
        ``strategy`` "top_p" samples each token from the smallest set of likely tokens whose probability mass
        reaches ``top_p`` (nucleus sampling, drawn with ``seed``) instead of taking the most likely one.
        A generalised checkpoint (data.max_objects > 0) answers a list of objects (`Prediction.objects`).
        """
        task = task or self.tasks[0]
        if task not in self.tasks:
            raise ValueError(f"this checkpoint was trained for {self.experiment.model.task!r} and cannot predict "
                             f"a {task!r}; choose one of {self.tasks}")
        if not expression or not expression.strip():
            raise ValueError("the expression is empty: type what to look for, e.g. 'the red circle on the left'")
        if return_attention and self.exported is not None:
            raise ValueError("attention maps need the torch backend (Grounder.from_checkpoint); an exported network "
                             "returns tokens only")
        if return_attention and self.codec.layout.generalised:
            raise ValueError("attention maps are not available for a generalised checkpoint (data.max_objects > 0) "
                             "yet; call predict without return_attention")
        started = time.perf_counter()
        rgb = to_rgb_uint8(image, self.max_pixels)
        images, pad_mask, meta = prepare_inference_image(rgb, self.experiment.data.image_size)
        ids = torch.from_numpy(self.vocabulary.encode(expression, self.experiment.max_token))[None]
        sampling = torch.Generator(self.device).manual_seed(seed) if strategy == "top_p" else None
        if self.exported is not None:
            generated = self.exported.generate(images, pad_mask, ids, task=task, strategy=strategy, top_p=top_p,
                                               generator=sampling)
        else:
            generated = generate_under(self.model, self.execution, images.to(self.device), pad_mask.to(self.device),
                                       ids.to(self.device), task=task, strategy=strategy, top_p=top_p,
                                       generator=sampling, return_attention=return_attention)
        if self.codec.layout.generalised:
            return self._answer(task, generated, meta, started)
        tokens = generated[f"{task}_tokens"][0].cpu().numpy()
        scores = generated[f"{task}_scores"][0].float().cpu().numpy()
        decoded = self.codec.decode({f"{task}_tokens": tokens[None]}, 0, meta)
        box = np.array(decoded["pred_box"], dtype=np.float32) if "pred_box" in decoded else None
        polygon = np.array(decoded["pred_polygon"], dtype=np.float32).reshape(-1, 2) if "pred_polygon" in decoded else None
        mask = rle_to_mask(decoded["pred_rle"]) if "pred_rle" in decoded else None
        attention = attention_grid = None
        if return_attention:
            emitted = self.codec.layout.num_emitted(tokens)
            stride = self.model.fusion.stride
            grid_shape = (meta["pad_shape"][0] // stride, meta["pad_shape"][1] // stride)
            raw = generated[f"{task}_attention"][0, :, :, :emitted].float()  # (L, nh, K, S)
            attention_grid = raw.reshape(*raw.shape[:3], *grid_shape).cpu().numpy()
            attention = attention_in_original_pixels(raw.mean(dim=(0, 1)).reshape(emitted, *grid_shape), meta, stride)
        return Prediction(task, box, polygon, mask, tokens, scores, time.perf_counter() - started,
                          attention, attention_grid, self._ran_as())

    def _answer(self, task: str, generated: dict[str, torch.Tensor], meta: dict[str, Any], started: float
                ) -> Prediction:
        """A generalised checkpoint's Prediction: its objects in the original image's pixels."""
        tokens = generated["answer_tokens"][0].cpu().numpy()
        scores = generated["answer_scores"][0].float().cpu().numpy()
        decoded = self.codec.decode_answer({"answer_tokens": tokens[None]}, 0, meta)
        if task == "box":
            objects, mask = [np.array(box, dtype=np.float32) for box in decoded["pred_boxes"]], None
        else:
            objects = [np.array(polygon, dtype=np.float32).reshape(-1, 2) for polygon in decoded["pred_polygons"]]
            mask = rle_to_mask(decoded["pred_rle"])
        return Prediction(task, None, None, mask, tokens, scores, time.perf_counter() - started,
                          execution=self._ran_as(), objects=objects)

    def save_overlay(self, image: Any, expression: str, prediction: Prediction, path: str | Path) -> Path:
        """Draw the prediction over the image (numbered points for masks) and write a PNG."""
        from seqtr_lib.viz import draw_prediction, new_figure

        figure, ax = new_figure()
        draw_prediction(ax, to_rgb_uint8(image, self.max_pixels), prediction, expression)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
        return path

    def save_attention(self, image: Any, expression: str, prediction: Prediction, path: str | Path) -> Path:
        """Write `viz.attention_figure` of a prediction made with ``return_attention=True`` as a PNG."""
        from seqtr_lib.viz import attention_figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        attention_figure(to_rgb_uint8(image, self.max_pixels), prediction, expression).savefig(path, dpi=100)
        return path
