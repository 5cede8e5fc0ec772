"""Checkpoints of the original SeqTR code (sean-zhuh/SeqTR): import its release files, export ours to them.

The architectures match parameter for parameter; only names differ, and the original packs each
attention's query, key and value projections into one ``in_proj`` tensor. `original_name` is the one
rule: it maps each of our state-dict keys to the original key (and row block) that holds it, so
importing reads through it and exporting writes through it, and both check that every tensor is used
exactly once.

A release file (``det_best.pth``) is the original trainer's ``torch.save`` dict: ``state_dict``, an
optional ``ema_state_dict``, optimizer, scheduler, epoch and score entries; keys start with ``module.``
when it was trained with DDP. Files are read with weights-only loading, so pickled code never runs.
Its word-embedding rows follow the vocabulary it was trained with (``token_to_ix.pkl``, or the
annotation file's words rebuilt in the original's order: see `seqtr_lib.data.refer.original_vocabulary`).
"""

from __future__ import annotations

import datetime
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from seqtr_lib.atomic import atomic_write
from seqtr_lib.checkpoint import (CHECKPOINT_FORMAT, UnreadableCheckpoint, keep_earlier_file, load_weights_only,
                                  save_atomic)
from seqtr_lib.config import Experiment, experiment_to_dict
from seqtr_lib.model.seqtr import build_model, without_weight_files
from seqtr_lib.text import SPECIAL_TOKENS, Vocabulary

# The original DarkNet's 14 top-level modules, in order, by our names.
DARKNET_MODULES = ("stem", "down1", "stage1", "down2", "stage2", "down3", "stage3", "down4", "stage4",
                   "down5", "stage5", "neck", "neck_reduce", "neck_expand")
_RESIDUAL_PART = {"reduce": "0", "expand": "1"}
_CONV_BN = {"0": "conv", "1": "bn"}  # our Sequential(conv, bn) positions in the fusion
_FUSION = {"down_large": "down_bot2mid", "down_middle": "down_mid2top", "project_small": "top_project"}
_ATTENTION = {"self_attention": "self_attn", "cross_attention": "multihead_attn"}
_PROJECTIONS = ("query", "key", "value")  # row blocks 0, 1, 2 of in_proj_weight / in_proj_bias
_FEED_FORWARD = {"0": "linear1", "3": "linear2"}
TRANSFORMER = "head.transformer"


class OriginalCheckpointError(ValueError):
    """A file that is not an original SeqTR checkpoint matching the params (the message says why)."""


def original_name(key: str) -> tuple[str, int | None]:
    """The original state-dict key holding our ``key``, and its row block in a packed ``in_proj`` (else None).

    Raises OriginalCheckpointError for our parts the original does not have (the from-scratch departures,
    the multi-task embedding).
    """
    part, _, rest = key.partition(".")
    if part == "backbone":
        match = re.fullmatch(r"layers\.(\w+)\.(.+)", rest)
        name, tail = match.groups() if match else ("", "")
        if name not in DARKNET_MODULES:
            raise OriginalCheckpointError(f"{key}: not a DarkNet module of the original")
        prefix = f"vis_enc.darknet.{DARKNET_MODULES.index(name)}"
        if name.startswith("stage"):
            block, role, tail = tail.split(".", 2)
            return f"{prefix}.module_list.{block}.{_RESIDUAL_PART[role]}.{tail}", None
        if name == "neck":  # five convolutions without shortcuts, stored two per original block
            index, tail = tail.split(".", 1)
            return f"{prefix}.module_list.{int(index) // 2}.{int(index) % 2}.{tail}", None
        return f"{prefix}.{tail}", None
    if part == "language":
        module, _, tail = rest.partition(".")
        return f"lan_enc.{'lstm' if module == 'gru' else module}.{tail}", None
    if part == "fusion":
        module, _, tail = rest.partition(".")
        if module in _FUSION:
            index, position, tail = tail.split(".", 2)
            return f"fusion.{_FUSION[module]}.{index}.{_CONV_BN[position]}.{tail}", None
        if module in ("input_proj", "input_norm"):
            return f"{TRANSFORMER}.input_proj.{'conv' if module == 'input_proj' else 'gn'}.{tail}", None
    if part in ("encoder", "decoder"):
        if rest.startswith("position."):
            return f"{TRANSFORMER}.seq_positional_encoding.embedding.{rest.split('.', 1)[1]}", None
        if rest.startswith("norm."):
            return f"{TRANSFORMER}.{part}.{rest}", None
        match = re.fullmatch(r"layers\.(\d+)\.(\w+)\.(.+)", rest)
        if match:
            layer, module, tail = match.groups()
            prefix = f"{TRANSFORMER}.{part}.layers.{layer}"
            if module in _ATTENTION:
                projection, parameter = tail.split(".")
                if projection in _PROJECTIONS:
                    return f"{prefix}.{_ATTENTION[module]}.in_proj_{parameter}", _PROJECTIONS.index(projection)
                return f"{prefix}.{_ATTENTION[module]}.out_proj.{parameter}", None
            if module == "feed_forward":
                index, parameter = tail.split(".")
                return f"{prefix}.{_FEED_FORWARD[index]}.{parameter}", None
            return f"{prefix}.{module}.{tail}", None  # norm1, norm2, norm3
    if part == "token_embedding":
        return f"{TRANSFORMER}.query_embedding.{rest}", None
    if part == "predictor":
        index, parameter = rest.split(".")
        return f"head.predictor.{int(index) // 2}.fc.{parameter}", None
    raise OriginalCheckpointError(
        f"{key}: the original SeqTR has no such parameter (departures such as model.target_cell_loss, "
        "model.query_selection, model.scene_loss and model.memory_stride 16, and the multi-task embedding, "
        "cannot be exported)")


def _block(tensor: torch.Tensor, block: int | None, blocks: int = len(_PROJECTIONS)) -> torch.Tensor:
    if block is None:
        return tensor
    rows = tensor.shape[0] // blocks
    return tensor[block * rows : (block + 1) * rows]


def read_release(path: str | Path) -> dict[str, Any]:
    """A release file's dict, loaded weights-only (no pickled code runs); one-line errors naming the file."""
    try:
        payload = load_weights_only(path, "PyTorch checkpoint")
    except UnreadableCheckpoint as error:
        raise OriginalCheckpointError(str(error)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise OriginalCheckpointError(f"{path} has no 'state_dict' entry: not an original SeqTR checkpoint "
                                      f"(entries: {sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__})")
    return payload


def _without_ddp_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: tensor for key, tensor in state.items()}
    return dict(state)


def to_ours(original: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Map an original state dict onto the keys and shapes of ``expected`` (our model's state dict).

    Every original tensor must be used (each packed ``in_proj`` by its three blocks) and every shape must
    fit; the first mismatch is named with both shapes.
    """
    state, used = {}, set()
    for key, ours in expected.items():
        name, block = original_name(key)
        if name not in original:
            raise OriginalCheckpointError(f"{source}: has no {name!r} (needed for our {key}); is it a SeqTR "
                                          "checkpoint of this architecture?")
        tensor = _block(original[name], block)
        if tensor.shape != ours.shape:
            raise OriginalCheckpointError(
                f"{source}: {name} has shape {tuple(original[name].shape)}, but the params need "
                f"{tuple(ours.shape) if block is None else (3 * ours.shape[0], *ours.shape[1:])} for {key} "
                "(another task, num_bin, num_ray or model size?)")
        state[key] = tensor.to(ours.dtype).clone()
        used.add(name)
    unused = [name for name in original if name not in used]
    if unused:
        raise OriginalCheckpointError(f"{source}: {len(unused)} tensors have no place in the model of these params, "
                                      f"first {unused[0]!r} {tuple(original[unused[0]].shape)}")
    return state


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the original's names, attention projections packed into ``in_proj`` again, in
    float32 as the original stores it (released weights of ours are half precision)."""
    packed: dict[str, list[torch.Tensor | None]] = {}
    original: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        name, block = original_name(key)
        if block is None:
            original[name] = tensor.clone()
        else:
            packed.setdefault(name, [None] * len(_PROJECTIONS))[block] = tensor
            original.setdefault(name, tensor)  # keeps the original's key order; replaced below
    for name, blocks in packed.items():
        if any(block is None for block in blocks):
            raise OriginalCheckpointError(f"{name}: query, key and value must all be present to pack them")
        original[name] = torch.cat(blocks, dim=0)
    return original


def check_vocabulary(vocabulary: Vocabulary, original: dict[str, torch.Tensor], source: str) -> None:
    rows = original["lan_enc.embedding.weight"].shape[0] if "lan_enc.embedding.weight" in original else None
    if rows is not None and rows != len(vocabulary):
        raise OriginalCheckpointError(
            f"{source}: its word embedding has {rows} rows, but the vocabulary has {len(vocabulary)} words; give "
            "the token_to_ix.pkl the model was trained with (--token-to-ix), or the annotation file it was built from")


def import_release(path: str | Path, experiment: Experiment, vocabulary: Vocabulary, out: str | Path) -> Path:
    """Convert an original release file into one of our checkpoints (weights, EMA weights, config, vocabulary);
    a file already at ``out`` is moved aside (`keep_earlier_file`)."""
    payload = read_release(path)
    source = str(path)
    model = build_model(without_weight_files(experiment.model), vocabulary)
    expected = model.state_dict()
    converted = {}
    for ours, theirs in (("model", "state_dict"), ("ema", "ema_state_dict")):
        if isinstance(payload.get(theirs), dict):
            original = _without_ddp_prefix(payload[theirs])
            check_vocabulary(vocabulary, original, f"{source} ({theirs})")
            converted[ours] = to_ours(original, expected, f"{source} ({theirs})")
    epoch = payload.get("epoch")
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "config": experiment_to_dict(experiment), "vocabulary": vocabulary.to_list(),
        "epoch": int(epoch) if isinstance(epoch, int) else 0, "step": 0, **converted,
        "imported_from": {"file": Path(path).name, "date": datetime.date.today().isoformat(),
                          "scores": {k: payload[k] for k in ("d_acc", "miou", "best_d_acc", "best_miou")
                                     if isinstance(payload.get(k), (int, float))}},
    }
    keep_earlier_file(out)
    return save_atomic(checkpoint, out)


def export_release(checkpoint: dict[str, Any], out: str | Path) -> Path:
    """Write our checkpoint as an original release file (``state_dict``, ``ema_state_dict`` when present)
    and the ``token_to_ix.pkl`` of its vocabulary beside it."""
    release: dict[str, Any] = {"state_dict": to_original(checkpoint.get("model") or checkpoint["ema"]),
                               "epoch": int(checkpoint.get("epoch", 0)), "amp": False}
    if checkpoint.get("ema") is not None:
        release["ema_state_dict"] = to_original(checkpoint["ema"])
    out = save_atomic(release, out)
    words = checkpoint["vocabulary"]
    names = dict(zip(SPECIAL_TOKENS, ("PAD", "UNK", "CLS")))
    table = {names.get(word, word): index for index, word in enumerate(words)}
    with atomic_write(out.parent / "token_to_ix.pkl", "wb") as file:
        pickle.dump(table, file)
    return out
