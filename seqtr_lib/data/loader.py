"""Batches: collate (pad to the batch maximum, targets as tokens, per-sample metas) and samplers.

Reproducibility: each sample draws its randomness from (seed, epoch, index) (see ReferDataset), the
training order from DistributedSampler(seed, epoch), the point-order shuffle from the batch's sample
keys, and each worker seeds Python, numpy and torch from (seed, epoch, rank, worker id). A run is
therefore the same with any number of workers. Build each epoch's loader with ``epoch=``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from seqtr_lib import distributed
from seqtr_lib.codec import SequenceCodec
from seqtr_lib.sequence import shuffle_point_order

if TYPE_CHECKING:
    from seqtr_lib.config import Experiment
    from seqtr_lib.data.refer import ReferDataset


class Collate:
    """Turn a list of ReferDataset samples into one batch (runs inside the loader workers).

    Returns a dict:

    - ``images``: uint8 (B, 3, Hb, Wb), raw 0-255 RGB, zero-padded; (Hb, Wb) is the largest
      ``pad_shape`` of the batch (each a multiple of 32). uint8 is a quarter of float32's bytes through
      shared and pinned memory (benchmarks/bench_data.py measures the difference); ``.float()`` on the device;
    - ``pad_mask``: bool (B, Hb, Wb), True outside each sample's ``img_shape`` region;
    - ``expression_ids``: int64 (B, max_token);
    - ``<part>_tokens`` for each part of the codec's sequence, encoded by the codec (with the sample's
      own pad_shape, or image_size for the absolute mapping): ``box_tokens`` int64 (B, 4) x1, y1, x2, y2;
      ``mask_tokens`` int64 (B, 2 * num_ray) x1, y1, ..., EOS for missing points, after
      ``shuffle_fraction`` of the batch got one shared permutation of its point order;
    - ``target_box``: float32 (B, 4), the target's tight box x1, y1, x2, y2 in pixels of ``images``, when
      the samples carry one (ReferDataset's do; the target-cell departures of `seqtr_lib.model.seqtr` read it);
    - ``scene_centres`` float32 (B, K, 2) and ``scene_labels`` int64 (B, K, 3), when the samples carry scene
      targets (model.scene_loss): every object's centre and colour / kind / size, labels -1 where padded;
      with them ``named_attributes`` int64 (B, 2), the colour and kind each expression names for its target
      (`seqtr_lib.data.synthetic.named_attributes`);
    - generalised samples (``max_objects`` > 0; docs/method.md, section 11), instead of ``<part>_tokens``:
      ``answer_tokens`` int64 (B, T), each sample's answer (`SequenceCodec.encode_boxes` or `encode_contours`:
      its objects, then EOS) padded with EOS to the longest answer of the batch, T; ``answer_weights`` float32
      (B, T), 1 on the answer's tokens (its EOS included) and 0 on the padding, for a loss to ignore it; and
      ``no_target`` bool (B,). The longest of the batch, not the caps: a capped contour answer is
      max_objects * (2 * max_points + 1) tokens, several times a typical one, and the decoder's cost grows
      with T;
    - ``metas``: list of the samples' meta dicts (plain values);
    - ``num_skipped``: samples dropped because their image could not be read (skip_bad_images).

    With ``device_transforms`` (the samples carry encoded images, `seqtr_lib.data.device_images`) the batch
    holds ``encoded_images``, the list of the samples' payloads, instead of ``images``;
    `seqtr_lib.evaluation.move_batch` turns them into ``images`` on the device. Samples carrying keys of held
    images (data.precompute_images) give ``precomputed_keys``, int64 (B,), instead;
    `seqtr_lib.precompute.PrecomputedImages.fill` adds their ``images``.
    """

    def __init__(self, codec: SequenceCodec, shuffle_fraction: float = 0.0,
                 image_dtype: torch.dtype = torch.uint8, device_transforms: bool = False,
                 max_objects: int = 0, max_points: int = 0) -> None:
        self.codec, self.shuffle_fraction, self.image_dtype = codec, shuffle_fraction, image_dtype
        self.device_transforms = device_transforms
        self.max_objects, self.max_points = max_objects, max_points

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [s for s in samples if s is not None]
        size = len(kept)
        pad_shape = (max((s["meta"]["pad_shape"][0] for s in kept), default=0),
                     max((s["meta"]["pad_shape"][1] for s in kept), default=0))
        images: dict[str, Any] = {}
        if self.device_transforms:
            images["encoded_images"] = [s["image"] for s in kept]
            pad_mask = padding_masks([s["meta"]["img_shape"] for s in kept], pad_shape)
        elif kept and isinstance(kept[0]["image"], int):  # keys of held images (data.precompute_images)
            images["precomputed_keys"] = torch.tensor([s["image"] for s in kept], dtype=torch.int64)
            pad_mask = padding_masks([s["meta"]["img_shape"] for s in kept], pad_shape)
        else:
            images["images"], pad_mask = pad_images([s["image"] for s in kept], pad_shape, self.image_dtype)
        ids = [s["expression_ids"] for s in kept]
        batch: dict[str, Any] = {
            **images,
            "pad_mask": pad_mask,
            "expression_ids": torch.from_numpy(np.stack(ids)) if ids else torch.zeros(0, 0, dtype=torch.int64),
            "metas": [s["meta"] for s in kept],
            "num_skipped": len(samples) - size,
        }
        if kept and all("target_box" in s for s in kept):
            batch["target_box"] = torch.from_numpy(np.stack([s["target_box"] for s in kept]))
        if kept and all("scene_labels" in s for s in kept):
            batch["scene_centres"], batch["scene_labels"] = _padded_scenes(kept)
            batch["named_attributes"] = torch.from_numpy(np.stack([s["named_attributes"] for s in kept]))
        if self.max_objects:
            batch.update(self._answers(kept))
            return batch
        layout = self.codec.layout
        if "box" in layout.parts:
            tokens = [self.codec.encode_box(s["box"], s["meta"]["pad_shape"]) for s in kept]
            batch["box_tokens"] = torch.from_numpy(np.stack(tokens).reshape(size, layout.length("box")))
        if "mask" in layout.parts:
            vertices = np.stack([s["vertices"] for s in kept]).reshape(size, 2, layout.num_ray)
            if self.shuffle_fraction > 0 and size:
                rng = np.random.default_rng([k for s in kept for k in s["rng_key"]])
                vertices = shuffle_point_order(vertices, self.shuffle_fraction, rng)
            tokens = [self.codec.encode_vertices(v, s["meta"]["pad_shape"]) for v, s in zip(vertices, kept)]
            batch["mask_tokens"] = torch.from_numpy(np.stack(tokens).reshape(size, layout.length("mask")))
        return batch


    def _answers(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Generalised answers as tokens, padded with EOS to the batch's longest, with their weights."""
        answers = [self.codec.encode_boxes(s["boxes"], s["meta"]["pad_shape"], self.max_objects) if "boxes" in s
                   else self.codec.encode_contours(s["contours"], s["meta"]["pad_shape"], self.max_objects,
                                                   self.max_points) for s in samples]
        longest = max((len(a) for a in answers), default=1)
        tokens = torch.full((len(answers), longest), self.codec.layout.eos, dtype=torch.int64)
        weights = torch.zeros(len(answers), longest)
        for row, answer in enumerate(answers):
            tokens[row, :len(answer)] = torch.from_numpy(answer)
            weights[row, :len(answer)] = 1.0
        no_target = torch.tensor([bool(s["no_target"]) for s in samples], dtype=torch.bool)
        return {"answer_tokens": tokens, "answer_weights": weights, "no_target": no_target}


def _padded_scenes(samples: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples' scene objects, padded to the batch's most: centres float32 (B, K, 2) (0 where padded),
    labels int64 (B, K, 3) (-1 where padded, which the scene loss ignores)."""
    most = max(len(s["scene_labels"]) for s in samples)
    centres = torch.zeros(len(samples), most, 2)
    labels = torch.full((len(samples), most, 3), -1, dtype=torch.int64)
    for row, sample in enumerate(samples):
        count = len(sample["scene_labels"])
        centres[row, :count] = torch.from_numpy(sample["scene_centres"])
        labels[row, :count] = torch.from_numpy(sample["scene_labels"])
    return centres, labels


def pad_images(images: Sequence[torch.Tensor], pad_shape: tuple[int, int],
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (3, h, w) -> one (B, 3, H, W) batch of ``dtype``, zero below and right of each image, and its
    pad mask (B, H, W), True on padding."""
    images_out = _batch_tensor((len(images), 3, *pad_shape), dtype)
    for i, image in enumerate(images):
        height, width = image.shape[-2:]
        images_out[i, :, :height, :width] = image.as_subclass(torch.Tensor)
        # Only the padding is zeroed: a zero-filled batch would write every pixel twice.
        images_out[i, :, height:] = 0
        images_out[i, :, :height, width:] = 0
    pad_mask = padding_masks([tuple(image.shape[-2:]) for image in images], pad_shape)
    return images_out, pad_mask


def padding_masks(img_shapes: Sequence[tuple[int, int]], pad_shape: tuple[int, int]) -> torch.Tensor:
    """bool (B, H, W), True outside each (height, width) image region placed at the top-left."""
    pad_mask = _batch_tensor((len(img_shapes), *pad_shape), torch.bool)
    pad_mask.fill_(True)
    for i, (height, width) in enumerate(img_shapes):
        pad_mask[i, :height, :width] = False
    return pad_mask


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a loader worker, in shared memory, as torch's default_collate does.

    A worker's batch travels to the main process through shared memory: allocating it there avoids
    one more copy of the whole batch (about 5 MB per 640 px float32 image).
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class ShardSampler(Sampler[int]):
    """Evaluation order split over ranks without padding: rank r takes r, r + world_size, ...

    Every index is visited exactly once over all ranks (DistributedSampler would repeat some to even
    out the ranks); ranks may differ by one sample.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys drawn from ``sampler``: each sample's draws depend on its epoch."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False, epoch: int = 0) -> None:
        self.sampler, self.batch_size, self.drop_last, self.epoch = sampler, batch_size, drop_last, epoch
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[tuple[int, int]] = []
        for index in self.sampler:
            batch.append((self.epoch, index))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        count = len(self.sampler) / self.batch_size
        return math.floor(count) if self.drop_last else math.ceil(count)


class _WorkerInit:
    """Seed a loader worker's numpy generator from (seed, epoch, rank, worker id).

    It holds the batch sampler, and workers start (fork or pickle) when an epoch's iteration starts,
    so each worker sees that epoch's number. (torch already gives each worker one intra-op thread;
    OpenCV's thread count must not be changed here: cv2.setNumThreads in a forked child deadlocks
    once the parent has used OpenCV's thread pool.)
    """

    def __init__(self, seed: int, rank: int, batch_sampler: EpochBatchSampler) -> None:
        self.seed, self.rank, self.batch_sampler = seed, rank, batch_sampler

    def __call__(self, worker_id: int) -> None:
        state = np.random.SeedSequence([self.seed, self.batch_sampler.epoch, self.rank, worker_id])
        worker_seed = int(state.generate_state(1, dtype=np.uint64)[0] % 2**63)
        # torch and random are already seeded by the DataLoader from its generator (seeded by seed and
        # epoch in build_loader); re-seeding torch here hung forked workers after other tests had run.
        np.random.seed(worker_seed % 2**32)


def build_loader(
    dataset: ReferDataset,
    experiment: Experiment,
    training: bool,
    seed: int | None = None,
    epoch: int = 0,
    image_dtype: torch.dtype = torch.uint8,
) -> DataLoader:
    """The DataLoader for a ReferDataset: shuffled and sharded for training, sharded in order for evaluation.

    Training uses DistributedSampler (rank and world size from torch.distributed when initialised,
    else one process) seeded by ``seed`` (default train.seed) and ``epoch``; evaluation visits every
    sample once over all ranks. ``image_dtype`` is the Collate option. Build one loader per epoch:
    workers are not persistent, and the epoch seeds their draws.
    """
    data = experiment.data
    seed = experiment.train.seed if seed is None else seed
    rank, world_size = distributed.rank(), distributed.world_size()
    if training:
        sampler: Sampler[int] = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                                   seed=seed)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    batch_sampler = EpochBatchSampler(sampler, data.batch_size if training else data.eval_batch_size, epoch=epoch)
    collate = Collate(SequenceCodec.from_experiment(experiment), data.shuffle_fraction if training else 0.0,
                      image_dtype, data.device_transforms, data.max_objects, data.max_points)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=data.num_workers,
        worker_init_fn=_WorkerInit(seed, rank, batch_sampler),
        pin_memory=torch.cuda.is_available() and experiment.train.device != "cpu",
        persistent_workers=False,
        # The loader draws its workers' base seed from this generator, not from the global RNG, so a
        # run resumed mid-epoch sees the same dropout masks as an uninterrupted one.
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
    )
