"""Checkpoints: plain values and tensors only (``torch.load(weights_only=True)``), written atomically.

A checkpoint is a dict::

    format         CHECKPOINT_FORMAT
    config         experiment_to_dict(experiment): the architecture is taken from here on resume
    vocabulary     list of words (PAD, UNK, CLS first)
    model, ema     state dicts (ema absent when EMA is off)
    optimizer, scheduler, scaler   state dicts (scaler only with fp16)
    epoch          epochs finished; with batches_done > 0 the epoch `epoch` is partly done
    batches_done   batches of epoch `epoch` already trained (mid-epoch checkpoints)
    step           optimizer steps so far
    rng            python / numpy / torch / cuda generator states
    best           the best validation score so far and the epoch it came from

A released checkpoint (`export_weights`, the files in weights/) keeps only format, config, vocabulary,
epoch, step and the EMA weights in half precision: everything `evaluation.load_trained` needs.

Nothing trained is written over: a new run moves an earlier run's folder aside (`keep_earlier_run`), and a
weights file about to be replaced is moved aside too (`keep_earlier_file`).
"""

from __future__ import annotations

import datetime
import math
import pickle
import random
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqtr_lib.atomic import atomic_write
from seqtr_lib.config import REPOSITORY

CHECKPOINT_FORMAT = 1
# Weights trained by the project and committed with it, by experiment name (README, "Results").
RELEASED_DIR = REPOSITORY / "weights"


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_write(path, "wb") as file:
        torch.save(payload, file)
    return Path(path)


class UnreadableCheckpoint(ValueError):
    """A file that weights-only loading refuses or cannot read; the one-line message names it and why."""


def load_weights_only(path: str | Path, kind: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a file: tensors and plain data only, so no pickled code runs.

    ``kind`` names the file in messages ("seqtr checkpoint", "PyTorch checkpoint"). Raises FileNotFoundError,
    and UnreadableCheckpoint for a file that is no torch.save archive (a truncated download looks like
    that), one holding pickled objects (naming the first), or one torch cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise UnreadableCheckpoint(f"{path} is not a readable {kind} (not the zip archive that torch.save "
                                   "writes); is the file complete?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        raise UnreadableCheckpoint(
            f"{path}: refused: it holds pickled objects other than tensors and plain data, and loading them "
            f"could run code ({f'first: {found.group(1)}' if found else 'weights-only loading failed'})") from None
    except Exception as error:  # a damaged archive member, ...
        # torch's own message runs over many lines and suggests weights_only=False, which is unsafe here.
        first_line = str(error).splitlines()[0][:120] if str(error) else "no message"
        raise UnreadableCheckpoint(f"{path} is not a readable {kind} ({type(error).__name__}: {first_line}); "
                                   "is the file complete?") from None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints weights-only; explain what is wrong when it is not one of ours."""
    payload = load_weights_only(path, "seqtr checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a seqtr checkpoint (format {CHECKPOINT_FORMAT} expected)")
    for key in ("model", "ema"):
        if isinstance(payload.get(key), dict):
            payload[key] = with_aids_prefixed(payload[key])
    return payload


# The training aids' modules were attributes of SeqTR itself before they moved into `SeqTR.aids`
# (seqtr_lib/model/aids.py): checkpoints of that time (weights/*.pt among them) name them without "aids.".
AID_MODULES = ("cell_scorer", "query_projection", "scene_head", "colour_pathway", "colour_head", "word_head")


def with_aids_prefixed(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict whose training-aid tensors are named as today (under ``aids.``), in the same order."""
    return {f"aids.{name}" if name.split(".", 1)[0] in AID_MODULES else name: value for name, value in state.items()}


# The one tensor whose shape follows the task's sequence length (the decoder's learned query positions:
# 5 for a box, 2 x num_ray + 1 for a mask), so a box checkpoint can start a mask run.
SEQUENCE_LENGTH_KEYS = ("decoder.position.weight",)
# The tensors with a row per output token (num_bin coordinate bins, then EOS): the input embedding and the
# predictor's last layer. A checkpoint with coarser bins starts a finer model through `refine_bins`.
VOCABULARY_KEYS = ("token_embedding.weight", "predictor.4.weight", "predictor.4.bias")


def refine_bins(table: torch.Tensor, num_bin: int, factor: int, logit_bias: bool = False) -> torch.Tensor:
    """A (num_bin + 1, ...) table (coordinate bins, then EOS) for ``factor`` x num_bin bins.

    Fine bin j takes coarse bin j // factor's row (it covers the same pixels), EOS keeps its row. For the
    output bias, log(factor) is taken off each copy, so the probability the coarse model gave a bin is
    split evenly among its fine bins and EOS keeps its probability.
    """
    bins = table[:num_bin].repeat_interleave(factor, dim=0)
    if logit_bias:
        bins = bins - math.log(factor)
    return torch.cat([bins, table[num_bin:]])


def finetune_state(model_state: dict[str, torch.Tensor], source_state: dict[str, torch.Tensor],
                   source_name: str | Path, num_bins: tuple[int, int] | None = None, separator_added: bool = False,
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict that starts a fine-tuning run from ``source_state`` (``source_name`` in messages).

    Every tensor must match the new model's name and shape, except: those of ``SEQUENCE_LENGTH_KEYS``,
    which keep the new model's initialisation when their length differs (a box checkpoint starting a
    mask run); and, with ``num_bins`` = (the source's num_bin, this model's), those of
    ``VOCABULARY_KEYS``, refined by `refine_bins` when this model's bins are a whole multiple of the
    source's. ``separator_added``: this model is generalised and the source is not (docs/method.md, section 11):
    the token tables gain their last row, the separator, from this model's initialisation (the bins and EOS keep
    their ids). Returns the state to load and the names kept fresh; raises ValueError naming the first tensor
    that does not fit and the setting that likely differs.
    """
    missing = [name for name in model_state if name not in source_state]
    unexpected = [name for name in source_state if name not in model_state]
    if missing or unexpected:
        raise ValueError(f"{source_name} does not fit this model: tensors missing {len(missing)} (first: "
                         f"{missing[:1]}), unexpected {len(unexpected)} (first: {unexpected[:1]}); its model "
                         "options (e.g. memory_stride, scene_loss, layer counts, a multi task's task "
                         "embedding) must match the params'")
    source_bin, target_bin = num_bins or (1, 1)
    if target_bin % source_bin:
        raise ValueError(f"{source_name} has {source_bin} bins and this model {target_bin}: fine-tuning can refine the "
                         f"bins only by a whole factor (model.num_bin = {source_bin} x k)")
    factor = target_bin // source_bin
    state, fresh = {}, []
    for name, tensor in model_state.items():
        loaded = source_state[name]
        if name in VOCABULARY_KEYS and factor > 1:
            loaded = refine_bins(loaded.float(), source_bin, factor, logit_bias=name.endswith(".bias"))
        if name in VOCABULARY_KEYS and separator_added:
            loaded = torch.cat([loaded.to(tensor.dtype), tensor[-1:]])
        if loaded.shape == tensor.shape:
            state[name] = loaded
        elif name in SEQUENCE_LENGTH_KEYS and loaded.shape[1:] == tensor.shape[1:]:
            state[name], fresh = tensor, [*fresh, name]
        else:
            raise ValueError(f"{source_name}: {name} has shape {tuple(loaded.shape)} there and "
                             f"{tuple(tensor.shape)} in this model; its model options (e.g. darknet_width, "
                             "d_model, num_bin) must match the params'")
    return state, fresh


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, as tensors and plain values."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [kind, torch.from_numpy(np_keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested config dicts, as 'key: saved -> current'."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences


def export_weights(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the EMA (else raw) weights of a training checkpoint as a small released checkpoint.

    Floating-point tensors are stored in half precision (the model converts them back on loading);
    the optimizer, RNG states and history are dropped. A file already at ``out`` is moved aside.
    """
    payload = load(checkpoint)
    weights = payload.get("ema") or payload["model"]
    released = {key: payload[key] for key in ("format", "config", "vocabulary", "epoch", "step")}
    released["ema"] = {name: t.half() if t.is_floating_point() else t for name, t in weights.items()}
    keep_earlier_file(out)
    return save_atomic(released, out)


def dated(path: Path) -> str:
    """``path (file dated 2026-12-07 05:41)``: the file's modification time, local, so that a reader can tell
    one run's checkpoint from another's."""
    return f"{path} (file dated {datetime.datetime.fromtimestamp(path.stat().st_mtime):%Y-%m-%d %H:%M})"


def resolve_checkpoint(run_dir: Path, name: str, checkpoint: str | Path = "") -> tuple[Path, str]:
    """The checkpoint to show: ``checkpoint`` if given, else the run's best.pt, else the released weights.

    Returns the path and a sentence saying which one it is and its date (`dated`); raises FileNotFoundError
    naming all three.
    """
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path, f"using checkpoint {dated(path)}"
    own = Path(run_dir) / "best.pt"
    if own.is_file():
        return own, f"using your own run {dated(own)}"
    released = RELEASED_DIR / f"{name}.pt"
    if released.is_file():
        return released, (f"using the released weights {dated(released)}: no run of yours at {own} (train one "
                          "with 01_train.ipynb or `python -m seqtr_lib train`)")
    raise FileNotFoundError(f"no checkpoint: {own} does not exist and there are no released weights "
                            f"{released}; run 01_train.ipynb with the same params_file and overrides first, "
                            "or set the checkpoint parameter")


def move_aside(path: str | Path, holding: str = "*.pt") -> Path | None:
    """Rename what a new result would replace, beside it, stamped with the time: a folder holding checkpoints
    (``*.pt``, or what the pattern ``holding`` matches) becomes ``<name>.<YYYYmmdd-HHMMSS>``, a file ``<stem>.<YYYYmmdd-HHMMSS><suffix>``; ``-2``,
    ``-3`` ... follow the stamp when that name is taken (nothing is renamed onto anything). Returns the new
    path, or None when there was nothing to keep (no such path, or a folder without checkpoints)."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.glob(holding))):
        return None
    stem, suffix = (path.name, "") if path.is_dir() else (path.stem, path.suffix)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, number = path.with_name(f"{stem}.{stamp}{suffix}"), 1
    while target.exists() or target.is_symlink():  # rename() would replace an empty folder or a file
        number += 1
        target = path.with_name(f"{stem}.{stamp}-{number}{suffix}")
    path.rename(target)
    return target


def resumes_in(run_dir: str | Path, resume: str | Path | None) -> bool:
    """Whether ``resume`` (train.resume) is a checkpoint of the folder ``run_dir``: that run continues there."""
    return bool(resume) and Path(resume).resolve().parent == Path(run_dir).resolve()


def keep_earlier_run(run_dir: str | Path, resume: str | Path | None = None) -> str | None:
    """Before a run writes into ``run_dir``: unless it resumes a checkpoint of that folder (`resumes_in`), an
    earlier run there is moved aside (`move_aside`). Returns the line to print (the folder, where it went, how
    to continue it instead), or None when nothing moved."""
    if resumes_in(run_dir, resume) or (moved := move_aside(run_dir)) is None:
        return None
    line = f"an earlier run was in {run_dir}: moved it to {moved}, not overwritten"
    if (moved / "last.pt").is_file():
        line += f"; to continue it instead, train with --set train.resume={moved / 'last.pt'}"
    return line


def keep_earlier_file(path: str | Path, holding: str = "*.pt") -> Path | None:
    """Move a file (or a folder holding ``holding``) about to be written over aside (`move_aside`), saying so in
    one line; returns where it went."""
    if (moved := move_aside(path, holding)) is not None:
        print(f"{path} existed: moved it to {moved}, not overwritten", flush=True)
    return moved
