"""Greedy decoding with fixed shapes, replayed from CUDA graphs on a GPU.

The cached decoder (`seqtr_lib.model.decoding`) launches a few dozen small kernels per token, and on a
GPU at small batches those launches, not the arithmetic, set the pace. `GraphDecoder` keeps every
tensor of a decoding step at a fixed shape and address: a `StaticCache` holds the keys and values of all
decoder positions, the position itself is a device tensor, and the step (decoder layers, predictor,
greedy choice, EOS bookkeeping and the next input's embedding) writes its results in place. On a CUDA
device each step is captured once as a CUDA graph per batch shape and replayed for every token;
elsewhere (and in the tests) the same step runs eagerly.

Tokens equal the cached decoder's greedy tokens, scores to float rounding. A mask part always runs its
2N steps (the cached decoder stops when every sequence has emitted EOS; the extra steps only write EOS
with score 0, which is what that decoder's output holds there). No attention maps, no nucleus sampling:
use `generate_from_memory` for those. No generalised answers (zero or more objects, docs/method.md section
11): the constructor refuses such a model.

    decoder = GraphDecoder(model)                        # model.eval(); one per model, reused
    results = decoder.generate_from_memory(model.encode(images, pad_mask, expression_ids))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from seqtr_lib.model.seqtr import Memory, SeqTR


class GraphDecoder:
    """Greedy decoding of a SeqTR with static shapes; CUDA graphs on a CUDA device unless ``use_graphs``
    is False. Keeps one set of buffers (and graphs) per batch shape it has seen."""

    def __init__(self, model: SeqTR, use_graphs: bool | None = None) -> None:
        if model.layout.generalised:
            raise ValueError("GraphDecoder decodes the paper's one-object sequences, not a generalised model's "
                             "answers (data.max_objects > 0); decode it with cuda_graphs off")
        self.model = model
        self.use_graphs = use_graphs
        self._states: dict[tuple, _StepState] = {}

    @torch.no_grad()
    def generate_from_memory(self, memory: Memory, task: str | None = None) -> dict[str, torch.Tensor]:
        """``{part}_tokens`` int64 (B, length) and ``{part}_scores`` float32, as greedy
        `seqtr_lib.model.decoding.generate_from_memory(model, memory, task)`."""
        model = self.model
        if model.training:
            raise ValueError("GraphDecoder decodes with dropout off: call model.eval() first")
        features = memory.features
        batch = features.shape[0]
        use_graphs = features.is_cuda if self.use_graphs is None else self.use_graphs
        autocast = torch.is_autocast_enabled(features.device.type)
        key = (tuple(features.shape), features.dtype, features.device, autocast,
               torch.get_autocast_dtype(features.device.type) if autocast else None, use_graphs)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _StepState(model, memory, use_graphs)
        else:
            state.load(memory)
        results: dict[str, torch.Tensor] = {}
        for number, part in enumerate(model.layout.parts_to_generate(task)):
            if number:
                state.advance()  # the previous part's last token enters the cache, as in the cached decoder
                state.input.copy_(model.part_start(number, batch))
            else:
                state.input.copy_(model.start(memory))
            tokens, scores = state.run(model.layout.length(part), model.layout.stops_at_eos(part))
            results[f"{part}_tokens"], results[f"{part}_scores"] = tokens.clone(), scores.clone()
        return results


class _StepState:
    """The static buffers of one batch shape, the decoding step over them, and its captured graphs."""

    def __init__(self, model: SeqTR, memory: Memory, use_graphs: bool) -> None:
        self.model, self.use_graphs = model, use_graphs
        features = memory.features
        batch, device = features.shape[0], features.device
        self.cache = model.decoder.static_cache(features, memory.position, memory.padding)
        # The dtype of the token embeddings, which the cached decoder feeds from the second step on (under
        # autocast the memory may be bfloat16).
        self.input = torch.zeros(batch, 1, features.shape[2], dtype=model.token_embedding.weight.dtype, device=device)
        self.index = torch.zeros(1, dtype=torch.int64, device=device)  # the decoder position of ``input``
        self.step_index = torch.zeros(1, dtype=torch.int64, device=device)  # the token's place in its part
        longest = max(model.layout.length(part) for part in model.layout.parts)
        self.tokens = torch.zeros(batch, longest, dtype=torch.int64, device=device)
        # float32 scores, float64 for a float64 model (as the cached decoder's)
        self.scores = torch.zeros(batch, longest, dtype=torch.promote_types(self.input.dtype, torch.float32),
                                  device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}

    def load(self, memory: Memory) -> None:
        """Start a decode of another ``memory`` of the shape this state was built for."""
        self.model.decoder.load_memory(self.cache, memory.features, memory.position, memory.padding)
        self.index.zero_()

    def advance(self) -> None:
        """Feed ``input`` to the decoder without emitting a token (a part's last token, before the next part)."""
        self.model.decoder.step(self.input, self.index, self.cache)
        self.index += 1

    def run(self, steps: int, with_eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Emit ``steps`` tokens from ``input`` on; EOS allowed (and ending a sequence) only ``with_eos``."""
        self.step_index.zero_()
        self.tokens.fill_(self.model.layout.eos)
        self.scores.zero_()
        self.finished.zero_()
        for _ in range(steps):
            if self.use_graphs:
                graph = self.graphs.get(with_eos) or self._capture(with_eos)
                graph.replay()
            else:
                self.step(with_eos)
        return self.tokens[:, :steps], self.scores[:, :steps]

    def step(self, with_eos: bool) -> None:
        """One token: every write goes to this state's buffers, so the step can be captured and replayed."""
        model, eos = self.model, self.model.layout.eos
        hidden = model.decoder.step(self.input, self.index, self.cache)
        logits = model.predictor(hidden[:, 0]).to(self.scores.dtype)
        if not with_eos:
            logits = logits[:, :eos]  # EOS is the last id: coordinates only
        probs = F.softmax(logits, dim=-1)
        token = probs.argmax(dim=-1)
        score = probs.gather(1, token[:, None])[:, 0]
        if with_eos:
            token = token.masked_fill(self.finished, eos)
            score = score.masked_fill(self.finished, 0.0)
            self.finished |= token == eos
        self.tokens.index_copy_(1, self.step_index, token[:, None])
        self.scores.index_copy_(1, self.step_index, score[:, None])
        self.input.copy_(model.token_embedding(token)[:, None])
        self.index += 1
        self.step_index += 1

    def _capture(self, with_eos: bool) -> torch.cuda.CUDAGraph:
        """Capture `step` as a CUDA graph; the buffers are left as they were before."""
        mutable = [self.input, self.index, self.step_index, self.tokens, self.scores, self.finished,
                   *self.cache.self_keys, *self.cache.self_values]
        saved = [tensor.clone() for tensor in mutable]
        side = torch.cuda.Stream(self.input.device)
        side.wait_stream(torch.cuda.current_stream(self.input.device))
        with torch.cuda.stream(side):
            self.step(with_eos)  # warm-up outside the graph: library handles and workspaces get made here
        torch.cuda.current_stream(self.input.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step(with_eos)
        for tensor, value in zip(mutable, saved):
            tensor.copy_(value)
        self.graphs[with_eos] = graph
        return graph
