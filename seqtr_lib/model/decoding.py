"""Autoregressive decoding of a SeqTR: greedy or nucleus sampling, with a key/value cache or without.

Each step feeds the decoder the embedding of the token just emitted and reads the next token's logits.
With the cache, a step runs the decoder on the new input only; without it (the reference's way) it re-runs
the decoder over the whole prefix: the same tokens, kept for tests and benchmarks. `graph_decoding.py` is
the fixed-shape greedy variant that a GPU replays from CUDA graphs.

    memory = model.encode(images, pad_mask, expression_ids)
    results = generate_from_memory(model, memory)          # what model.generate(...) returns
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seqtr_lib.model.transformer import DecoderCache

# The model is a `seqtr_lib.model.seqtr.SeqTR` and the memory its `Memory`; that module calls this one, so
# they are named here only in words (an import back would make a circle).

STRATEGIES = ("greedy", "top_p")


class Decoding:
    """The decoder inputs of one autoregressive decode, fed with a key/value cache or recomputed.

    With the cache, each call of `next_logits` runs the decoder on the inputs appended since the last
    call only. Without it, it re-runs the decoder over every input so far. With ``record_attention``,
    ``last_attention`` holds the cross-attention (B, L, nh, S) of the position whose logits the last
    `next_logits` returned.
    """

    def __init__(self, model: nn.Module, memory: Any, first: torch.Tensor, use_cache: bool,
                 record_attention: bool = False) -> None:
        self.model = model
        self.memory = memory
        self.cache = DecoderCache() if use_cache else None
        self.inputs = first  # (B, T, D): not yet cached (cache) or all so far (recompute)
        self.record_attention = record_attention
        self.last_attention: torch.Tensor | None = None

    def append(self, embeddings: torch.Tensor) -> None:
        """Add input embeddings (B, T, D) at the next positions."""
        self.inputs = torch.cat([self.inputs, embeddings], dim=1)

    def next_logits(self) -> torch.Tensor:
        """Logits (B, V) for the position after the last input."""
        memory = self.memory
        weights: list[torch.Tensor] | None = [] if self.record_attention else None
        hidden = self.model.decoder(self.inputs, memory.features, memory.position, memory.padding, self.cache,
                                    weights)
        if weights is not None:
            self.last_attention = torch.stack([layer[:, :, -1] for layer in weights], dim=1)
        if self.cache is not None:
            self.inputs = self.inputs[:, :0]
        return self.model.predictor(hidden[:, -1])


def top_p_sample(probs: torch.Tensor, top_p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Nucleus sampling: draw from the most likely tokens whose mass reaches ``top_p`` (B, V) -> (B,).

    As the reference: tokens sorted by probability are kept while the mass before them is at most
    ``top_p`` (the most likely token always stays); the kept probabilities are renormalised.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    keep[:, 1:] = cumulative[:, :-1] <= top_p
    choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)  # (B, 1) index into order
    return order.gather(1, choice)[:, 0]


@torch.no_grad()
def generate_from_memory(
    model: nn.Module,
    memory: Any,
    task: str | None = None,
    strategy: str = "greedy",
    top_p: float = 0.9,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    return_attention: bool = False,
) -> dict[str, torch.Tensor]:
    """Decode an encoded batch.

    task: None (the model's task), or for a multi-task model "box" (stop after the box) or "mask" / "multi"
    (box, then mask). strategy: "greedy" or "top_p" (nucleus sampling with ``top_p``, drawing from
    ``generator``, which must be on the model's device). use_cache=False re-runs the decoder over the whole
    prefix at every step, as the reference; it gives the same result.

    A generalised model (``model.layout.generalised``) decodes one answer of zero or more objects (box
    or contour answers, `seqtr_lib.codec`) until its EOS: ``answer_tokens`` int64 (B, layout.answer_length),
    EOS after the answer's, with ``answer_scores`` (and ``answer_attention``). Only answers the codec can
    read are emitted (`answer_grammar`): EOS first is the answer of no object.

    Returns, per decoded part: ``box_tokens`` int64 (B, 4) in [0, num_bin - 1] (the EOS logit is excluded)
    with ``box_scores`` float (B, 4); ``mask_tokens`` int64 (B, 2N) with ``mask_scores``. A score is the
    softmax probability of the emitted token. Mask decoding stops at EOS: after a sequence's first EOS
    every token is EOS with score 0, and the loop ends once all have stopped. With ``return_attention``,
    also ``box_attention`` / ``mask_attention`` float (B, L, nh, steps, S): the cross-attention of the
    query that emitted each token (zero after a sequence's EOS).
    """
    decoding = Decoding(model, memory, model.start(memory), use_cache, return_attention)
    return decode(model, decoding, task, strategy, top_p, generator)


def decode(model: Any, decoding: Any, task: str | None = None, strategy: str = "greedy", top_p: float = 0.9,
           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """`generate_from_memory`'s loop over the parts of a sequence, from a started ``decoding``.

    ``model`` needs only ``layout``, ``token_embedding`` and ``part_start``; ``decoding`` only ``inputs`` (the
    inputs not yet fed, (B, T, D)), ``append``, ``next_logits`` and ``last_attention``, as `Decoding`: an
    exported network (`seqtr_lib.runtime`) decodes with the same choices through the same code.
    """
    layout = model.layout
    parts = layout.parts_to_generate(task)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
    batch = decoding.inputs.shape[0]
    if layout.generalised:
        tokens, scores, attention = _decode(model, decoding, layout.answer_length, True, strategy, top_p, generator,
                                            allowed_after=answer_grammar(layout))
        return {"answer_tokens": tokens, "answer_scores": scores,
                **({"answer_attention": attention} if attention is not None else {})}
    results: dict[str, torch.Tensor] = {}
    for index, part in enumerate(parts):
        if index:
            decoding.append(model.part_start(index, batch))
        tokens, scores, attention = _decode(model, decoding, layout.length(part), layout.stops_at_eos(part),
                                            strategy, top_p, generator)
        results.update({f"{part}_tokens": tokens, f"{part}_scores": scores})
        if attention is not None:
            results[f"{part}_attention"] = attention
    return results


def answer_grammar(layout: Any) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The ids a generalised answer may hold next, given the tokens emitted so far (B, step) and the step:
    bool (B, V). A box answer: EOS only where a box would start (so a box is never cut short), at the last
    position EOS alone, never a separator. A contour answer: a separator only after a contour of 3 or more
    points (an even count of coordinates) and below the cap on objects, EOS only after such a contour or
    first, at most ``max_points`` points per contour, at the last position EOS alone (a capped answer of
    whole contours ends exactly there). What this lets through the codec reads back whole
    (`read_box_answer`, `read_contour_answer`)."""
    eos, separator, vocab = layout.eos, layout.separator, layout.vocab_size
    last = layout.answer_length - 1

    def allowed(emitted: torch.Tensor, step: int) -> torch.Tensor:
        batch = emitted.shape[0]
        ids = torch.zeros(batch, vocab, dtype=torch.bool, device=emitted.device)
        if step == last:
            ids[:, eos] = True
            return ids
        if layout.task == "box":
            ids[:, :eos] = True
            ids[:, eos] = step % 4 == 0
            return ids
        separators = (emitted == separator).sum(dim=1)  # contours finished so far
        after = torch.arange(step, device=emitted.device)[None] > _last_index(emitted == separator)[:, None]
        coordinates = ((emitted < eos) & after).sum(dim=1)  # of the current contour
        whole = (coordinates % 2 == 0) & (coordinates >= 6)
        ids[:, :eos] = (coordinates < 2 * layout.max_points)[:, None]
        ended = (emitted == eos).any(dim=1)  # rows already ended emit EOS anyway (`_decode`)
        ids[:, eos] = whole | ended | (step == 0)
        ids[:, separator] = whole & (separators + 1 < layout.max_objects)
        return ids

    return allowed


def _last_index(flags: torch.Tensor) -> torch.Tensor:
    """The index of each row's last True in ``flags`` (B, T), -1 for none."""
    positions = torch.arange(flags.shape[1], device=flags.device).expand_as(flags)
    if not flags.shape[1]:
        return torch.full(flags.shape[:1], -1, dtype=torch.int64, device=flags.device)
    return torch.where(flags, positions, -1).amax(dim=1)


def _decode(
    model: nn.Module,
    decoding: Decoding,
    steps: int,
    with_eos: bool,
    strategy: str,
    top_p: float,
    generator: torch.Generator | None,
    allowed_after: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Emit up to ``steps`` tokens; EOS allowed (and ending a sequence) only ``with_eos``; with
    ``allowed_after`` (`answer_grammar`), only the ids it allows at each step.

    Each emitted token's embedding is appended to ``decoding``. Returns tokens int64 (B, steps), scores
    (B, steps) and, when ``decoding`` records it, the attention (B, L, nh, steps, S) of each emitting query
    (else None); scores and attention float32, or float64 for a float64 model (its tests compare them exactly).
    """
    batch = decoding.inputs.shape[0]
    device = decoding.inputs.device
    eos = model.layout.eos
    tokens = torch.full((batch, steps), eos, dtype=torch.int64, device=device)
    dtype = torch.promote_types(decoding.inputs.dtype, torch.float32)  # bf16 under autocast: float32
    scores = torch.zeros(batch, steps, dtype=dtype, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    attention = None
    for step in range(steps):
        logits = decoding.next_logits().to(dtype)
        if decoding.last_attention is not None:
            if attention is None:
                layers, heads, cells = decoding.last_attention.shape[1:]
                attention = torch.zeros(batch, layers, heads, steps, cells, dtype=dtype, device=device)
            attention[:, :, :, step] = decoding.last_attention.to(dtype).masked_fill(finished[:, None, None, None], 0.0)
        if allowed_after is not None:
            logits = logits.masked_fill(~allowed_after(tokens[:, :step], step), float("-inf"))
        elif not with_eos:
            logits = logits[:, :eos]  # EOS is the last id: coordinates only
        probs = F.softmax(logits, dim=-1)
        if strategy == "greedy":
            token = probs.argmax(dim=-1)
        else:
            token = top_p_sample(probs, top_p, generator)
        score = probs.gather(1, token[:, None])[:, 0]
        if with_eos:
            token = token.masked_fill(finished, eos)
            score = score.masked_fill(finished, 0.0)
            finished |= token == eos
        tokens[:, step] = token
        scores[:, step] = score
        if with_eos and bool(finished.all()):
            break
        decoding.append(model.token_embedding(token)[:, None])
    return tokens, scores, attention
