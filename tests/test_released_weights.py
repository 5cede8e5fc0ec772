"""The released weights (weights/*.pt) keep their predictions through refactors of the model code.

tests/data/released_tokens.pt holds what they generated on a fixed batch when this test was written
(`python tests/test_released_weights.py tests/data/released_tokens.pt` writes it again). The batch is four
synthetic val scenes, each with its first expression, prepared as `predict` prepares an image.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from seqtr_lib.data.synthetic import make_image
from seqtr_lib.evaluation import load_trained
from seqtr_lib.predict import prepare_inference_image
from rounding import U32

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).parent / "data" / "released_tokens.pt"
SCENES = 4


def fixed_batch(vocabulary, image_size: int) -> dict[str, torch.Tensor]:
    images, pad_masks, ids = [], [], []
    for index in range(SCENES):
        rgb, annotations = make_image(seed=5, index=index, image_size=image_size, split="val")
        image, pad_mask, _ = prepare_inference_image(rgb, image_size)
        images.append(image)
        pad_masks.append(pad_mask)
        ids.append(torch.from_numpy(vocabulary.encode(annotations[0]["expressions"][0], 20)))
    return {"images": torch.cat(images), "pad_mask": torch.cat(pad_masks), "expression_ids": torch.stack(ids)}


def released_tokens(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy tokens (B, T) of a released model's EMA weights on `fixed_batch`, and the model itself with
    the batch (the reference writer reads each token's logit margin from them)."""
    experiment, vocabulary, models = load_trained(ROOT / "weights" / f"{name}.pt")
    model = models["ema"].float()
    batch = fixed_batch(vocabulary, experiment.data.image_size)
    with torch.no_grad():
        generated = model.generate(batch["images"], batch["pad_mask"], batch["expression_ids"])
    part = model.layout.parts[0]
    return generated[f"{part}_tokens"], model, batch



def near_tie(model, batch, tokens: torch.Tensor) -> float:
    """The smallest margin no rounding can flip: logits of the same weights differ between instruction sets
    (oneDNN's kernels sum in other orders), here and on the machine that wrote the reference, each by about
    what float32 rounding does to them (|float32 - float64| here, plus u of the logits). A margin moves by
    both machines' rounding of two logits at most: four times it, as in test_departures' golden test."""
    ours = teacher_forced_logits(model, batch, tokens).double()
    exact = teacher_forced_logits(copy.deepcopy(model).double(), {k: v.double() if v.is_floating_point() else v
                                                                  for k, v in batch.items()}, tokens)
    return 4 * (float((ours - exact).abs().max()) + U32 * float(exact.abs().max()))


def teacher_forced_logits(model, batch, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) at the positions that emit ``tokens`` (B, T), fed those tokens; a box's without EOS."""
    part = model.layout.parts[0]
    with torch.no_grad():
        logits = model(**batch, **{f"{part}_tokens": tokens})[f"{part}_logits"][:, :tokens.shape[1]]
    return logits[..., :model.layout.eos] if part == "box" else logits


@pytest.mark.parametrize("name", ["synthetic_det", "synthetic_mask"])
def test_released_weights_generate_the_tokens_they_generated_when_released(name):
    expected = torch.load(REFERENCE, weights_only=True)[name]
    want, margins = expected["tokens"], expected["margins"]
    tokens, model, batch = released_tokens(name)
    assert tokens.shape == want.shape
    tie = near_tie(model, batch, want)
    for row, (got, wanted, margin) in enumerate(zip(tokens, want, margins)):
        ties = (margin < tie).nonzero()
        end = int(ties[0]) + 1 if len(ties) else len(wanted)  # up to and including the first near-tie
        assert got[:end].tolist() == wanted[:end].tolist(), f"{name}, scene {row}"
    # Every clear choice, fed the released sequence: each position on its own, so a near-tie early in a
    # contour does not hide the positions after it.
    clear = margins >= tie
    assert clear.float().mean() > 0.8  # behavioural: most choices are clear, so the check below means something
    chosen = teacher_forced_logits(model, batch, want).argmax(dim=-1)
    assert torch.equal(chosen[clear], want[clear])


def write_reference(path: str) -> None:
    """Tokens and, per token, the gap between its logit and the runner-up's under teacher forcing."""
    reference = {}
    for name in ("synthetic_det", "synthetic_mask"):
        tokens, model, batch = released_tokens(name)
        logits = teacher_forced_logits(model, batch, tokens)
        top = logits.topk(2, dim=-1).values
        assert torch.equal(logits.argmax(dim=-1), tokens)
        reference[name] = {"tokens": tokens, "margins": top[..., 0] - top[..., 1]}
    torch.save(reference, path)


if __name__ == "__main__":
    torch.set_num_threads(1)
    write_reference(sys.argv[1])
