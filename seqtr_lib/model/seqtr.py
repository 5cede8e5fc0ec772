"""SeqTR: image + expression -> a box or a mask contour as a sequence of coordinate tokens.

The sequence layout (parts, lengths, targets) is `seqtr_lib.codec.TokenLayout`'s. The first input of
a single-part sequence is a zero vector; in a multi-task sequence each part starts with its row of a
learned task embedding. Every other input is the embedding of the previous target token, and the
decoder has one learned position per input.

Two opt-in departures help a model that starts from scratch (docs/method.md, section 9): a target-cell
score per memory cell, trained to pick the cell holding the target's centre (``target_cell_loss``), and
query selection, which adds a projection of the selected cell's memory and position to the first
decoder input (the true cell under teacher forcing, the best-scoring cell when generating).
A third, ``input_token_noise``, replaces a random share of the teacher-forced coordinate inputs by
random coordinates while training, so that a contour cannot be continued from the previous points
alone and the decoder has to read the image. A fourth, ``scene_loss``, classifies the colour, kind and
size of every object of the image from the fusion's visual map (before the expression gates it), so the
backbone learns what the shapes are from all of them rather than from the one referred object.
A fifth, ``colour_pathway``, gives the backbone a grey image and adds shape-blind colour features to the
visual map, and a sixth, ``attribute_prior``, adds to each cell's score how well its colour and kind match
the ones the expression names (`seqtr_lib.model.colour`), so that colours and kinds never seen together
can still be combined.
"""

from __future__ import annotations

import dataclasses

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqtr_lib.codec import TokenLayout
from seqtr_lib.config import ModelConfig, repository_file
from seqtr_lib.model.colour import ColourPathway, attribute_match, grey
from seqtr_lib.model.darknet import DarkNet53, freeze, load_darknet_weights
from seqtr_lib.model.fusion import SimpleFusion, padding_zeroed
from seqtr_lib.model.language import LanguageEncoder
from seqtr_lib.model.transformer import Decoder, DecoderCache, Encoder, downsample_padding, sine_position_2d
from seqtr_lib.text import Vocabulary, load_word_vectors

logger = logging.getLogger(__name__)

STRATEGIES = ("greedy", "top_p")


def target_cells(target_box: torch.Tensor, stride: int, grid_width: int) -> torch.Tensor:
    """Index of the memory cell holding each box's centre, in row-major order over the padded grid.

    target_box: float (B, 4) x1, y1, x2, y2 in pixels of the padded network input; stride: pixels per
    cell; grid_width: cells per row. Returns int64 (B,). The centre lies inside the image, so its cell
    is never padding (a cell is padding when its top-left pixel is).
    """
    centres = box_centres(target_box)
    return cell_index(centres[:, 0], centres[:, 1], stride, grid_width)


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


class Memory(NamedTuple):
    """Encoder output: features and sine positions (B, S, D), padding bool (B, S) (True = padding);
    with ``attribute_prior``, each cell's log-probability (B, S) of matching the named colour and kind."""

    features: torch.Tensor
    position: torch.Tensor
    padding: torch.Tensor
    cell_prior: torch.Tensor | None = None


class _SceneMaps(NamedTuple):
    """What the scene classifiers read: the fused visual map (B, Cy, h, w) before the expression gates it
    (from the grey backbone with a colour pathway) and the pathway's pooled colours (B, hidden, h, w)."""

    visual: torch.Tensor
    colours: torch.Tensor | None = None


class _Decoding:
    """The decoder inputs of an autoregressive decode, fed with a key/value cache or recomputed.

    With the cache, each call of `next_logits` runs the decoder on the inputs appended since the last
    call only. Without it (the reference's way), it re-runs the decoder over every input so far.
    With ``record_attention``, ``last_attention`` holds the cross-attention (B, L, nh, S) of the
    position whose logits the last `next_logits` returned.
    """

    def __init__(self, model: SeqTR, memory: Memory, first: torch.Tensor, use_cache: bool,
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


class SeqTR(nn.Module):
    """Visual grounding as coordinate-token sequence prediction (Zhu et al., ECCV 2022).

    Built from its parts (see `build_model`): the DarkNet backbone, the expression encoder, the
    fusion (with the projection to d_model), the transformer encoder and decoder. It adds the token
    embedding (num_bin + 1 rows), the task embedding (multi-task only) and the predictor MLP.
    """

    def __init__(
        self,
        backbone: nn.Module,
        language: LanguageEncoder,
        fusion: SimpleFusion,
        encoder: Encoder,
        decoder: Decoder,
        layout: TokenLayout,
        cell_scorer: nn.Linear | None = None,
        query_projection: nn.Linear | None = None,
        input_token_noise: float = 0.0,
        scene_head: nn.Linear | None = None,
        colour_pathway: ColourPathway | None = None,
        colour_head: nn.Linear | None = None,
        word_head: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if (colour_head is None) != (scene_head is None or colour_pathway is None):
            raise ValueError("a colour pathway with a scene head classifies colour with a colour_head, and only then")
        if word_head is not None and (colour_head is None or cell_scorer is None):
            raise ValueError("the attribute prior (word_head) needs the colour pathway's colour_head and a cell_scorer")
        if query_projection is not None and cell_scorer is None:
            raise ValueError("query selection picks the best-scoring cell at inference: it needs a cell_scorer")
        if decoder.max_length != layout.decoder_length:
            raise ValueError(
                f"the decoder has {decoder.max_length} positions but task {layout.task!r} with num_ray "
                f"{layout.num_ray} needs {layout.decoder_length}; build it with TokenLayout.decoder_length"
            )
        self.layout = layout
        self.backbone = backbone
        self.language = language
        self.fusion = fusion
        self.encoder = encoder
        self.decoder = decoder
        d_model = decoder.norm.normalized_shape[0]
        vocab_size = layout.vocab_size
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        # The released code has three linear layers (d -> d -> d -> V), ReLU between them.
        self.predictor = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(),
            nn.Linear(d_model, d_model), nn.ReLU(),
            nn.Linear(d_model, vocab_size),
        )
        parts = len(layout.parts)
        self.task_embedding = nn.Embedding(parts, d_model) if parts > 1 else None
        self.cell_scorer = cell_scorer  # d_model -> 1: how likely a memory cell holds the target's centre
        self.query_projection = query_projection  # d_model -> d_model, applied to memory + position of a cell
        self.input_token_noise = input_token_noise
        # Fusion's visual channels -> colour, kind and size logits of the object centred in a cell (with a
        # colour pathway: kind and size only, and colour_head reads colour from the pathway's pooled features).
        self.scene_head = scene_head
        self.colour_pathway = colour_pathway
        self.colour_head = colour_head
        self.word_head = word_head  # sentence -> which colour and kind the expression names (or none)

    def encode(self, images: torch.Tensor, pad_mask: torch.Tensor, expression_ids: torch.Tensor) -> Memory:
        """Backbone, expression encoder, fusion and transformer encoder.

        images: float (B, 3, H, W) raw 0-255 RGB, zero-padded, H and W multiples of 32; pad_mask: bool
        (B, H, W), True outside each image; expression_ids: int64 (B, L), PAD = 0 trailing.
        Returns the memory over the (H/s) x (W/s) fused map, S = H * W / s^2, s = the fusion's stride.
        """
        return self._encode(images, pad_mask, expression_ids)[0]

    def _encode(self, images: torch.Tensor, pad_mask: torch.Tensor, expression_ids: torch.Tensor
                ) -> tuple[Memory, _SceneMaps, torch.Tensor | None]:
        """`encode`, what the scene classifiers read, and (with a word head) the word logits (B, C + K + 2)."""
        if images.ndim != 4 or pad_mask.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"images must be (B, 3, H, W) and pad_mask (B, H, W); got {tuple(images.shape)} "
                             f"and {tuple(pad_mask.shape)}")
        sentence = self.language(expression_ids)  # (B, 2 * gru_hidden)
        with padding_zeroed(self, pad_mask):
            maps = self.backbone(images if self.colour_pathway is None else grey(images))
            grid = maps[1 if self.fusion.stride == 16 else 2].shape[-2:]
            padding = downsample_padding(pad_mask, grid)  # (B, h, w)
            visual = self.fusion.visual(maps)
            colours = None if self.colour_pathway is None else self.colour_pathway.pooled(images, pad_mask)
            scene_maps = _SceneMaps(visual, colours)
            if colours is not None:
                visual = visual + self.colour_pathway.project(colours)
            fused = self.fusion.gate(visual, sentence, padding)  # (B, D, h, w)
        position = sine_position_2d(padding, fused.shape[1]).to(fused.dtype)  # (B, h * w, D)
        padding = padding.flatten(1)
        features = self.encoder(fused.flatten(2).transpose(1, 2), position, padding)
        word_logits = cell_prior = None
        if self.word_head is not None:
            word_logits = self.word_head(sentence)
            colours = self.colour_head.out_features  # the word head's classes: colours + none, then kinds + none
            counts = (colours, self.word_head.out_features - colours - 2)
            cell_prior = attribute_match(word_logits.detach(), self._scene_cells(scene_maps).detach(), counts)
        return Memory(features, position, padding, cell_prior), scene_maps, word_logits

    def _scene_cells(self, maps: _SceneMaps) -> torch.Tensor:
        """Colour, kind and size logits (B, S, C) of an object centred in each cell (needs a scene_head)."""
        assert self.scene_head is not None
        logits = self.scene_head(maps.visual.flatten(2).transpose(1, 2))
        if self.colour_head is None:
            return logits
        return torch.cat([self.colour_head(maps.colours.flatten(2).transpose(1, 2)), logits], dim=-1)

    def scene_logits(self, maps: _SceneMaps, scene_centres: torch.Tensor) -> torch.Tensor:
        """Colour, kind and size logits (B, K, C) of the objects centred at ``scene_centres`` float (B, K, 2)
        x, y in pixels of the input, read from the scene maps at the cell holding each centre (needs a
        scene_head; C is the sum of the class counts of `seqtr_lib.data.synthetic.SCENE_ATTRIBUTES`)."""
        height, width = maps.visual.shape[-2:]
        logits = self._scene_cells(maps)  # (B, S, C)
        cells = cell_index(scene_centres[..., 0], scene_centres[..., 1], self.fusion.stride, width, height)
        return logits.gather(1, cells[..., None].expand(-1, -1, logits.shape[-1]))

    def cell_logits(self, memory: Memory) -> torch.Tensor:
        """Target-cell scores (B, S) of the memory cells (plus the attribute prior), -inf on padding (needs a
        cell_scorer)."""
        assert self.cell_scorer is not None
        scores = self.cell_scorer(memory.features)[..., 0].float()
        if memory.cell_prior is not None:
            scores = scores + memory.cell_prior
        return scores.masked_fill(memory.padding, -math.inf)

    def _start(self, memory: Memory, selected_cells: torch.Tensor | None = None) -> torch.Tensor:
        """First decoder input (B, 1, D): the first part's task embedding (multi-task) or a zero vector.

        With query selection, plus the projected memory and position of ``selected_cells`` (int64 (B,);
        None: the best-scoring cell of each sample).
        """
        features = memory.features
        batch = features.shape[0]
        if self.task_embedding is not None:
            start = self.task_embedding.weight[0].expand(batch, 1, -1)
        else:
            start = features.new_zeros(batch, 1, self.token_embedding.embedding_dim)
        if self.query_projection is None:
            return start
        if selected_cells is None:
            selected_cells = self.cell_logits(memory).argmax(dim=1)
        index = selected_cells[:, None, None].expand(-1, 1, features.shape[2])  # (B, 1, D)
        selected = features.gather(1, index) + memory.position.gather(1, index)
        return start + self.query_projection(selected)

    def _teacher_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embeddings of teacher-forced input tokens; in training, ``input_token_noise`` of the coordinate
        tokens (never EOS) are first replaced by uniformly random coordinates."""
        if self.training and self.input_token_noise > 0:
            num_bin = self.layout.num_bin
            replace = (torch.rand(tokens.shape, device=tokens.device) < self.input_token_noise) & (tokens < num_bin)
            tokens = torch.where(replace, torch.randint_like(tokens, num_bin), tokens)
        return self.token_embedding(tokens)

    def _part_start(self, index: int, batch: int) -> torch.Tensor:
        """The first input (B, 1, D) of a multi-task sequence's part ``index`` > 0: its task embedding row."""
        assert self.task_embedding is not None
        return self.task_embedding.weight[index].expand(batch, 1, -1)

    def forward(
        self,
        images: torch.Tensor,
        pad_mask: torch.Tensor,
        expression_ids: torch.Tensor,
        box_tokens: torch.Tensor | None = None,
        mask_tokens: torch.Tensor | None = None,
        target_box: torch.Tensor | None = None,
        return_attention: bool = False,
        scene_centres: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced logits for training.

        Inputs as `encode`, plus box_tokens int64 (B, 4) [x1, y1, x2, y2] (tasks box, multi) and
        mask_tokens int64 (B, 2N) [x1, y1, ...], EOS for missing vertices (tasks mask, multi).
        Returns ``box_logits`` (B, 5, V) and/or ``mask_logits`` (B, 2N + 1, V), V = num_bin + 1;
        position t predicts target t of the part (`seqtr_lib.codec` has the layout).

        With a cell scorer, also ``cell_logits`` (B, S); given target_box float (B, 4) (the target's
        tight box in pixels of ``images``), also ``target_cells`` (B,), which query selection
        teacher-forces as the selected cell. With ``return_attention``, also ``cross_attention`` (B, L, nh,
        T, S): every decoder layer's and head's attention over the memory cells for every position. With a
        scene head and ``scene_centres`` (the loader's, (B, K, 2)), also ``scene_logits`` (`scene_logits`). With
        the attribute prior, also ``word_logits`` (B, C + K + 2) (`seqtr_lib.model.colour.attribute_match`).
        """
        batch = images.shape[0]
        memory, scene_maps, word_logits = self._encode(images, pad_mask, expression_ids)
        extra: dict[str, torch.Tensor] = {}
        if self.scene_head is not None and scene_centres is not None:
            extra["scene_logits"] = self.scene_logits(scene_maps, scene_centres)
        if word_logits is not None:
            extra["word_logits"] = word_logits
        if self.cell_scorer is not None:
            extra["cell_logits"] = self.cell_logits(memory)
            if target_box is not None:
                stride = self.fusion.stride
                extra["target_cells"] = target_cells(target_box, stride, math.ceil(images.shape[-1] / stride))
        teacher = {"box": box_tokens, "mask": mask_tokens}
        inputs = []
        for index, part in enumerate(self.layout.parts):
            inputs.append(self._part_start(index, batch) if index else self._start(memory, extra.get("target_cells")))
            tokens = _checked(teacher[part], f"{part}_tokens", (batch, self.layout.length(part)), self.layout.task)
            inputs.append(self._teacher_inputs(tokens))
        weights: list[torch.Tensor] | None = [] if return_attention else None
        hidden = self.decoder(torch.cat(inputs, dim=1), memory.features, memory.position, memory.padding,
                              cross_attention=weights)
        if weights is not None:
            extra["cross_attention"] = torch.stack(weights, dim=1)
        logits = self.predictor(hidden)  # (B, T, V)
        return {**{f"{part}_logits": part_logits for part, part_logits in self.layout.split(logits).items()}, **extra}

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        pad_mask: torch.Tensor,
        expression_ids: torch.Tensor,
        task: str | None = None,
        strategy: str = "greedy",
        top_p: float = 0.9,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        return_attention: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Predict token sequences; inputs as `encode`, the rest as `generate_from_memory`."""
        memory = self.encode(images, pad_mask, expression_ids)
        return self.generate_from_memory(memory, task, strategy, top_p, use_cache, generator, return_attention)

    @torch.no_grad()
    def generate_from_memory(
        self,
        memory: Memory,
        task: str | None = None,
        strategy: str = "greedy",
        top_p: float = 0.9,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        return_attention: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Autoregressive decoding from an encoded batch.

        task: None (the model's task), or for a multi-task model "box" (stop after the box) or
        "mask" / "multi" (box, then mask). strategy: "greedy" or "top_p" (nucleus sampling with
        ``top_p``, drawing from ``generator``, which must be on the model's device).
        use_cache=False re-runs the decoder over the whole prefix at every step, as the reference;
        it gives the same result and exists for tests and benchmarks.

        Returns, per decoded part: ``box_tokens`` int64 (B, 4) in [0, num_bin - 1] (the EOS logit is
        excluded) with ``box_scores`` float (B, 4); ``mask_tokens`` int64 (B, 2N) with ``mask_scores``.
        A score is the softmax probability of the emitted token. Mask decoding stops at EOS: after a
        sequence's first EOS every token is EOS with score 0, and the loop ends once all have stopped.
        With ``return_attention``, also ``box_attention`` / ``mask_attention`` float (B, L, nh, steps, S):
        the cross-attention of the query that emitted each token (zero after a sequence's EOS).
        """
        parts = self.layout.parts_to_generate(task)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
        batch = memory.features.shape[0]
        decoding = _Decoding(self, memory, self._start(memory), use_cache, return_attention)
        results: dict[str, torch.Tensor] = {}
        for index, part in enumerate(parts):
            if index:
                decoding.append(self._part_start(index, batch))
            tokens, scores, attention = self._decode(decoding, self.layout.length(part), self.layout.stops_at_eos(part),
                                                     strategy, top_p, generator)
            results.update({f"{part}_tokens": tokens, f"{part}_scores": scores})
            if attention is not None:
                results[f"{part}_attention"] = attention
        return results

    def _decode(
        self,
        decoding: _Decoding,
        steps: int,
        with_eos: bool,
        strategy: str,
        top_p: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Emit up to ``steps`` tokens; EOS allowed (and ending a sequence) only ``with_eos``.

        Each emitted token's embedding is appended to ``decoding``. Returns tokens int64 (B, steps),
        scores float32 (B, steps) and, when ``decoding`` records it, the attention float32
        (B, L, nh, steps, S) of each emitting query (else None).
        """
        batch = decoding.inputs.shape[0]
        device = decoding.inputs.device
        eos = self.layout.eos
        tokens = torch.full((batch, steps), eos, dtype=torch.int64, device=device)
        scores = torch.zeros(batch, steps, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        attention = None
        for step in range(steps):
            logits = decoding.next_logits().float()
            if decoding.last_attention is not None:
                if attention is None:
                    layers, heads, cells = decoding.last_attention.shape[1:]
                    attention = torch.zeros(batch, layers, heads, steps, cells, device=device)
                attention[:, :, :, step] = decoding.last_attention.float().masked_fill(finished[:, None, None, None], 0.0)
            if not with_eos:
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
            decoding.append(self.token_embedding(token)[:, None])
        return tokens, scores, attention


def _checked(tokens: torch.Tensor | None, name: str, shape: tuple[int, int], task: str) -> torch.Tensor:
    if tokens is None:
        raise ValueError(f"task {task!r} needs {name} for teacher forcing; pass an int64 tensor of shape {shape}")
    if tuple(tokens.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tokens.shape)}")
    return tokens


def build_model(config: ModelConfig, vocabulary: Vocabulary) -> SeqTR:
    """Build SeqTR from a ModelConfig; the only code that reads the model config.

    Loads the Darknet weights (if configured) before freezing all but the last
    ``trainable_backbone_modules`` backbone modules, and the word vectors for ``vocabulary``.
    """
    backbone = DarkNet53(config.darknet_width)
    if config.darknet_weights:
        load_darknet_weights(backbone, repository_file(config.darknet_weights))
    freeze(backbone, config.trainable_backbone_modules)
    vectors, coverage = load_word_vectors(vocabulary, config.word_vectors, config.word_dim)
    if config.word_vectors != "random":
        logger.info("word vectors %s cover %.1f%% of the %d-word vocabulary", config.word_vectors,
                    100 * coverage, len(vocabulary))
    language = LanguageEncoder(vectors, config.gru_hidden, freeze=config.freeze_word_vectors)
    fusion = SimpleFusion(backbone.out_channels, language.out_channels, config.d_model, config.memory_stride)
    layer = (config.d_model, config.num_heads, config.ffn_dim, config.dropout)
    encoder = Encoder(*layer, config.num_encoder_layers)
    layout = TokenLayout(config.task, config.num_bin, config.num_ray)
    decoder = Decoder(*layer, config.num_decoder_layers, layout.decoder_length)
    cell_scorer = nn.Linear(config.d_model, 1) if config.target_cell_loss > 0 else None
    query_projection = nn.Linear(config.d_model, config.d_model) if config.query_selection else None
    scene_head = colour_pathway = colour_head = word_head = None
    if config.colour_pathway > 0:
        colour_pathway = ColourPathway(config.colour_pathway, language.out_channels, config.memory_stride)
    if config.scene_loss > 0:
        from seqtr_lib.data.synthetic import SCENE_ATTRIBUTES

        counts = {field: len(classes) for field, classes in SCENE_ATTRIBUTES.items()}
        if colour_pathway is None:
            scene_head = nn.Linear(language.out_channels, sum(counts.values()))
        else:
            scene_head = nn.Linear(language.out_channels, counts["kind"] + counts["size"])
            colour_head = nn.Linear(config.colour_pathway, counts["color"])
        if config.attribute_prior > 0:
            word_head = nn.Linear(language.out_channels, counts["color"] + 1 + counts["kind"] + 1)
    return SeqTR(backbone, language, fusion, encoder, decoder, layout, cell_scorer, query_projection,
                 config.input_token_noise, scene_head, colour_pathway, colour_head, word_head)


def without_weight_files(config: ModelConfig) -> ModelConfig:
    """The same architecture without reading the Darknet or word-vector files (a checkpoint holds every
    weight; parameter counts do not depend on the values)."""
    return dataclasses.replace(config, darknet_weights=None, word_vectors="random")


def count_parameters(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Parameters per top-level part of ``model``: {name: (total, trainable)}, in module order."""
    counts = {}
    for name, part in model.named_children():
        parameters = list(part.parameters())
        counts[name] = (sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad))
    return counts
