"""Training images prepared once (``data.precompute_images: true``): an execution choice, not a change of method.

Without per-sample image augmentation (data.lsj off, no data.zoom_out) every epoch feeds a training image to
the model exactly as the epoch before: decoded, resized to data.image_size and zero-padded. And with the
first backbone modules frozen (model.trainable_backbone_modules >= 0: weights fixed and BatchNorm in eval
mode, `seqtr_lib.model.darknet.freeze`) those modules also give it the same output every epoch. So before
the first epoch the training process decodes each training image once, keeps its padded pixels as uint8
and runs the frozen modules over it once; each step then takes its batch's pixels from memory and the
backbone starts at its first trainable module. On the demo's small model these are most of a CPU step's
time (`benchmarks/demo_step_profile.py`).

The loader's samples then carry a key into the held images instead of pixels (the geometry and targets are
drawn as before, from the image's shape alone), so its workers do no image work. The model's outputs are
those of the usual path up to floating-point rounding: each frozen module computes the same function on the
same input, only in batches of other images, and the padding-zeroing hooks (`fusion.padding_zeroed`) make a
map of a padded image the map of the image on a larger zero canvas, so held maps are padded with zeros.

Memory: 3 x H x W bytes per image plus the frozen outputs in float32 (the demo's 4,200 images of 128 px:
about 200 MB of pixels and 240 MB of maps). Meant for sets that fit in memory, such as the synthetic one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from seqtr_lib.data import transforms
from seqtr_lib.data.refer import ReferDataset
from seqtr_lib.evaluation import autocast
from seqtr_lib.images import read_image
from seqtr_lib.model.darknet import OUTPUT_MODULES, DarkNet53
from seqtr_lib.model.fusion import padding_zeroed
from seqtr_lib.model.seqtr import SeqTR


class Held(nn.Module):
    """Stands in for a frozen backbone module while a step runs on held maps: returns the batch's held
    output of that module, or (for a module whose output is not needed) its input unchanged."""

    def __init__(self, output: torch.Tensor | None) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.output is None else self.output


def kept_modules(backbone: DarkNet53) -> tuple[str, ...]:
    """The frozen modules whose outputs a step needs: the frozen output maps and the last frozen module's
    output (the first trainable module's input); () when nothing is frozen."""
    frozen = backbone.frozen_modules
    if not frozen:
        return ()
    return tuple(name for name in frozen if name in OUTPUT_MODULES or name == frozen[-1])


class PrecomputedImages:
    """The images of a dataset's split, padded pixels (uint8) and the frozen backbone modules' outputs: the
    training images, and the validation images that every epoch's validation grounds with both weights.

    ``build`` makes it; ``attach`` gives the dataset the keys; ``fill`` puts a loader batch's pixels in;
    ``frozen_outputs`` runs a forward pass on the held maps.
    """

    def __init__(self, keys: dict[str, int], ori_shapes: list[tuple[int, int]], pixels: list[torch.Tensor],
                 maps: dict[str, list[torch.Tensor]], strides: dict[str, int], split: str = "train") -> None:
        self.keys, self.ori_shapes, self.pixels, self.split = keys, ori_shapes, pixels, split
        self.maps, self.strides = maps, strides  # per kept frozen module: each image's map, its stride

    @classmethod
    @torch.no_grad()
    def build(cls, dataset: ReferDataset, model: SeqTR, device: torch.device, channels_last: bool, amp: str = "none",
              batch_size: int = 64, progress: bool = True) -> PrecomputedImages:
        """Decode and resize every image of ``dataset`` once (as its samples do without augmentation) and run
        ``model``'s frozen backbone modules over them, in batches of ``batch_size`` images of one shape, in the
        precision a training step runs them (train.amp)."""
        paths = dataset.image_paths()
        keys = {path: index for index, path in enumerate(paths)}
        ori_shapes: list[tuple[int, int]] = []
        pixels: list[torch.Tensor] = []
        for path in tqdm(paths, desc=f"decoding the {dataset.split} images once", disable=not progress, leave=False):
            image = read_image(path)
            ori_shapes.append(image.shape[:2])
            resized = transforms.resize_long_side(transforms.to_tv_tensors(image, None, None)[0], None, None,
                                                  dataset.image_size)
            padded = torch.zeros((3, *resized.geometry.pad_shape), dtype=torch.uint8)
            height, width = resized.geometry.img_shape
            padded[:, :height, :width] = resized.image.as_subclass(torch.Tensor)
            pixels.append(padded)
        kept = kept_modules(model.backbone)
        maps: dict[str, list[torch.Tensor]] = {name: [None] * len(paths) for name in kept}  # type: ignore[misc]
        strides: dict[str, int] = {}
        if kept:
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for index, image in enumerate(pixels):
                by_shape.setdefault(tuple(image.shape), []).append(index)
            groups = [indices[i:i + batch_size] for indices in by_shape.values()
                      for i in range(0, len(indices), batch_size)]
            for indices in tqdm(groups, desc="running the frozen backbone modules once", disable=not progress,
                                leave=False):
                with autocast(device, amp):
                    outputs = frozen_module_outputs(model, torch.stack([pixels[i] for i in indices]),
                                                    [ori_shapes[i] for i in indices], dataset.image_size, device,
                                                    channels_last)
                for name, output in outputs.items():
                    strides[name] = pixels[indices[0]].shape[1] // output.shape[2]  # pad shapes: multiples of 32
                    for row, index in enumerate(indices):
                        maps[name][index] = output[row].cpu()
        return cls(keys, ori_shapes, pixels, maps, strides, dataset.split)

    def describe(self) -> str:
        """One line: how many images are held and the memory they take."""
        size = sum(p.numel() * p.element_size() for p in self.pixels)
        size += sum(m.numel() * m.element_size() for maps in self.maps.values() for m in maps)
        modules = f", with the outputs of {', '.join(self.maps)}" if self.maps else ""
        which = "training" if self.split == "train" else self.split
        return (f"data.precompute_images: {len(self.pixels)} {which} images held in memory ({size / 2**20:.0f} "
                f"MB{modules})")

    def attach(self, dataset: ReferDataset) -> None:
        """Let ``dataset``'s samples carry keys into these images instead of pixels."""
        dataset.precomputed_shapes = {path: (key, self.ori_shapes[key]) for path, key in self.keys.items()}

    def fill(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A loader batch with ``images``: its held pixels, zero-padded to the batch's shape."""
        keys = batch["precomputed_keys"].tolist()
        images = torch.zeros((len(keys), 3, *batch["pad_mask"].shape[-2:]), dtype=torch.uint8)
        for row, key in enumerate(keys):
            image = self.pixels[key]
            images[row, :, :image.shape[1], :image.shape[2]] = image
        return {**batch, "images": images}

    @contextmanager
    def frozen_outputs(self, backbone: DarkNet53, batch: dict[str, Any]) -> Iterator[None]:
        """Within the block the frozen modules of ``backbone`` give the held outputs of ``batch``'s images
        (zero-padded to the batch's shape; on the device, dtype and memory format of its ``images``) instead of
        running."""
        like = batch["images"]
        keys = batch["precomputed_keys"].tolist()
        height, width = batch["pad_mask"].shape[-2:]
        originals = {name: backbone.layers.get_submodule(name) for name in backbone.frozen_modules}
        for name in backbone.frozen_modules:
            output = None
            if name in self.maps:
                stride = self.strides[name]
                channels = self.maps[name][keys[0]].shape[0]
                output = like.new_zeros((len(keys), channels, -(-height // stride), -(-width // stride)))
                for row, key in enumerate(keys):
                    held = self.maps[name][key]
                    output[row, :, :held.shape[1], :held.shape[2]] = held
                if like.is_contiguous(memory_format=torch.channels_last):
                    output = output.contiguous(memory_format=torch.channels_last)
            setattr(backbone.layers, name, Held(output))
        try:
            yield
        finally:
            for name, module in originals.items():
                setattr(backbone.layers, name, module)


def frozen_module_outputs(model: SeqTR, pixels: torch.Tensor, ori_shapes: list[tuple[int, int]], image_size: int,
                          device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """The outputs of the kept frozen modules (`kept_modules`) for a batch of padded uint8 ``pixels`` (B, 3, H,
    W) of images of ``ori_shapes``, computed as the model's forward pass computes them (what the training aids
    give the backbone, padding zeroed), in the model's dtype (float32 for maps of a bf16 autocast)."""
    backbone = model.backbone
    kept = kept_modules(backbone)
    images = pixels.to(device, next(backbone.parameters()).dtype)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    pad_mask = torch.ones((len(ori_shapes), *pixels.shape[-2:]), dtype=torch.bool, device=device)
    for row, shape in enumerate(ori_shapes):
        height, width = transforms.rescaled_shape(shape, image_size / max(shape))
        pad_mask[row, :height, :width] = False
    x = images if model.aids is None else model.aids.backbone_input(images)
    outputs = {}
    with padding_zeroed(model, pad_mask):
        for name, module in backbone.layers.named_children():
            if name not in backbone.frozen_modules:
                break
            x = module(x)
            if name in kept:
                outputs[name] = x if x.dtype == images.dtype else x.float()  # a bf16 map is exact in float32
    return outputs
