"""Expression encoder: word embedding, one-layer bidirectional GRU, max-pool over the valid words."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqtr_lib.text import PAD_ID, UNK_ID


class LanguageEncoder(nn.Module):
    """Sentence feature y of a referring expression, as in SeqTR's ``LSTM`` language encoder.

    vectors: (num_words, word_dim) initial word vectors, row i = vocabulary id i (row PAD_ID is
    padding). ``freeze`` keeps them fixed (the paper freezes GloVe); random vectors should train.
    The GRU has ``hidden`` units per direction, so the feature has ``2 * hidden`` channels.
    """

    def __init__(self, vectors: np.ndarray | torch.Tensor, hidden: int, freeze: bool = True) -> None:
        super().__init__()
        vectors = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
        if vectors.ndim != 2:
            raise ValueError(f"word vectors must be a (num_words, word_dim) matrix, got shape {tuple(vectors.shape)}")
        self.embedding = nn.Embedding.from_pretrained(vectors, freeze=freeze, padding_idx=PAD_ID)
        self.gru = nn.GRU(vectors.shape[1], hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.out_channels = 2 * hidden

    def forward(self, expression_ids: torch.Tensor) -> torch.Tensor:
        """Encode expressions.

        expression_ids: int64 (B, L), word ids with trailing PAD_ID padding. Returns (B, 2 * hidden):
        the element-wise max over the GRU outputs of the non-PAD positions.

        The sequences are packed, so the backward direction starts at the last word rather than at
        the padding (the reference runs the GRU over the padding too, which makes a sentence's
        feature depend on max_token). An all-PAD row is read as a single UNK, the same rule as
        `Vocabulary.encode` for an expression that cleans to no words.
        """
        if expression_ids.ndim != 2:
            raise ValueError(f"expression_ids must be (batch, max_token), got shape {tuple(expression_ids.shape)}")
        empty = (expression_ids == PAD_ID).all(dim=1, keepdim=True)  # (B, 1)
        first = torch.where(empty, UNK_ID, expression_ids[:, :1])
        expression_ids = torch.cat([first, expression_ids[:, 1:]], dim=1)  # branch-free for torch.compile
        valid = expression_ids != PAD_ID  # (B, L)
        lengths = valid.sum(dim=1)
        words = self.embedding(expression_ids)  # (B, L, word_dim)
        packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = self.gru(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=expression_ids.shape[1])
        outputs = outputs.masked_fill(~valid[..., None], float("-inf"))
        return outputs.amax(dim=1)  # (B, 2 * hidden)

