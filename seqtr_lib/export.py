"""Export a trained SeqTR for a CPU inference runtime: two ONNX graphs, the embedding tables and a manifest.

    python -m seqtr_lib export --checkpoint weights/synthetic_det.pt --out exported/synthetic_det

``encoder.onnx`` runs everything before the token loop, with dynamic batch and image size (multiples of 32):

    images float32 (B, 3, H, W) raw 0-255 RGB, zero-padded   ->  start (B, 1, D): the first decoder input
    pad_mask bool (B, H, W), True outside each image              memory_keys, memory_values (L, B, nh, S, hs):
    expression_ids int64 (B, max_token), PAD = 0 trailing         each decoder layer's cross-attention keys
                                                                  memory_attend bool (B, 1, 1, S)
                                                                  cell_logits (B, S) (with query selection only)

``decoder_step.onnx`` is one greedy step with the self-attention keys and values of every position in fixed-size
buffers (T = the decoder's positions), so the runtime keeps the cache and never re-runs the prefix:

    input (B, 1, D), index int64 (1,): the position it enters   ->  logits (B, V)
    self_keys, self_values (L, B, nh, T, hs)                        self_keys, self_values with ``index`` written
    memory_keys, memory_values, memory_attend (as above)

The token and task embeddings (``embeddings.npz``) turn each emitted token into the next input on the caller's
side, where `seqtr_lib.model.decoding.decode` makes the same choices as for the PyTorch model. ``manifest.json``
holds the checkpoint's params and vocabulary (the runtime rebuilds the codec and tokenizer from them), the token
layout and the graphs' names (`seqtr_lib.runtime` reads it).

The exported weights are the checkpoint's EMA weights (raw when it has none) in float32, with every DarkNet
BatchNorm folded into its convolution (`seqtr_lib.execution.fold_batchnorm`): the runtimes fold it too.
The expression encoder's GRU runs over packed sequences in PyTorch, which no exchange format holds; the export
runs it as two one-direction GRUs, the backward one over each expression's words reversed in place
(`UnpackedLanguage`), which is the same arithmetic.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqtr_lib import checkpoint as ckpt
from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.model.language import LanguageEncoder
from seqtr_lib.model.seqtr import SeqTR
from seqtr_lib.text import PAD_ID, UNK_ID

FORMAT = 1  # manifest.json's "format": bumped when the graphs' inputs or outputs change
OPSET = 18
ENCODER, STEP, EMBEDDINGS, MANIFEST = "encoder.onnx", "decoder_step.onnx", "embeddings.npz", "manifest.json"
ENCODER_INT8 = "encoder_int8.onnx"


class UnpackedLanguage(nn.Module):
    """`LanguageEncoder` without packed sequences: the same weights and the same result, in operations an
    exchange format holds. The forward GRU reads the padded words (trailing padding never reaches a word's
    output); the backward GRU reads each expression's words in reverse order, padding still trailing, and its
    outputs are put back in word order."""

    def __init__(self, language: LanguageEncoder) -> None:
        super().__init__()
        gru = language.gru
        self.embedding = language.embedding
        self.forward_gru = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True)
        self.backward_gru = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True)
        names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        state = gru.state_dict()
        self.forward_gru.load_state_dict({name: state[name] for name in names})
        self.backward_gru.load_state_dict({name: state[f"{name}_reverse"] for name in names})

    def forward(self, expression_ids: torch.Tensor) -> torch.Tensor:
        empty = (expression_ids == PAD_ID).all(dim=1, keepdim=True)
        first = torch.where(empty, UNK_ID, expression_ids[:, :1])  # as LanguageEncoder: no words -> one UNK
        expression_ids = torch.cat([first, expression_ids[:, 1:]], dim=1)
        valid = expression_ids != PAD_ID
        lengths = valid.sum(dim=1, keepdim=True)
        steps = torch.arange(expression_ids.shape[1], device=expression_ids.device)[None]
        reverse = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, L): its own inverse
        words = self.embedding(expression_ids)
        forward_outputs, _ = self.forward_gru(words)
        reversed_outputs, _ = self.backward_gru(words.gather(1, reverse[..., None].expand_as(words)))
        backward_outputs = reversed_outputs.gather(1, reverse[..., None].expand_as(reversed_outputs))
        outputs = torch.cat([forward_outputs, backward_outputs], dim=-1)
        return outputs.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)


class EncoderGraph(nn.Module):
    """What `encoder.onnx` computes: `SeqTR.encode`, `SeqTR.start` and each decoder layer's memory keys."""

    def __init__(self, model: SeqTR) -> None:
        super().__init__()
        self.model = model
        aids = model.aids
        self.selects_query = aids is not None and aids.query_projection is not None

    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor, expression_ids: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        model = self.model
        memory = model.encode(images, pad_mask, expression_ids)
        keys, values = zip(*(layer.memory_keys(memory.features, memory.position) for layer in model.decoder.layers))
        outputs = (model.start(memory), torch.stack(keys), torch.stack(values), ~memory.padding[:, None, None, :])
        return (*outputs, model.aids.cell_logits(memory)) if self.selects_query else outputs


class StepGraph(nn.Module):
    """What `decoder_step.onnx` computes: `Decoder.step` and the predictor, the cache written out of place."""

    def __init__(self, model: SeqTR) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, index: torch.Tensor, self_keys: torch.Tensor, self_values: torch.Tensor,
                memory_keys: torch.Tensor, memory_values: torch.Tensor, memory_attend: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        decoder = self.model.decoder
        position = decoder.position(index)[None]  # (1, 1, D)
        slots = torch.arange(decoder.max_length, device=x.device)
        self_attend = slots[None, :] <= index  # (1, T)
        written = (slots == index)[None, None, :, None]  # (1, 1, T, 1): the slot this position's key goes to
        new_keys, new_values = [], []
        for number, layer in enumerate(decoder.layers):
            keys, values = layer.self_attention.project_keys(x + position, x)  # (B, nh, 1, hs)
            new_keys.append(torch.where(written, keys, self_keys[number]))
            new_values.append(torch.where(written, values, self_values[number]))
            x = layer.attend_step(x, position, new_keys[-1], new_values[-1], self_attend, memory_keys[number],
                                  memory_values[number], memory_attend)
        return self.model.predictor(decoder.norm(x)[:, 0]), torch.stack(new_keys), torch.stack(new_values)


def export_model(model: SeqTR, payload: dict[str, Any], out: str | Path, source: str = "") -> Path:
    """Write ``model`` (built from checkpoint ``payload``'s config and vocabulary) to the folder ``out``.

    The folder is written beside its final place and renamed into it, so an interrupted export leaves no half
    folder; an existing export there is kept under a dated name (`seqtr_lib.checkpoint.keep_earlier_file`).
    """
    from seqtr_lib.execution import fold_batchnorm

    out = Path(out)
    model = fold_batchnorm(model.float().cpu()).eval()
    model.language = UnpackedLanguage(model.language)
    layout, decoder = model.layout, model.decoder
    attention = decoder.layers[0].self_attention
    heads, d_model = attention.num_heads, decoder.norm.normalized_shape[0]
    max_token = int(payload["max_token"])
    staging = out.with_name(f".{out.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # Batch 2 and a non-square size, so that no size is specialised to 1 or to a square by the trace.
    batch, height, width = 2, 64, 96
    images = torch.rand(batch, 3, height, width) * 255
    pad_mask = torch.zeros(batch, height, width, dtype=torch.bool)
    pad_mask[1, :, width // 2:] = True
    ids = torch.full((batch, max_token), PAD_ID, dtype=torch.int64)
    ids[:, :2] = 4
    encoder = EncoderGraph(model).eval()
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    rows, columns = torch.export.Dim("rows", min=1, max=256), torch.export.Dim("columns", min=1, max=256)
    outputs = ["start", "memory_keys", "memory_values", "memory_attend"] + (["cell_logits"] if encoder.selects_query else [])
    with torch.no_grad():
        torch.onnx.export(encoder, (images, pad_mask, ids), staging / ENCODER, dynamo=True, opset_version=OPSET,
                          input_names=["images", "pad_mask", "expression_ids"], output_names=outputs,
                          dynamic_shapes={"images": {0: batch_dim, 2: 32 * rows, 3: 32 * columns},
                                          "pad_mask": {0: batch_dim, 1: 32 * rows, 2: 32 * columns},
                                          "expression_ids": {0: batch_dim}},
                          external_data=False, verbose=False)
        start, memory_keys, memory_values, memory_attend = encoder(images, pad_mask, ids)[:4]
        cache = torch.zeros(len(decoder.layers), batch, heads, decoder.max_length, d_model // heads)
        step_inputs = (start, torch.zeros(1, dtype=torch.int64), cache, cache.clone(), memory_keys, memory_values,
                       memory_attend)
        cells = torch.export.Dim("cells", min=1, max=65536)
        torch.onnx.export(StepGraph(model).eval(), step_inputs, staging / STEP, dynamo=True, opset_version=OPSET,
                          input_names=["input", "index", "self_keys", "self_values", "memory_keys", "memory_values",
                                       "memory_attend"],
                          output_names=["logits", "new_self_keys", "new_self_values"],
                          dynamic_shapes={"x": {0: batch_dim}, "index": None, "self_keys": {1: batch_dim},
                                          "self_values": {1: batch_dim}, "memory_keys": {1: batch_dim, 3: cells},
                                          "memory_values": {1: batch_dim, 3: cells},
                                          "memory_attend": {0: batch_dim, 3: cells}},
                          external_data=False, verbose=False)
    tables = {"token_embedding": model.token_embedding.weight.detach().numpy()}
    if model.task_embedding is not None:
        tables["task_embedding"] = model.task_embedding.weight.detach().numpy()
    np.savez(staging / EMBEDDINGS, **tables)
    manifest = {
        "format": FORMAT, "source": source, "config": payload["config"], "vocabulary": payload["vocabulary"],
        "weights": payload["weights"], "max_token": max_token, "image_size": payload["image_size"],
        "layout": {"task": layout.task, "num_bin": layout.num_bin, "vocab_size": layout.vocab_size,
                   "eos": layout.eos, "decoder_length": decoder.max_length},
        "cache": {"layers": len(decoder.layers), "heads": heads, "head_size": d_model // heads, "d_model": d_model},
        "stride": model.fusion.stride, "cell_logits": encoder.selects_query,
        "graphs": {"encoder": ENCODER, "step": STEP, "embeddings": EMBEDDINGS}, "opset": OPSET,
        "torch": torch.__version__, "export_seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(staging / MANIFEST, manifest)
    ckpt.keep_earlier_file(out, holding="*")  # a folder with anything in it is an earlier export: kept
    staging.rename(out)
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, weights: str = "ema") -> Path:
    """`export_model` of a checkpoint's ``weights`` ("ema", the default, falls back to "raw" when it has none)."""
    from seqtr_lib.evaluation import load_trained

    experiment, vocabulary, models = load_trained(checkpoint, "cpu")
    chosen = weights if weights in models else "raw"
    payload = ckpt.load(checkpoint)
    summary = {"config": payload["config"], "vocabulary": vocabulary.to_list(), "weights": chosen,
               "max_token": experiment.max_token, "image_size": experiment.data.image_size}
    return export_model(models[chosen], summary, out, source=str(checkpoint))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an export folder, with a clear error for a folder that holds none or an old format."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST}: write an export there with "
                                f"`python -m seqtr_lib export --checkpoint CHECKPOINT --out {directory}`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is export format {manifest.get('format')}, this code reads format {FORMAT}: "
                         "export the checkpoint again")
    return manifest


def quantize_encoder(directory: str | Path, batches: Iterable[dict[str, np.ndarray]], description: str) -> Path:
    """Write ``encoder_int8.onnx`` beside an export's encoder: every convolution with int8 weights (per output
    channel) and int8 activations, as quantize/dequantize pairs (QDQ) that OpenVINO runs as int8 kernels.

    The activation ranges are calibrated on ``batches`` (the encoder's inputs as numpy arrays: images of the
    checkpoint's own dataset, with their expressions); ``description`` says which, in the manifest. The decoder
    step stays float32, and so does everything outside the convolutions (the transformer, the fusion's gate).
    Whether the int8 encoder keeps a model's answers is measured, not assumed (`seqtr_lib.runtime`'s recheck,
    benchmarks/cpu_agreement.py --exported).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    directory = Path(directory)
    manifest = read_manifest(directory)
    feed = iter(batches)
    count = 0

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            nonlocal count
            batch = next(feed, None)
            count += 0 if batch is None else len(batch["images"])
            return batch

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(directory / manifest["graphs"]["encoder"]), str(prepared), skip_symbolic_shape=True)
        partial = directory / f".{ENCODER_INT8}.partial"
        quantize_static(str(prepared), str(partial), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=["Conv"], activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    if not count:
        partial.unlink(missing_ok=True)
        raise ValueError(f"no calibration images: {description} gave no batch")
    partial.replace(directory / ENCODER_INT8)
    manifest["graphs"]["encoder_int8"] = ENCODER_INT8
    manifest["int8"] = {"calibration": description, "images": count,
                        "seconds": round(time.perf_counter() - started, 1)}
    manifest.pop("agreement", None)  # measured on the previous int8 encoder, if any
    write_json_atomic(directory / MANIFEST, manifest)
    return directory / ENCODER_INT8


def calibration_batches(directory: str | Path, data_root: str | Path, split: str = "train", count: int = 64,
                        batch_size: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """The encoder inputs of the first ``count`` expressions of ``split`` of the export's dataset read from
    ``data_root`` (the params' data section, as trained), as the evaluation transform makes them."""
    import dataclasses

    from seqtr_lib.config import experiment_from_dict
    from seqtr_lib.data.refer import build_dataset
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.text import Vocabulary

    manifest = read_manifest(directory)
    experiment = experiment_from_dict(manifest["config"], source=str(directory))
    data = dataclasses.replace(experiment.data, data_root=str(data_root), eval_batch_size=batch_size, num_workers=0)
    experiment = dataclasses.replace(experiment, data=data)
    dataset = build_dataset(experiment, split, Vocabulary.from_list(manifest["vocabulary"]), training=False)
    seen = 0
    for batch in build_loader(dataset, experiment, training=False, seed=0, epoch=0):
        if not batch["metas"]:
            continue
        take = min(len(batch["metas"]), count - seen)
        yield {"images": batch["images"][:take].float().numpy(), "pad_mask": batch["pad_mask"][:take].numpy(),
               "expression_ids": batch["expression_ids"][:take].numpy()}
        seen += take
        if seen >= count:
            return
