"""Label-smoothed cross-entropy over coordinate-token sequences, with SeqTR's per-token weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqtr_lib.sequence import eos_token

NEG_FACTOR = 0.1  # smoothing: 1 - NEG_FACTOR on the true token, NEG_FACTOR / V on every other one
BOX_X1_WEIGHT = 1.5  # weight of the first box coordinate (x1); the other box targets weigh 1
MASK_EOS_WEIGHT = 0.1  # weight of mask targets that are EOS (missing vertices and the final EOS)


def label_smooth_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, neg_factor: float = NEG_FACTOR
) -> torch.Tensor:
    """Weighted label-smoothed cross-entropy, summed and divided by batch x tokens.

    logits: (B, T, V); targets: int64 (B, T) in [0, V); weights: (B, T). The soft target is
    ``1 - neg_factor`` on the true token and ``neg_factor / V`` on each other token; the loss of a
    token is ``-sum(target * log_softmax(logits))``. Computed in float32. Returns a scalar.
    """
    batch, length, classes = logits.shape
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    true = log_probs.gather(-1, targets[..., None])[..., 0]  # (B, T)
    others = log_probs.sum(dim=-1) - true
    per_token = -((1.0 - neg_factor) * true + neg_factor / classes * others)
    return (per_token * weights.float()).sum() / (batch * length)


def target_cell_loss(cell_logits: torch.Tensor, target_cells: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of picking each sample's target cell among its memory cells.

    cell_logits: (B, S), -inf on padding; target_cells: int64 (B,). The one-stage grounding objective
    (FAOA, Yang et al. 2019) applied to SeqTR's memory. Computed in float32. Returns a scalar.
    """
    return F.cross_entropy(cell_logits.float(), target_cells)


def box_targets(box_tokens: torch.Tensor, num_bin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Box tokens (B, 4) -> targets [x1, y1, x2, y2, EOS] (B, 5) and weights (B, 5), 1.5 on x1."""
    eos = torch.full_like(box_tokens[:, :1], eos_token(num_bin))
    targets = torch.cat([box_tokens, eos], dim=1)
    weights = torch.ones(targets.shape, device=targets.device)
    weights[:, 0] = BOX_X1_WEIGHT
    return targets, weights


def mask_targets(mask_tokens: torch.Tensor, num_bin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask tokens (B, 2N) -> targets [x1, y1, ..., xN, yN, EOS] (B, 2N + 1) and weights, 1/10 on EOS."""
    eos = torch.full_like(mask_tokens[:, :1], eos_token(num_bin))
    targets = torch.cat([mask_tokens, eos], dim=1)
    weights = torch.ones(targets.shape, device=targets.device)
    weights[targets == eos_token(num_bin)] = MASK_EOS_WEIGHT
    return targets, weights


def sequence_loss(
    outputs: dict[str, torch.Tensor],
    box_tokens: torch.Tensor | None,
    mask_tokens: torch.Tensor | None,
    num_bin: int,
    target_cell_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Loss of a teacher-forced forward pass (`SeqTR.forward` output).

    outputs: ``box_logits`` (B, 5, V) and/or ``mask_logits`` (B, 2N + 1, V). Returns ``loss`` and,
    per part present, ``loss_box`` / ``loss_mask``. Each part is averaged over its own tokens, and
    multi-task training sums them. (The released multi-task code averages one loss over the joint
    sequence, without the mask EOS weight, and then never backpropagates it.)

    ``target_cell_weight`` > 0 (a departure, off in the paper) adds ``loss_cell``: that weight times
    `target_cell_loss` of the outputs' ``cell_logits`` and ``target_cells``.
    """
    losses: dict[str, torch.Tensor] = {}
    if "box_logits" in outputs:
        if box_tokens is None:
            raise ValueError("the outputs hold box_logits but box_tokens is None; pass the batch's box_tokens")
        losses["loss_box"] = label_smooth_cross_entropy(outputs["box_logits"], *box_targets(box_tokens, num_bin))
    if "mask_logits" in outputs:
        if mask_tokens is None:
            raise ValueError("the outputs hold mask_logits but mask_tokens is None; pass the batch's mask_tokens")
        losses["loss_mask"] = label_smooth_cross_entropy(outputs["mask_logits"], *mask_targets(mask_tokens, num_bin))
    if not losses:
        raise ValueError(f"outputs have neither box_logits nor mask_logits (keys: {sorted(outputs)})")
    if target_cell_weight > 0:
        if "cell_logits" not in outputs or "target_cells" not in outputs:
            raise ValueError("target_cell_weight > 0 needs outputs from a model with a cell scorer, called with "
                             "target_box (keys 'cell_logits' and 'target_cells')")
        losses["loss_cell"] = target_cell_weight * target_cell_loss(outputs["cell_logits"], outputs["target_cells"])
    losses["loss"] = sum(losses.values())  # type: ignore[assignment]
    return losses
