"""Training aids: what helps SeqTR learn from scratch on the synthetic set, kept apart from the paper's model.

The paper fine-tunes a detection-trained backbone on a hundred thousand expressions; the embedded set has
a few thousand and a small model. These opt-in departures (docs/method.md, "Departures") close that gap.
Every paper params file leaves them off, and then `SeqTR` holds no `TrainingAids` at all.

- ``target_cell_loss``: a score per memory cell, trained to pick the cell holding the target's centre (the
  one-stage grounding objective of FAOA, Yang et al. 2019, applied to SeqTR's memory).
- ``query_selection``: the first decoder input gains a projection of the selected cell's memory and
  position: the true cell under teacher forcing, the best-scoring one when generating.
- ``scene_loss``: the colour, kind and size of every object of the image are classified from the fused
  visual map before the expression gates it, so the backbone learns what the shapes are from all of them.
- ``colour_pathway``: the backbone sees a grey image and colour enters as shape-blind per-pixel features
  pooled per cell (`seqtr_lib.model.colour`), so colour and kind are learnt apart.
- ``attribute_prior``: a word head says which colour and kind the expression names; each cell's score
  gains how well its object matches them, so colours and kinds never seen together still combine.

(``input_token_noise`` is the sixth departure: it corrupts teacher-forcing inputs, a property of the
training data, so the training step applies it: `seqtr_lib.codec.noisy_coordinates`.)

The model calls four hooks: `backbone_input`, `visual_map` (additions to the visual map, and the notes the
aids keep for later), `cell_logits` (with the prior) and `first_input`. Training calls `outputs` (inside the
model's forward; `forward_keys` names the batch entries it reads); the aids' loss terms, with their weights,
are the criterion's (`seqtr_lib.loss.Criterion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from seqtr_lib.loss import at_least_float32
from seqtr_lib.model.colour import ColourPathway, attribute_match, grey


class AidNotes(NamedTuple):
    """What the aids keep from encoding a batch: the fused visual map (B, Cy, h, w) before the colour
    pathway's addition and the expression's gate; the pathway's pooled colours (B, hidden, h, w); with the
    attribute prior, the word logits (B, C + 1 + K + 1) and each cell's log-probability (B, h * w) of
    matching the colour and kind they name."""

    visual: torch.Tensor
    colours: torch.Tensor | None = None
    word_logits: torch.Tensor | None = None
    cell_prior: torch.Tensor | None = None


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """Centres (..., 2) x, y of boxes (..., 4) x1, y1, x2, y2."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def cell_index(x: torch.Tensor, y: torch.Tensor, stride: int, grid_width: int,
               grid_height: int | None = None) -> torch.Tensor:
    """Row-major index of the cell holding each point (x, y) in pixels: int64 of x's shape. Columns are
    clamped to the grid, so the right edge stays in the last column; rows too when ``grid_height`` is given."""
    column = (x / stride).floor().long().clamp(0, grid_width - 1)
    row = (y / stride).floor().long().clamp(0, None if grid_height is None else grid_height - 1)
    return row * grid_width + column


def target_cells(target_box: torch.Tensor, stride: int, grid_width: int) -> torch.Tensor:
    """Index of the memory cell holding each box's centre, in row-major order over the padded grid.

    target_box: float (B, 4) x1, y1, x2, y2 in pixels of the padded network input; stride: pixels per
    cell; grid_width: cells per row. Returns int64 (B,). The centre lies inside the image, so its cell
    is never padding (a cell is padding when its top-left pixel is).
    """
    centres = box_centres(target_box)
    return cell_index(centres[:, 0], centres[:, 1], stride, grid_width)


class TrainingAids(nn.Module):
    """The departures of one model, with their heads and hooks.

    d_model: the memory's width; visual_channels: the fused visual map's (the sentence feature's) width;
    stride: pixels per memory cell. The options are the params' ``model.*`` values (0 or False: off; a loss's
    weight is the criterion's, `seqtr_lib.loss.LossWeights`); ``scene_classes`` (class counts of "color",
    "kind" and "size", in that order) is required by the scene head and comes from the dataset
    (`seqtr_lib.data.refer.scene_classes`).
    """

    def __init__(self, d_model: int, visual_channels: int, stride: int, *, target_cell_loss: float = 0.0,
                 query_selection: bool = False, scene_loss: float = 0.0,
                 scene_classes: Mapping[str, int] | None = None, colour_pathway: int = 0,
                 attribute_prior: float = 0.0) -> None:
        super().__init__()
        if query_selection and not target_cell_loss:
            raise ValueError("query selection picks the best-scoring cell at inference: it needs target_cell_loss")
        if scene_loss and scene_classes is None:
            raise ValueError("the scene loss needs the dataset's scene classes (a dataset with scene annotations)")
        if attribute_prior and not (colour_pathway and scene_loss and target_cell_loss):
            raise ValueError("the attribute prior needs the colour pathway, the scene loss and target_cell_loss")
        self.stride = stride
        counts = dict(scene_classes or {})
        self.scene_counts = tuple(counts.values())  # color, kind, size
        # Made in the order the random initialisation has always drawn them (the colour pathway before the
        # scene heads), registered in the order their parameters had as attributes of SeqTR (an optimizer's
        # state follows it).
        cell_scorer = nn.Linear(d_model, 1) if target_cell_loss else None
        query_projection = nn.Linear(d_model, d_model) if query_selection else None
        pathway = ColourPathway(colour_pathway, visual_channels, stride) if colour_pathway else None
        scene_head = colour_head = word_head = None
        if scene_loss:
            # With a colour pathway the grey visual map classifies kind and size, the pooled colours colour.
            grey_classes = self.scene_counts[1:] if colour_pathway else self.scene_counts
            scene_head = nn.Linear(visual_channels, sum(grey_classes))
            if colour_pathway:
                colour_head = nn.Linear(colour_pathway, counts["color"])
        if attribute_prior:
            word_head = nn.Linear(visual_channels, counts["color"] + 1 + counts["kind"] + 1)
        self.cell_scorer = cell_scorer  # d_model -> 1: how likely a memory cell holds the target's centre
        self.query_projection = query_projection  # d_model -> d_model, on the memory + position of a cell
        self.scene_head = scene_head
        self.colour_pathway = pathway
        self.colour_head = colour_head
        self.word_head = word_head  # sentence -> which colour and kind the expression names (or none)

    # -- hooks the model calls -------------------------------------------------------------------------

    def backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        """What the backbone sees: the image, or its grey version with a colour pathway."""
        return images if self.colour_pathway is None else grey(images)

    def visual_map(self, visual: torch.Tensor, images: torch.Tensor, pad_mask: torch.Tensor,
                   sentence: torch.Tensor) -> tuple[torch.Tensor, AidNotes]:
        """The visual map (B, Cy, h, w) the expression gates (plus the pathway's colours), and the notes."""
        colours = None if self.colour_pathway is None else self.colour_pathway.pooled(images, pad_mask)
        notes = AidNotes(visual, colours)
        if self.word_head is not None:
            word_logits = self.word_head(sentence)
            counts = (self.scene_counts[0], self.scene_counts[1])
            prior = attribute_match(word_logits.detach(), self.scene_cells(notes).detach(), counts)
            notes = notes._replace(word_logits=word_logits, cell_prior=prior)
        if colours is not None:
            visual = visual + self.colour_pathway.project(colours)
        return visual, notes

    def cell_logits(self, memory: Any) -> torch.Tensor:
        """Target-cell scores (B, S) of the memory cells (plus the attribute prior), -inf on padding."""
        assert self.cell_scorer is not None
        scores = at_least_float32(self.cell_scorer(memory.features)[..., 0])
        if memory.notes.cell_prior is not None:
            scores = scores + memory.notes.cell_prior
        return scores.masked_fill(memory.padding, -math.inf)

    def first_input(self, start: torch.Tensor, memory: Any, outputs: Mapping[str, torch.Tensor] | None = None
                    ) -> torch.Tensor:
        """The first decoder input (B, 1, D): ``start`` plus, with query selection, the projected memory and
        position of the selected cell: ``outputs["target_cells"]`` when given (teacher forcing), else the
        best-scoring cell of each sample."""
        if self.query_projection is None:
            return start
        selected = (outputs or {}).get("target_cells")
        if selected is None:
            selected = self.cell_logits(memory).argmax(dim=1)
        features = memory.features
        index = selected[:, None, None].expand(-1, 1, features.shape[2])  # (B, 1, D)
        return start + self.query_projection(features.gather(1, index) + memory.position.gather(1, index))

    # -- training ---------------------------------------------------------------------------------------

    @property
    def forward_keys(self) -> tuple[str, ...]:
        """The batch entries `outputs` reads (the model's forward takes them as ``aid_inputs``)."""
        return (("target_box",) if self.cell_scorer is not None else ()) + \
            (("scene_centres",) if self.scene_head is not None else ())

    def outputs(self, memory: Any, image_width: int, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The aids' part of a teacher-forced forward pass.

        ``cell_logits`` (B, S) with a cell scorer; given ``target_box`` float (B, 4) (the target's tight box in
        pixels of the input, ``image_width`` wide), also ``target_cells`` (B,), which query selection
        teacher-forces; given ``scene_centres`` (B, K, 2) with a scene head, ``scene_logits`` (B, K, C)
        (`scene_logits`); with the attribute prior, ``word_logits``.
        """
        outputs: dict[str, torch.Tensor] = {}
        if self.scene_head is not None and inputs.get("scene_centres") is not None:
            outputs["scene_logits"] = self.scene_logits(memory.notes, inputs["scene_centres"])
        if memory.notes.word_logits is not None:
            outputs["word_logits"] = memory.notes.word_logits
        if self.cell_scorer is not None:
            outputs["cell_logits"] = self.cell_logits(memory)
            if inputs.get("target_box") is not None:
                outputs["target_cells"] = target_cells(inputs["target_box"], self.stride,
                                                       math.ceil(image_width / self.stride))
        return outputs

    def scene_cells(self, notes: AidNotes) -> torch.Tensor:
        """Colour, kind and size logits (B, S, C) of an object centred in each cell (needs the scene loss)."""
        assert self.scene_head is not None
        logits = self.scene_head(notes.visual.flatten(2).transpose(1, 2))
        if self.colour_head is None:
            return logits
        return torch.cat([self.colour_head(notes.colours.flatten(2).transpose(1, 2)), logits], dim=-1)

    def scene_logits(self, notes: AidNotes, scene_centres: torch.Tensor) -> torch.Tensor:
        """Colour, kind and size logits (B, K, C) of the objects centred at ``scene_centres`` float (B, K, 2)
        x, y in pixels of the input, read at the cell holding each centre."""
        height, width = notes.visual.shape[-2:]
        logits = self.scene_cells(notes)  # (B, S, C)
        cells = cell_index(scene_centres[..., 0], scene_centres[..., 1], self.stride, width, height)
        return logits.gather(1, cells[..., None].expand(-1, -1, logits.shape[-1]))


def build_aids(config: Any, d_model: int, visual_channels: int,
               scene_classes: Mapping[str, int] | None) -> TrainingAids | None:
    """The aids a ModelConfig asks for, or None when every one is off (the paper's model)."""
    options = dict(target_cell_loss=config.target_cell_loss, query_selection=config.query_selection,
                   scene_loss=config.scene_loss, colour_pathway=config.colour_pathway,
                   attribute_prior=config.attribute_prior)
    if not any(options.values()):
        return None
    return TrainingAids(d_model, visual_channels, config.memory_stride, scene_classes=scene_classes, **options)

