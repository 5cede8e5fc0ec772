"""The training objective in one place: `Criterion` owns every loss term, its weight and its divisor.

Its table of weights (`LossWeights`, plain data) holds one row per term, and the sequence term's token weights:

    term        logged as            what                                              divided by
    sequence    loss_box, loss_mask  the paper's label-smoothed cross-entropy of each  samples x the part's
                                     part of the sequence, token weights box_x1 and    target length
                                     mask_eos (`label_smooth_cross_entropy`)
                loss_answer          a generalised answer's, the same; token weights   the answers' tokens
                                     box_x1 and separator                              (padding left out)
    cell        loss_cell            picking the memory cell of the target's centre    samples
                                     (`target_cell_loss`, a training aid)
    scene       loss_scene           every scene object's colour, kind and size        labelled objects per
                                     (`scene_loss`, a training aid)                    attribute
    words       loss_words           the colour and kind the expression names (the     labelled expressions
                                     attribute prior's word head, `scene_loss`)        per attribute

The paper's objective is the sequence term alone (the defaults); a term of weight 0 is neither computed nor
logged. Every term is a sum divided by a count (`Criterion.counts`). Under DDP the counts are the processes'
shares of the global batch's (`seqtr_lib.distributed.count_shares`, one all-reduce), so that the mean of the
processes' losses, which DDP's gradient averaging takes, is the loss of the global batch whatever the split.

A generalised answer (issue 36: zero or more boxes or contours, separators between contours, then EOS) is the
sequence term of a generalised model, logged as ``loss_answer`` and divided by the answers' tokens without
their padding (``answer_weights``); its separator's weight is the token row ``separator``
(`Criterion.token_weights`).
(The backbone's pre-training has its own objective, `seqtr_lib.pretrain.detection_loss`.)"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from seqtr_lib.codec import TokenLayout

if TYPE_CHECKING:
    from seqtr_lib.config import ModelConfig

NEG_FACTOR = 0.1  # smoothing: 1 - NEG_FACTOR on the true token, NEG_FACTOR / V on every other one


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """bf16 and fp16 (autocast) logits in float32; float32 and float64 as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def label_smooth_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, neg_factor: float = NEG_FACTOR,
    samples: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Weighted label-smoothed cross-entropy, summed and divided by batch x tokens.

    ``samples`` replaces the batch size in the divisor (under DDP: `seqtr_lib.distributed.count_share` of it,
    so that the processes' mean is the global batch's mean even when their batches differ in size).

    logits: (B, T, V); targets: int64 (B, T) in [0, V); weights: (B, T). The soft target is
    ``1 - neg_factor`` on the true token and ``neg_factor / V`` on each other token; the loss of a
    token is ``-sum(target * log_softmax(logits))``. Computed in float32 (float64 for float64 logits).
    Returns a scalar.
    """
    batch, length, classes = logits.shape
    log_probs = F.log_softmax(at_least_float32(logits), dim=-1)  # (B, T, V)
    true = log_probs.gather(-1, targets[..., None])[..., 0]  # (B, T)
    others = log_probs.sum(dim=-1) - true
    per_token = -((1.0 - neg_factor) * true + neg_factor / classes * others)
    return (per_token * weights.to(per_token.dtype)).sum() / ((batch if samples is None else samples) * length)


def target_cell_loss(cell_logits: torch.Tensor, target_cells: torch.Tensor,
                     samples: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean cross-entropy of picking each sample's target cell among its memory cells (the sum divided by
    ``samples``, default the batch size).

    cell_logits: (B, S), -inf on padding; target_cells: int64 (B,). The one-stage grounding objective
    (FAOA, Yang et al. 2019) applied to SeqTR's memory. Computed in float32 (float64 for float64 logits).
    Returns a scalar.
    """
    total = F.cross_entropy(at_least_float32(cell_logits), target_cells, reduction="sum")
    return total / (cell_logits.shape[0] if samples is None else samples)


def labelled_counts(scene_labels: torch.Tensor) -> torch.Tensor:
    """Labelled objects per attribute (A,) of scene labels (B, K, A) (-1 = padded): `scene_loss`'s divisors."""
    return (scene_labels != -1).flatten(0, -2).sum(dim=0)


def scene_loss(scene_logits: torch.Tensor, scene_labels: torch.Tensor, class_counts: tuple[int, ...],
               labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the attributes of the cross-entropy of classifying every labelled scene object.

    scene_logits: (B, K, sum(class_counts)), the attributes' logits side by side; scene_labels: int64
    (B, K, A), A = len(class_counts), -1 where padded (ignored). Per attribute the summed cross-entropy is
    divided by ``labelled[k]`` (default `labelled_counts` of these labels; under DDP the processes' share of
    the global count, `seqtr_lib.distributed.count_share`: a mean per process would weigh an object by how
    many objects its process's batch holds). An attribute without any labelled object contributes 0.
    Computed in float32 (float64 for float64 logits). Returns a scalar.
    """
    logits = at_least_float32(scene_logits).flatten(0, 1).split(list(class_counts), dim=-1)
    labels = scene_labels.flatten(0, 1)
    labelled = labelled_counts(scene_labels) if labelled is None else labelled
    sums = torch.stack([F.cross_entropy(part, labels[:, k], ignore_index=-1, reduction="sum")
                        for k, part in enumerate(logits)])
    return (sums / labelled.to(sums.dtype).clamp_min(1)).mean()


@dataclass(frozen=True)
class LossWeights:
    """The criterion's table: a weight per term (0: left out, with its gradient), then the sequence term's token
    weights (a target that no row names weighs 1). The defaults are the paper's objective."""

    sequence: float = 1.0  # loss_box and loss_mask
    cell: float = 0.0  # loss_cell (model.target_cell_loss)
    scene: float = 0.0  # loss_scene (model.scene_loss)
    words: float = 0.0  # loss_words (model.attribute_prior)
    box_x1: float = 1.5  # a box's first coordinate target (each box's, in a generalised answer)
    mask_eos: float = 0.1  # a mask's EOS targets (missing contour points and the final EOS; paper layouts only)
    separator: float = 1.0  # the separators between a generalised answer's contours

    @classmethod
    def from_config(cls, config: ModelConfig) -> LossWeights:
        """The params' weights: the paper's sequence term and the training aids' ``model.*`` weights."""
        return cls(cell=config.target_cell_loss, scene=config.scene_loss, words=config.attribute_prior)


@dataclass(frozen=True)
class Criterion:
    """The training objective of a model: each term of ``weights`` computed by its method, weighted and summed.

    layout: the model's token layout; scene_classes: the class counts of colour, kind and size, in the scene
    logits' order (`seqtr_lib.data.refer.scene_classes`), needed by the scene and word terms.
    """

    layout: TokenLayout
    weights: LossWeights = field(default_factory=LossWeights)
    scene_classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if (self.weights.scene or self.weights.words) and len(self.scene_classes) != 3:
            raise ValueError("the scene and word losses need the dataset's scene classes (colour, kind, size)")

    @classmethod
    def from_config(cls, config: ModelConfig, scene_classes: Mapping[str, int] | None = None,
                    layout: TokenLayout | None = None) -> Criterion:
        """The criterion of a params file's model; ``scene_classes`` as `seqtr_lib.data.refer.scene_classes`;
        ``layout`` the model's (default: the paper's layout of ``config``; a generalised model's holds the
        data's caps, `TokenLayout.from_experiment`)."""
        layout = layout or TokenLayout(config.task, config.num_bin, config.num_ray)
        return cls(layout, LossWeights.from_config(config), tuple((scene_classes or {}).values()))

    def counts(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> dict[str, Any]:
        """This process's counts that the terms divide by: ``samples`` (the batch size), and with their terms
        on and their labels in the batch, ``scene`` (labelled objects per attribute (3,)) and ``words``
        (labelled expressions per attribute, colour and kind (2,)); for a generalised answer ``answer_tokens``,
        the answers' tokens without their padding."""
        if self.layout.generalised:
            if "answer_logits" not in outputs or batch.get("answer_weights") is None:
                raise ValueError("a generalised model's loss needs answer_logits (a forward given answer_tokens) "
                                 "and the batch's answer_tokens and answer_weights (data.max_objects > 0)")
            counts: dict[str, Any] = {"samples": outputs["answer_logits"].shape[0],
                                      "answer_tokens": (batch["answer_weights"] > 0).sum()}
        else:
            counts = {"samples": outputs[f"{self.layout.parts[0]}_logits"].shape[0]}
        if self.weights.scene and batch.get("scene_labels") is not None:
            counts["scene"] = labelled_counts(batch["scene_labels"])
        if self.weights.words and batch.get("named_attributes") is not None:
            counts["words"] = labelled_counts(batch["named_attributes"][:, None])
        return counts

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                 count_shares: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = None
                 ) -> dict[str, torch.Tensor]:
        """The weighted terms of a teacher-forced forward pass (`SeqTR.forward`'s outputs; ``batch``: a loader's
        batch, or any mapping with the ``<part>_tokens`` and the aids' labels), and their sum ``loss``.

        ``count_shares`` turns `counts` into the divisors at once (`seqtr_lib.distributed.count_shares` under
        DDP: one all-reduce per step); default: the counts themselves."""
        counts = self.counts(outputs, batch)
        divisors = counts if count_shares is None else {name: share.float()
                                                        for name, share in count_shares(counts).items()}
        weights, terms = self.weights, {}
        if weights.sequence and self.layout.generalised:
            terms["loss_answer"] = weights.sequence * self.answer_term(outputs, batch, divisors)
        elif weights.sequence:
            for part in self.layout.parts:
                terms[f"loss_{part}"] = weights.sequence * self.sequence_term(part, outputs, batch, divisors)
        if weights.cell:
            terms["loss_cell"] = weights.cell * self.cell_term(outputs, divisors)
        if weights.scene:
            terms["loss_scene"] = weights.scene * self.scene_term(outputs, batch, divisors)
        if weights.words:
            terms["loss_words"] = weights.words * self.words_term(outputs, batch, divisors)
        if not terms:
            raise ValueError("every loss weight is 0: the criterion has no term to train")
        return {**terms, "loss": sum(terms.values())}  # type: ignore[dict-item]

    def token_weights(self, part: str, targets: torch.Tensor) -> torch.Tensor:
        """The weight (B, T) of each of a part's targets (B, T) (`TokenLayout.targets`, or a generalised
        answer) in the sequence term. In a generalised answer each box's x1 weighs ``box_x1``, each separator
        ``separator``, and the EOS 1: it says how many objects there are (``mask_eos`` weighs the paper's
        missing points)."""
        weights = torch.ones(targets.shape, device=targets.device)
        if self.layout.generalised:
            if part == "box":  # every fourth position starts a box, unless it holds the EOS
                starts = torch.zeros_like(weights, dtype=torch.bool)
                starts[:, ::4] = True
                weights[starts & (targets < self.layout.num_bin)] = self.weights.box_x1
            weights[targets == self.layout.separator] = self.weights.separator
        elif part == "box":
            weights[:, 0] = self.weights.box_x1
        else:
            weights[targets == self.layout.eos] = self.weights.mask_eos
        return weights

    def sequence_term(self, part: str, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                      divisors: Mapping[str, Any]) -> torch.Tensor:
        """The paper's loss of one part: its ``<part>_logits`` (B, T, V) against the batch's ``<part>_tokens``
        followed by EOS, averaged over the part's own tokens. (The released multi-task code averages one loss
        over the joint sequence, without the mask EOS weight, and then never backpropagates it.)"""
        if f"{part}_logits" not in outputs:
            raise ValueError(f"task {self.layout.task!r} needs {part}_logits in the outputs (keys: {sorted(outputs)})")
        if batch.get(f"{part}_tokens") is None:
            raise ValueError(f"the outputs hold {part}_logits but there are no {part}_tokens; pass the batch's "
                             f"{part}_tokens")
        targets = self.layout.targets(batch[f"{part}_tokens"])
        return label_smooth_cross_entropy(outputs[f"{part}_logits"], targets, self.token_weights(part, targets),
                                          samples=divisors["samples"])

    def answer_term(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                    divisors: Mapping[str, Any]) -> torch.Tensor:
        """A generalised answer's loss (``loss_answer``): its ``answer_logits`` (B, T, V) against the batch's
        ``answer_tokens`` (B, T) (the answer, then EOS), each token weighted as `token_weights` and by
        ``answer_weights`` (0 on the padding), divided by the answers' tokens (padding not counted), so that
        an answer's token weighs the same whatever the batch's longest answer."""
        targets = batch["answer_tokens"]
        weights = self.token_weights(self.layout.task, targets) * batch["answer_weights"].to(targets.device)
        # label_smooth_cross_entropy divides by samples x length: samples := tokens / length gives tokens.
        length = targets.shape[1]
        return label_smooth_cross_entropy(outputs["answer_logits"], targets, weights,
                                          samples=divisors["answer_tokens"] / length)

    def cell_term(self, outputs: Mapping[str, torch.Tensor], divisors: Mapping[str, Any]) -> torch.Tensor:
        """Picking the target's cell: the aids' ``cell_logits`` against ``target_cells``."""
        if "target_cells" not in outputs:
            raise ValueError("the target-cell loss needs outputs from a forward given the batch's target_box")
        return target_cell_loss(outputs["cell_logits"], outputs["target_cells"], divisors["samples"])

    def scene_term(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                   divisors: Mapping[str, Any]) -> torch.Tensor:
        """Every labelled scene object's colour, kind and size: the aids' ``scene_logits`` against the batch's
        ``scene_labels``."""
        if "scene_logits" not in outputs or batch.get("scene_labels") is None:
            raise ValueError("the scene loss needs scene_logits (a forward given the batch's scene_centres) "
                             "and the batch's scene_labels")
        return scene_loss(outputs["scene_logits"], batch["scene_labels"], self.scene_classes, divisors["scene"])

    def words_term(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                   divisors: Mapping[str, Any]) -> torch.Tensor:
        """The colour and kind the expression names (each, or none of its class): the aids' ``word_logits``
        against the batch's ``named_attributes``."""
        if batch.get("named_attributes") is None:
            raise ValueError("the attribute prior's word loss needs the batch's named_attributes")
        classes = (self.scene_classes[0] + 1, self.scene_classes[1] + 1)
        return scene_loss(outputs["word_logits"][:, None], batch["named_attributes"][:, None], classes,
                          divisors["words"])
