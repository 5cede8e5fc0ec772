"""Label-smoothed cross-entropy over coordinate-token sequences, with SeqTR's per-token weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from seqtr_lib.codec import TokenLayout

NEG_FACTOR = 0.1  # smoothing: 1 - NEG_FACTOR on the true token, NEG_FACTOR / V on every other one


def label_smooth_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, neg_factor: float = NEG_FACTOR,
    samples: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Weighted label-smoothed cross-entropy, summed and divided by batch x tokens.

    ``samples`` replaces the batch size in the divisor (under DDP: `seqtr_lib.distributed.count_share` of it,
    so that the processes' mean is the global batch's mean even when their batches differ in size).

    logits: (B, T, V); targets: int64 (B, T) in [0, V); weights: (B, T). The soft target is
    ``1 - neg_factor`` on the true token and ``neg_factor / V`` on each other token; the loss of a
    token is ``-sum(target * log_softmax(logits))``. Computed in float32. Returns a scalar.
    """
    batch, length, classes = logits.shape
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    true = log_probs.gather(-1, targets[..., None])[..., 0]  # (B, T)
    others = log_probs.sum(dim=-1) - true
    per_token = -((1.0 - neg_factor) * true + neg_factor / classes * others)
    return (per_token * weights.float()).sum() / ((batch if samples is None else samples) * length)


def target_cell_loss(cell_logits: torch.Tensor, target_cells: torch.Tensor,
                     samples: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean cross-entropy of picking each sample's target cell among its memory cells (the sum divided by
    ``samples``, default the batch size).

    cell_logits: (B, S), -inf on padding; target_cells: int64 (B,). The one-stage grounding objective
    (FAOA, Yang et al. 2019) applied to SeqTR's memory. Computed in float32. Returns a scalar.
    """
    total = F.cross_entropy(cell_logits.float(), target_cells, reduction="sum")
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
    Computed in float32. Returns a scalar.
    """
    logits = scene_logits.float().flatten(0, 1).split(list(class_counts), dim=-1)
    labels = scene_labels.flatten(0, 1)
    labelled = labelled_counts(scene_labels) if labelled is None else labelled
    sums = torch.stack([F.cross_entropy(part, labels[:, k], ignore_index=-1, reduction="sum")
                        for k, part in enumerate(logits)])
    return (sums / labelled.to(sums.dtype).clamp_min(1)).mean()


def sequence_loss(
    outputs: dict[str, torch.Tensor],
    tokens: Mapping[str, torch.Tensor],
    layout: TokenLayout,
    target_cell_weight: float = 0.0,
    scene_weight: float = 0.0,
    word_weight: float = 0.0,
    count_share: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Loss of a teacher-forced forward pass (`SeqTR.forward` output).

    outputs: ``<part>_logits`` for every part of ``layout`` (``box_logits`` (B, 5, V), ``mask_logits``
    (B, 2N + 1, V)); tokens: ``<part>_tokens`` for the same parts (a batch from the loader will do), whose
    targets and weights ``layout.targets`` makes. Returns ``loss`` and ``loss_<part>`` per part. Each part
    is averaged over its own tokens, and multi-task training sums them. (The released multi-task code
    averages one loss over the joint sequence, without the mask EOS weight, and then never backpropagates it.)

    ``target_cell_weight`` > 0 (a departure, off in the paper) adds ``loss_cell``: that weight times
    `target_cell_loss` of the outputs' ``cell_logits`` and ``target_cells``. ``scene_weight`` > 0 (a
    departure for the synthetic set) adds ``loss_scene``: that weight times `scene_loss` of the outputs'
    ``scene_logits`` and the tokens' ``scene_labels``, with the classes of
    `seqtr_lib.data.synthetic.SCENE_ATTRIBUTES`. ``word_weight`` > 0 (model.attribute_prior) adds
    ``loss_words``: that weight times the mean cross-entropy of the outputs' ``word_logits`` (colours + 1,
    then kinds + 1 classes) against the tokens' ``named_attributes``.

    Every term is a sum divided by a count (samples; labelled objects per attribute). ``count_share`` maps
    this process's counts (a float64 vector) to the divisors: under DDP `seqtr_lib.distributed.count_share`
    (the global counts over the number of processes), so that the mean of the processes' losses, which DDP's
    gradient averaging takes, is the loss of the global batch whatever the split. Default: the counts.
    """
    losses: dict[str, torch.Tensor] = {}
    divisors = _divisors(outputs, tokens, layout, scene_weight, word_weight, count_share)
    for part in layout.parts:
        if f"{part}_logits" not in outputs:
            raise ValueError(f"task {layout.task!r} needs {part}_logits in the outputs (keys: {sorted(outputs)})")
        if tokens.get(f"{part}_tokens") is None:
            raise ValueError(f"the outputs hold {part}_logits but there are no {part}_tokens; pass the batch's "
                             f"{part}_tokens")
        losses[f"loss_{part}"] = label_smooth_cross_entropy(outputs[f"{part}_logits"],
                                                            *layout.targets(part, tokens[f"{part}_tokens"]),
                                                            samples=divisors["samples"])
    if target_cell_weight > 0:
        if "cell_logits" not in outputs or "target_cells" not in outputs:
            raise ValueError("target_cell_weight > 0 needs outputs from a model with a cell scorer, called with "
                             "target_box (keys 'cell_logits' and 'target_cells')")
        losses["loss_cell"] = target_cell_weight * target_cell_loss(outputs["cell_logits"], outputs["target_cells"],
                                                                        divisors["samples"])
    if scene_weight > 0:
        if "scene_logits" not in outputs or tokens.get("scene_labels") is None:
            raise ValueError("scene_weight > 0 needs scene_logits (a model with a scene head, called with the "
                             "batch's scene_centres) and the batch's scene_labels")
        from seqtr_lib.data.synthetic import SCENE_ATTRIBUTES

        counts = tuple(len(classes) for classes in SCENE_ATTRIBUTES.values())
        losses["loss_scene"] = scene_weight * scene_loss(outputs["scene_logits"], tokens["scene_labels"], counts,
                                                         divisors["scene"])
    if word_weight > 0:
        if "word_logits" not in outputs or tokens.get("named_attributes") is None:
            raise ValueError("word_weight > 0 needs word_logits (a model with the attribute prior) and the batch's "
                             "named_attributes")
        from seqtr_lib.data.synthetic import SCENE_ATTRIBUTES

        counts = (len(SCENE_ATTRIBUTES["color"]) + 1, len(SCENE_ATTRIBUTES["kind"]) + 1)
        losses["loss_words"] = word_weight * scene_loss(outputs["word_logits"][:, None], tokens["named_attributes"][:, None],
                                                        counts, divisors["words"])
    losses["loss"] = sum(losses.values())  # type: ignore[assignment]
    return losses


def _divisors(outputs: dict[str, torch.Tensor], tokens: Mapping[str, torch.Tensor], layout: TokenLayout,
              scene_weight: float, word_weight: float,
              count_share: Callable[[torch.Tensor], torch.Tensor] | None) -> dict[str, torch.Tensor | None]:
    """`sequence_loss`'s divisors: ``samples`` (scalar), ``scene`` and ``words`` (per attribute, or None when
    the term is off), from one call of ``count_share`` on this process's counts (one all-reduce under DDP)."""
    logits = outputs.get(f"{layout.parts[0]}_logits")
    if count_share is None or logits is None:
        return {"samples": None, "scene": None, "words": None}
    parts: dict[str, torch.Tensor] = {"samples": torch.tensor([logits.shape[0]], device=logits.device)}
    if scene_weight > 0 and tokens.get("scene_labels") is not None:
        parts["scene"] = labelled_counts(tokens["scene_labels"])
    if word_weight > 0 and tokens.get("named_attributes") is not None:
        parts["words"] = labelled_counts(tokens["named_attributes"][:, None])
    shared = count_share(torch.cat([v.to(torch.float64) for v in parts.values()])).split(
        [v.numel() for v in parts.values()])
    divisors: dict[str, torch.Tensor | None] = {"scene": None, "words": None}
    divisors.update({name: value.float() for name, value in zip(parts, shared)})
    divisors["samples"] = divisors["samples"][0]
    return divisors
