"""Label-smoothed cross-entropy over coordinate-token sequences, with SeqTR's per-token weights; and the two
classification losses the training aids (`seqtr_lib.model.aids`) and the backbone's pre-training use.

Every term is a sum divided by a count (samples; labelled objects per attribute). Under DDP the count is the
processes' share of the global batch's (`seqtr_lib.distributed.count_share`), so that the mean of the
processes' losses, which DDP's gradient averaging takes, is the loss of the global batch whatever the split."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from seqtr_lib.codec import TokenLayout

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


def sequence_loss(outputs: Mapping[str, torch.Tensor], tokens: Mapping[str, torch.Tensor],
                  layout: TokenLayout, samples: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
    """The paper's loss of a teacher-forced forward pass (`SeqTR.forward` output).

    outputs: ``<part>_logits`` for every part of ``layout`` (``box_logits`` (B, 5, V), ``mask_logits``
    (B, 2N + 1, V)); tokens: ``<part>_tokens`` for the same parts (a batch from the loader will do), whose
    targets and weights ``layout.targets`` makes. Returns ``loss`` and ``loss_<part>`` per part. Each part
    is averaged over its own tokens, and multi-task training sums them. (The released multi-task code
    averages one loss over the joint sequence, without the mask EOS weight, and then never backpropagates it.)
    ``samples`` replaces the batch size in the divisor (under DDP, its share of the global batch).
    The training aids add their own terms (`seqtr_lib.model.aids.TrainingAids.losses`).
    """
    losses: dict[str, torch.Tensor] = {}
    for part in layout.parts:
        if f"{part}_logits" not in outputs:
            raise ValueError(f"task {layout.task!r} needs {part}_logits in the outputs (keys: {sorted(outputs)})")
        if tokens.get(f"{part}_tokens") is None:
            raise ValueError(f"the outputs hold {part}_logits but there are no {part}_tokens; pass the batch's "
                             f"{part}_tokens")
        losses[f"loss_{part}"] = label_smooth_cross_entropy(outputs[f"{part}_logits"],
                                                            *layout.targets(part, tokens[f"{part}_tokens"]),
                                                            samples=samples)
    losses["loss"] = sum(losses.values())  # type: ignore[assignment]
    return losses
