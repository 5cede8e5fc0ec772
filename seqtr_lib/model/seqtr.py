"""SeqTR: image + expression -> a box or a mask contour as a sequence of coordinate tokens.

The paper's model (Zhu et al., ECCV 2022): a DarkNet-53 backbone and a GRU expression encoder, fused into
one visual map; a transformer encoder over its cells; a transformer decoder that reads that memory and
predicts one coordinate token at a time; one label-smoothed cross-entropy (`seqtr_lib.loss`).

The sequence layout (parts, lengths, targets) is `seqtr_lib.codec.TokenLayout`'s. The first input of a
single-part sequence is a zero vector; in a multi-task sequence each part starts with its row of a learned
task embedding. Every other input is the embedding of the previous target token, and the decoder has one
learned position per input. Decoding lives in `seqtr_lib.model.decoding`.

What helps a small model train from scratch on the synthetic set is not the paper's and lives apart, in
`seqtr_lib.model.aids`: ``SeqTR(..., aids=None)`` is the paper's model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from seqtr_lib.codec import TokenLayout
from seqtr_lib.config import ModelConfig, repository_file
from seqtr_lib.model import decoding
from seqtr_lib.model.aids import AidNotes, TrainingAids, build_aids
from seqtr_lib.model.darknet import DarkNet53, freeze, load_darknet_weights
from seqtr_lib.model.fusion import SimpleFusion, padding_zeroed
from seqtr_lib.model.language import LanguageEncoder
from seqtr_lib.model.transformer import Decoder, Encoder, downsample_padding, sine_position_2d
from seqtr_lib.text import Vocabulary, load_word_vectors

logger = logging.getLogger(__name__)


class Memory(NamedTuple):
    """Encoder output: features and sine positions (B, S, D), padding bool (B, S) (True = padding); with
    training aids, what they noted on the way (`seqtr_lib.model.aids.AidNotes`), else None."""

    features: torch.Tensor
    position: torch.Tensor
    padding: torch.Tensor
    notes: AidNotes | None = None


class SeqTR(nn.Module):
    """Visual grounding as coordinate-token sequence prediction.

    Built from its parts (see `build_model`): the DarkNet backbone, the expression encoder, the fusion
    (with the projection to d_model), the transformer encoder and decoder, and optionally the training
    aids. It adds the token embedding (``layout.vocab_size`` rows: num_bin + 1, or num_bin + 2 generalised), the task embedding (multi-task only) and the
    predictor MLP.
    """

    def __init__(self, backbone: nn.Module, language: LanguageEncoder, fusion: SimpleFusion, encoder: Encoder,
                 decoder: Decoder, layout: TokenLayout, aids: TrainingAids | None = None) -> None:
        super().__init__()
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
        self.aids = aids

    def encode(self, images: torch.Tensor, pad_mask: torch.Tensor, expression_ids: torch.Tensor) -> Memory:
        """Backbone, expression encoder, fusion and transformer encoder.

        images: float (B, 3, H, W) raw 0-255 RGB, zero-padded, H and W multiples of 32; pad_mask: bool
        (B, H, W), True outside each image; expression_ids: int64 (B, L), PAD = 0 trailing.
        Returns the memory over the (H/s) x (W/s) fused map, S = H * W / s^2, s = the fusion's stride.
        """
        if images.ndim != 4 or pad_mask.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"images must be (B, 3, H, W) and pad_mask (B, H, W); got {tuple(images.shape)} "
                             f"and {tuple(pad_mask.shape)}")
        aids, notes = self.aids, None
        sentence = self.language(expression_ids)  # (B, 2 * gru_hidden)
        with padding_zeroed(self, pad_mask):
            maps = self.backbone(images if aids is None else aids.backbone_input(images))
            grid = maps[1 if self.fusion.stride == 16 else 2].shape[-2:]
            padding = downsample_padding(pad_mask, grid)  # (B, h, w)
            visual = self.fusion.visual(maps)
            if aids is not None:
                visual, notes = aids.visual_map(visual, images, pad_mask, sentence)
            fused = self.fusion.gate(visual, sentence, padding)  # (B, D, h, w)
        # computed in float32 under autocast too, in float64 for a float64 model
        position_dtype = torch.promote_types(fused.dtype, torch.float32)
        position = sine_position_2d(padding, fused.shape[1], dtype=position_dtype).to(fused.dtype)  # (B, h * w, D)
        padding = padding.flatten(1)
        features = self.encoder(fused.flatten(2).transpose(1, 2), position, padding)
        return Memory(features, position, padding, notes)

    def start(self, memory: Memory, aid_outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """First decoder input (B, 1, D): the first part's task embedding (multi-task) or a zero vector (and
        what the training aids add, given their teacher-forced ``aid_outputs`` in training)."""
        batch = memory.features.shape[0]
        if self.task_embedding is not None:
            start = self.task_embedding.weight[0].expand(batch, 1, -1)
        else:
            start = memory.features.new_zeros(batch, 1, self.token_embedding.embedding_dim)
        return start if self.aids is None else self.aids.first_input(start, memory, aid_outputs)

    def part_start(self, index: int, batch: int) -> torch.Tensor:
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
        return_attention: bool = False,
        aid_inputs: Mapping[str, torch.Tensor] | None = None,
        answer_tokens: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced logits for training.

        Inputs as `encode`, plus box_tokens int64 (B, 4) [x1, y1, x2, y2] (tasks box, multi) and
        mask_tokens int64 (B, 2N) [x1, y1, ...], EOS for missing vertices (tasks mask, multi).
        Returns ``box_logits`` (B, 5, V) and/or ``mask_logits`` (B, 2N + 1, V), V = num_bin + 1;
        position t predicts target t of the part (`seqtr_lib.codec` has the layout). With
        ``return_attention``, also ``cross_attention`` (B, L, nh, T, S): every decoder layer's and head's
        attention over the memory cells for every position. With training aids, also their outputs
        (`TrainingAids.outputs`, from the batch entries ``aid_inputs`` named by its ``forward_keys``).

        A generalised model (``layout.generalised``) takes ``answer_tokens`` int64 (B, T) instead, each row an
        answer ending with EOS (padded with EOS), T <= ``layout.answer_length``: the inputs are the start and
        the answer shifted right, and ``answer_logits`` (B, T, V), V = num_bin + 2, predict the answer.
        """
        batch = images.shape[0]
        memory = self.encode(images, pad_mask, expression_ids)
        outputs = {} if self.aids is None else self.aids.outputs(memory, images.shape[-1], aid_inputs or {})
        if self.layout.generalised:
            inputs = [self.start(memory, outputs), self.token_embedding(_checked_answer(answer_tokens, batch,
                                                                                       self.layout)[:, :-1])]
        else:
            teacher = {"box": box_tokens, "mask": mask_tokens}
            inputs = []
            for index, part in enumerate(self.layout.parts):
                inputs.append(self.part_start(index, batch) if index else self.start(memory, outputs))
                tokens = _checked(teacher[part], f"{part}_tokens", (batch, self.layout.length(part)),
                                  self.layout.task)
                inputs.append(self.token_embedding(tokens))
        weights: list[torch.Tensor] | None = [] if return_attention else None
        hidden = self.decoder(torch.cat(inputs, dim=1), memory.features, memory.position, memory.padding,
                              cross_attention=weights)
        if weights is not None:
            outputs["cross_attention"] = torch.stack(weights, dim=1)
        logits = self.predictor(hidden)  # (B, T, V)
        if self.layout.generalised:
            return {"answer_logits": logits, **outputs}
        return {**{f"{part}_logits": part_logits for part, part_logits in self.layout.split(logits).items()},
                **outputs}

    @torch.no_grad()
    def generate(self, images: torch.Tensor, pad_mask: torch.Tensor, expression_ids: torch.Tensor,
                 **options: Any) -> dict[str, torch.Tensor]:
        """Predict token sequences; inputs as `encode`, options and results as
        `seqtr_lib.model.decoding.generate_from_memory`."""
        return decoding.generate_from_memory(self, self.encode(images, pad_mask, expression_ids), **options)

    def generate_from_memory(self, memory: Memory, **options: Any) -> dict[str, torch.Tensor]:
        """`seqtr_lib.model.decoding.generate_from_memory` of this model."""
        return decoding.generate_from_memory(self, memory, **options)


def _checked(tokens: torch.Tensor | None, name: str, shape: tuple[int, int], task: str) -> torch.Tensor:
    if tokens is None:
        raise ValueError(f"task {task!r} needs {name} for teacher forcing; pass an int64 tensor of shape {shape}")
    if tuple(tokens.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tokens.shape)}")
    return tokens


def _checked_answer(tokens: torch.Tensor | None, batch: int, layout: TokenLayout) -> torch.Tensor:
    if tokens is None:
        raise ValueError("a generalised model (data.max_objects > 0) needs answer_tokens for teacher forcing; pass "
                         "the batch's answer_tokens (B, T)")
    if tokens.ndim != 2 or tokens.shape[0] != batch or not 1 <= tokens.shape[1] <= layout.answer_length:
        raise ValueError(f"answer_tokens must be (B={batch}, T) with 1 <= T <= {layout.answer_length} (the caps' "
                         f"longest answer), got {tuple(tokens.shape)}")
    return tokens


def build_model(config: ModelConfig, vocabulary: Vocabulary, scene_classes: Mapping[str, int] | None = None,
                max_objects: int = 0, max_points: int = 0) -> SeqTR:
    """Build SeqTR from a ModelConfig; the only code that reads the model config.

    ``max_objects`` > 0 (with ``max_points`` for contours: the params' data.max_objects and data.max_points)
    builds a generalised model (docs/method.md, section 11): one more output class, the separator, and a
    decoder position for each token of the longest answer; 0 is the paper's model. Loads the Darknet weights (if configured) before freezing all but the last
    ``trainable_backbone_modules`` backbone modules, and the word vectors for ``vocabulary``.
    ``scene_classes``: the dataset's scene class counts, needed by the scene loss (a training aid).
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
    layout = TokenLayout(config.task, config.num_bin, config.num_ray, max_objects, max_points)
    decoder = Decoder(*layer, config.num_decoder_layers, layout.decoder_length)
    aids = build_aids(config, config.d_model, language.out_channels, scene_classes)
    return SeqTR(backbone, language, fusion, encoder, decoder, layout, aids)


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
