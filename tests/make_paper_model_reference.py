"""Writes tests/data/paper_model_reference.pt: what the paper's model computes on a fixed input.

Made with the code as it was before the from-scratch departures existed (commit 3ca3a25); the test
`test_departures_off_is_the_paper_model` checks that with every departure off today's model still has
the same parameters and computes the same outputs. Run from a checkout of that commit:

    PYTHONPATH=<checkout> python tests/make_paper_model_reference.py tests/data/paper_model_reference.pt
"""

from __future__ import annotations

import sys

import torch

from seqtr_lib.config import ModelConfig
from seqtr_lib.model.seqtr import build_model
from seqtr_lib.text import Vocabulary

MODEL = dict(darknet_width=0.125, trainable_backbone_modules=-1, word_vectors="random", word_dim=16,
             freeze_word_vectors=False, gru_hidden=16, d_model=32, num_heads=2, num_encoder_layers=1,
             num_decoder_layers=1, ffn_dim=64, num_ray=6, num_bin=64, dropout=0.0)
EXPRESSIONS = ["the red circle left of the blue square", "small green star", "top left"]


def fixed_inputs(task: str) -> dict[str, torch.Tensor]:
    """Two 64 x 96 images (the second padded to 64 x 64 of content), expressions and target tokens."""
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(2, 3, 64, 96, generator=generator) * 255
    pad_mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    pad_mask[1, :, 64:] = True
    images[1, :, :, 64:] = 0
    vocabulary = Vocabulary.build(EXPRESSIONS)
    ids = torch.stack([torch.from_numpy(vocabulary.encode(e, 8)) for e in EXPRESSIONS[:2]])
    inputs = {"images": images, "pad_mask": pad_mask, "expression_ids": ids}
    if task in ("box", "multi"):
        inputs["box_tokens"] = torch.randint(0, 64, (2, 4), generator=generator)
    if task in ("mask", "multi"):
        inputs["mask_tokens"] = torch.randint(0, 64, (2, 12), generator=generator)
    return inputs


def reference(task: str) -> dict[str, object]:
    # Imported here: the tests import this file's inputs, and that commit's loss function is gone since.
    from seqtr_lib.loss import sequence_loss

    torch.manual_seed(0)
    model = build_model(ModelConfig(task=task, **MODEL), Vocabulary.build(EXPRESSIONS))
    initial = {name: (tuple(tensor.shape), float(tensor.double().sum())) for name, tensor in model.state_dict().items()}
    inputs = fixed_inputs(task)
    outputs = model(**inputs)
    loss = sequence_loss(outputs, inputs, model.layout)["loss"]
    model.eval()
    generated = model.generate(inputs["images"], inputs["pad_mask"], inputs["expression_ids"])
    return {
        "shapes": {name: shape for name, (shape, _) in initial.items()},
        "sums": {name: total for name, (_, total) in initial.items()},
        "logits": {k: v.detach() for k, v in outputs.items()},
        "loss": float(loss.detach()),
        "generated": generated,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.save({task: reference(task) for task in ("box", "mask", "multi")}, sys.argv[1])
