"""Detection pre-training of the DarkNet backbone on the synthetic set, saved as a Darknet ``.weights`` file.

The paper starts SeqTR from a COCO-trained DarkNet-53 and freezes all of it but the last two modules. The
synthetic set has no such model, so the project trains one the same way a detector is trained: on every
object of each training image, with no expression. A light head on the backbone's three maps, merged at
the memory stride, predicts at every cell whether an object is centred there (objectness) and, at each
object's centre cell, its colour, kind and size class (the classes of ``model.scene_loss``). Only the
backbone is kept: `seqtr_lib.model.darknet.save_darknet_weights` writes it, and ``model.darknet_weights``
loads it, with ``model.trainable_backbone_modules`` freezing what the paper freezes.

    python -m seqtr_lib pretrain-backbone --params params/synthetic_det.yaml --out weights/synthetic_darknet.weights
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.checkpoint import keep_earlier_file
from seqtr_lib.config import Experiment, experiment_to_dict
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import build_dataset, load_vocabulary
from seqtr_lib.data.synthetic import SCENE_ATTRIBUTES
from seqtr_lib.distributed import resolve_device
from seqtr_lib.engine import cosine_factor, seed_everything
from seqtr_lib.evaluation import move_batch
from seqtr_lib.loss import scene_loss
from seqtr_lib.model.darknet import ConvBNLeaky, DarkNet53, save_darknet_weights
from seqtr_lib.model.aids import cell_index
from seqtr_lib.reports import cpu_model

CLASS_COUNTS = tuple(len(classes) for classes in SCENE_ATTRIBUTES.values())


class SceneDetector(nn.Module):
    """DarkNet-53 and a head that finds and classifies every object of a synthetic scene at one stride.

    The stride-8 map is average-pooled and the stride-32 map upsampled (nearest) to the grid of ``stride``
    (16 or 32), the three are concatenated, and one 3x3 Darknet conv mixes them into ``hidden`` channels.
    """

    def __init__(self, width: float, stride: int, hidden: int = 128) -> None:
        super().__init__()
        if stride not in (16, 32):
            raise ValueError(f"the detector predicts at stride 16 or 32 (the memory strides), not {stride}")
        self.stride = stride
        self.backbone = DarkNet53(width)
        self.merge = ConvBNLeaky(sum(self.backbone.out_channels), hidden, 3)
        self.classes = nn.Conv2d(hidden, sum(CLASS_COUNTS), 1)
        self.objectness = nn.Conv2d(hidden, 1, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images float (B, 3, H, W), raw 0-255 RGB. Returns class logits (B, C, h, w), C the sum of the
        attributes' class counts, and objectness logits (B, h, w), h = H / stride."""
        maps = self.backbone(images)
        grid = maps[1 if self.stride == 16 else 2].shape[-2:]
        resized = [F.adaptive_avg_pool2d(m, grid) if m.shape[-1] > grid[-1] else F.interpolate(m, size=grid)
                   for m in maps]
        hidden = self.merge(torch.cat(resized, dim=1))
        return self.classes(hidden), self.objectness(hidden).squeeze(1)


def object_cells(centres: torch.Tensor, stride: int, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major cell (B, K) of each object centre float (B, K, 2) on a (h, w) grid of ``stride`` pixels."""
    return cell_index(centres[..., 0], centres[..., 1], stride, grid[1], grid[0])


def detection_loss(class_logits: torch.Tensor, objectness: torch.Tensor, centres: torch.Tensor,
                   labels: torch.Tensor, stride: int) -> dict[str, torch.Tensor]:
    """Losses of a `SceneDetector` output against the loader's ``scene_centres`` (B, K, 2) and
    ``scene_labels`` (B, K, 3) (-1 where padded).

    ``loss_classes``: `seqtr_lib.loss.scene_loss` of the class logits at each object's centre cell;
    ``loss_objectness``: binary cross-entropy, averaged over all cells, of "an object is centred here";
    ``loss``: their sum. Computed in float32 (float64 for float64 logits).
    """
    batch, channels, height, width = class_logits.shape
    dtype = torch.promote_types(class_logits.dtype, torch.float32)
    cells = object_cells(centres, stride, (height, width))
    real = labels[..., 0] >= 0
    per_object = class_logits.to(dtype).flatten(2).transpose(1, 2).gather(1, cells[..., None].expand(-1, -1, channels))
    target = torch.zeros(batch, height * width, dtype=dtype, device=objectness.device)
    target.scatter_reduce_(1, cells, real.to(dtype), reduce="amax")
    losses = {"loss_classes": scene_loss(per_object, labels, CLASS_COUNTS),
              "loss_objectness": F.binary_cross_entropy_with_logits(objectness.to(dtype).flatten(1), target)}
    losses["loss"] = losses["loss_classes"] + losses["loss_objectness"]
    return losses


@torch.no_grad()
def detection_accuracy(model: SceneDetector, loader: Any, device: torch.device, limit: int) -> dict[str, float]:
    """Percent of the objects of the first ``limit`` samples whose colour, kind and size the detector gets
    right at their centre cell, and whose cell it marks as holding an object (objectness > 0)."""
    model.eval()
    correct = torch.zeros(len(CLASS_COUNTS) + 1)
    objects, seen = 0, 0
    for batch in loader:
        if seen >= limit:
            break
        batch = move_batch(batch, device, channels_last=False)
        class_logits, objectness = model(batch["images"])
        labels, real = batch["scene_labels"], batch["scene_labels"][..., 0] >= 0
        cells = object_cells(batch["scene_centres"], model.stride, tuple(objectness.shape[-2:]))
        per_object = class_logits.flatten(2).transpose(1, 2).gather(
            1, cells[..., None].expand(-1, -1, class_logits.shape[1]))[real]
        for k, part in enumerate(per_object.split(list(CLASS_COUNTS), dim=-1)):
            correct[k] += (part.argmax(-1) == labels[real][:, k]).sum().item()
        correct[-1] += (objectness.flatten(1).gather(1, cells)[real] > 0).sum().item()
        objects += int(real.sum())
        seen += len(batch["metas"])
    names = [*SCENE_ATTRIBUTES, "objectness"]
    return {name: round(100 * float(c) / max(objects, 1), 2) for name, c in zip(names, correct)}


def pretrain_backbone(experiment: Experiment, out: str | Path, epochs: int, lr: float = 1e-3,
                      max_steps: int = 0, val_limit: int = 1000, warmup_steps: int = 100) -> dict[str, Any]:
    """Train a `SceneDetector` on the training split of ``experiment``'s synthetic data and write its
    backbone to ``out`` (Darknet ``.weights``) and a summary to ``out`` + ``.json``; returns the summary.

    Uses the experiment's backbone width, memory stride, image size, batch size, workers and seed; Adam at
    ``lr`` with ``warmup_steps`` of linear warm-up, then a cosine decay to zero over ``epochs`` (or
    ``max_steps``, when positive). The summary holds the val accuracies of `detection_accuracy`. A backbone
    already at ``out`` is moved aside with its summary (`checkpoint.keep_earlier_file`), never overwritten.
    """
    if experiment.data.dataset != "synthetic":
        raise ValueError(f"pretrain-backbone needs the synthetic set (its scenes name every object); "
                         f"data.dataset is {experiment.data.dataset!r}")
    out = Path(out)
    device = resolve_device(experiment.train.device)
    seed_everything(experiment.train.seed)
    vocabulary = load_vocabulary(experiment)
    train_set = build_dataset(experiment, "train", vocabulary, training=True, scene_targets=True)
    val_set = build_dataset(experiment, "val", vocabulary, training=False, scene_targets=True)
    model = SceneDetector(experiment.model.darknet_width, experiment.model.memory_stride).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(build_loader(train_set, experiment, training=True))
    total = min(max_steps, epochs * steps_per_epoch) if max_steps > 0 else epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total, warmup_steps))
    step, started = 0, time.perf_counter()
    bar = tqdm(total=total, desc="pretrain-backbone", dynamic_ncols=True)
    for epoch in range(epochs):
        if step >= total:
            break
        model.train()
        for batch in build_loader(train_set, experiment, training=True, epoch=epoch):
            if step >= total:
                break
            batch = move_batch(batch, device, channels_last=False)
            losses = detection_loss(*model(batch["images"]), batch["scene_centres"], batch["scene_labels"],
                                    model.stride)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.set_postfix({name.removeprefix("loss_"): f"{float(value.detach()):.3f}" for name, value in losses.items()})
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - started
    accuracy = detection_accuracy(model, build_loader(val_set, experiment, training=False), device, val_limit)
    if (moved := keep_earlier_file(out)) is not None and (summary_file := Path(f"{out}.json")).is_file():
        summary_file.rename(f"{moved}.json")  # the earlier backbone keeps its summary
    save_darknet_weights(model.backbone, out)
    summary = {"weights": out.name, "epochs": epochs, "steps": step, "samples": step * experiment.data.batch_size,
               "train_seconds": round(seconds, 1), "lr": lr, "warmup_steps": warmup_steps,
               "val_accuracy": accuracy, "val_objects_of": f"the first {val_limit} val expressions' images",
               "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
               "config": {k: v for k, v in experiment_to_dict(experiment).items() if k in ("model", "data")}}
    write_json_atomic(out.with_name(out.name + ".json"), summary)
    return summary
