"""Training: the SeqTR recipe (Adam + warm-up/multi-step LR, clip 0.15, EMA 0.999).

Runs alone or under torchrun::

    python -m seqtr_lib train --params params/synthetic_det.yaml
    python -m torch.distributed.run --nproc_per_node 8 -m seqtr_lib train --params params/refcoco-unc_det.yaml

Only rank 0 writes files. A new run never writes over an earlier one: a run folder holding checkpoints is
moved aside first (`Trainer._claim_run_dir`), and ``train.resume`` continues a run in its own folder.
Everything a run needs to continue is in ``last.pt`` (see checkpoint.py); SIGINT/SIGTERM write a resumable
``last.pt`` before exiting, and a non-finite loss stops the run without overwriting the last good checkpoint.
Evaluation of a finished checkpoint is `seqtr_lib.evaluation.evaluate`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from seqtr_lib import checkpoint as ckpt
from seqtr_lib import distributed
from seqtr_lib.codec import noisy_coordinates
from seqtr_lib.config import Experiment, ModelConfig, experiment_to_dict, repository_file
from seqtr_lib.data.datasets import DATASETS
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import ReferDataset, build_dataset, load_vocabulary, scene_classes
from seqtr_lib.evaluation import ANSWER_CAP_KEYS, autocast, evaluate_model, move_batch, prefetched
from seqtr_lib.metrics import headline_score
from seqtr_lib.loss import Criterion
from seqtr_lib.model.seqtr import SeqTR, build_model
from seqtr_lib.precompute import PrecomputedImages
from seqtr_lib.text import Vocabulary


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a resumable checkpoint was written."""


def lr_factor(epoch: int, warmup_epochs: int, decay_epochs: tuple[int, ...], decay_factor: float) -> float:
    """Learning-rate multiplier for an epoch: linear warm-up (e+1)/(w+1), then x decay_factor per milestone."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    return decay_factor ** sum(epoch >= milestone for milestone in decay_epochs)


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier of step ``step`` of ``total``: linear warm-up (step+1)/warmup over ``warmup``
    steps, then half a cosine from 1 down to 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


class ModelEMA:
    """Exponential moving average of a model's weights and float buffers.

    The decay ramps up as min(decay, (step+1)/(step+10)) so early averages are not dominated by the
    random initialisation (the reference's warm-up). Integer buffers are copied. The average follows
    the tensors of the model given at construction: build it after moving the model to its device and
    memory format.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        # The average's and the model's tensors, bound once: one foreach lerp per step instead of a Python
        # loop over the state dict (which cost about a tenth of a CPU training step). load_state_dict copies
        # in place, so they stay valid when a checkpoint is restored.
        current = model.state_dict(keep_vars=True)
        averaged = self.module.state_dict(keep_vars=True)
        floats = [name for name in averaged if averaged[name].dtype.is_floating_point]
        others = [name for name in averaged if not averaged[name].dtype.is_floating_point]
        self._float_averages = [averaged[name].detach() for name in floats]
        self._float_sources = [current[name].detach() for name in floats]
        self._other_pairs = [(averaged[name].detach(), current[name].detach()) for name in others]
        if any(a.dtype != c.dtype for a, c in zip(self._float_averages, self._float_sources)):
            raise ValueError("ModelEMA needs the model's floating-point tensors in one dtype with the average's")

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Blend the current weights of the model given at construction into the average."""
        decay = min(self.decay, (step + 1) / (step + 10))
        if self._float_averages:
            torch._foreach_lerp_(self._float_averages, self._float_sources, 1 - decay)
        for averaged, value in self._other_pairs:
            averaged.copy_(value)


@dataclass
class RunState:
    """Counters that a checkpoint carries."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    epoch_loss_sum: float = 0.0  # running sums of the current epoch, so a resumed epoch reports the same mean
    epoch_samples: int = 0
    skipped_images: int = 0  # unreadable images skipped so far (data.skip_bad_images)
    history: list[dict[str, Any]] = field(default_factory=list)


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a checkpoint can be written cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): no handler
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_batchnorm_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def load_finetune_start(model: SeqTR, model_config: ModelConfig, start: dict[str, Any], source_name: str) -> str:
    """Load the (EMA) weights of checkpoint ``start`` (named ``source_name`` in messages) into a new model of
    ``model_config``, through `checkpoint.finetune_state`; returns a line saying what was adapted."""
    config = start["config"]["model"]
    mapping = config.get("mapping", "relative")
    if mapping != model_config.mapping:
        raise ValueError(f"{source_name} uses the {mapping} coordinate mapping and this model the "
                         f"{model_config.mapping} one: its bins mean other pixels (set model.mapping to match)")
    num_bins = (config["num_bin"], model_config.num_bin)
    source_objects = start["config"].get("data", {}).get("max_objects", 0)
    if source_objects and not model.layout.generalised:
        raise ValueError(f"{source_name} is a generalised model (data.max_objects {source_objects}: answers of zero or "
                         "more objects); a model of one object per answer cannot start from it: set data.max_objects "
                         "in the params, or start from a checkpoint of one object per answer")
    separator_added = model.layout.generalised and not source_objects
    state, fresh = ckpt.finetune_state(model.state_dict(), start.get("ema") or start["model"], source_name, num_bins,
                                       separator_added)
    model.load_state_dict(state)
    notes = [f"fine-tuning from {source_name} (a {config['task']} model)"]
    if separator_added:
        notes.append("the separator token of the generalised answers initialised afresh")
    if num_bins[0] != num_bins[1]:
        notes.append(f"each of its {num_bins[0]} bins split into {num_bins[1] // num_bins[0]}")
    if fresh:
        notes.append(f"{', '.join(fresh)} initialised afresh (another sequence length)")
    return "; ".join(notes)


@dataclass
class RunStart:
    """Where a run starts: a checkpoint to resume (every weight, counter and generator state), or one whose
    weights start a fine-tuning run (train.finetune_from), or nothing; and the vocabulary that goes with it."""

    vocabulary: Vocabulary
    resume: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None

    @classmethod
    def read(cls, experiment: Experiment, vocabulary: Vocabulary | None = None) -> RunStart:
        """Read and check the params' start. ``vocabulary`` replaces the experiment's (benchmarks)."""
        t = experiment.train
        if t.resume:
            resume = ckpt.load(t.resume)
            differences = ckpt.config_differences(resume["config"]["model"], experiment_to_dict(experiment)["model"])
            stored = resume["config"].get("data", {})
            differences += [f"data.{key}: {stored.get(key, 0)} -> {getattr(experiment.data, key)}"
                            for key in ANSWER_CAP_KEYS  # the answer format: output classes, lengths
                            if stored.get(key, 0) != getattr(experiment.data, key)]
            if differences:
                raise ValueError(f"checkpoint {t.resume} was trained with a different model config; differing keys "
                                 f"(checkpoint -> params): {'; '.join(differences)}")
            # A resumed run restores every weight itself; the params' start checkpoint only starts new runs.
            return cls(Vocabulary.from_list(resume["vocabulary"]), resume=resume)
        if t.finetune_from:
            if vocabulary is not None:
                raise ValueError("a vocabulary given to the Trainer and train.finetune_from disagree on the word "
                                 f"table: the run would take {t.finetune_from}'s; drop one of them")
            start = ckpt.load(repository_file(t.finetune_from))
            # The word table's rows follow the checkpoint's vocabulary.
            return cls(Vocabulary.from_list(start["vocabulary"]), finetune=start)
        return cls(load_vocabulary(experiment) if vocabulary is None else vocabulary)


class Trainer:
    """One training run; ``train(experiment)`` is the public entry point.

    ``vocabulary`` (default: the experiment's, `load_vocabulary`) lets a benchmark train on batches of its
    own through `step`, the recipe's optimisation step, without an annotation file; the training split is
    read when the first epoch starts.
    """

    def __init__(self, experiment: Experiment, context: distributed.Context,
                 vocabulary: Vocabulary | None = None) -> None:
        self.experiment = experiment
        self.context = context
        self.device = context.device
        self.run_dir = experiment.run_dir
        start = RunStart.read(experiment, vocabulary)
        self.vocabulary = start.vocabulary
        seed_everything(experiment.train.seed)
        self.model = self._build_model(start)
        self.criterion = Criterion.from_config(experiment.model, scene_classes(experiment), self.model.layout)
        self.ema, self.optimizer, self.scheduler, self.scaler = self._build_optimisation()
        self.forward_model = self._forward_wrapper()
        self.state = RunState()
        if start.resume is not None:
            self._restore(start.resume)
        self._claim_run_dir()
        self.train_set: ReferDataset | None = None
        self.precomputed: PrecomputedImages | None = None  # data.precompute_images: the training images
        self.val_held: PrecomputedImages | None = None  # and the validation split's
        self.val_set: ReferDataset | None = None
        self.val_split = "val" if "val" in DATASETS[experiment.data.dataset].splits else None

    def _claim_run_dir(self) -> None:
        """Make the run folder this run's own, once everything is built (one of its start checkpoints may lie there).

        A run that resumes a checkpoint of the folder continues there and appends to its log. Any other run
        never writes over an earlier one: rank 0 moves a folder holding checkpoints aside (`ckpt.keep_earlier_run`,
        one printed line), then starts the log afresh, or with the log of the run it resumes from elsewhere. The
        other ranks wait for it, so that none touches the folder before it is free.
        """
        resume = self.experiment.train.resume
        if self.context.is_main:
            if line := ckpt.keep_earlier_run(self.run_dir, resume):
                print(line, flush=True)
            log = self.run_dir / "log.jsonl"
            if not resume:
                log.unlink(missing_ok=True)
            elif not ckpt.resumes_in(self.run_dir, resume) and (earlier := Path(resume).parent / "log.jsonl").is_file():
                self.run_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(earlier, log)
        distributed.barrier()

    def _build_model(self, start: RunStart) -> SeqTR:
        """The params' model, with the fine-tuning start's weights, on the device in its memory format."""
        t = self.experiment.train
        model = build_model(self.experiment.model, self.vocabulary, scene_classes(self.experiment),
                            self.experiment.data.max_objects, self.experiment.data.max_points)
        if start.finetune is not None:
            note = load_finetune_start(model, self.experiment.model, start.finetune, t.finetune_from)
            if self.context.is_main:
                print(note)
        if t.sync_batchnorm:
            model = distributed.synchronised_batchnorm(model, self.device, self.context.world_size)
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if t.channels_last else model

    def _build_optimisation(self) -> tuple[ModelEMA | None, torch.optim.Optimizer, Any, Any]:
        """The recipe's EMA, Adam, warm-up and step schedule, and (fp16 on CUDA) the gradient scaler."""
        t = self.experiment.train
        ema = ModelEMA(self.model, t.ema_decay) if t.ema else None
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        # The fused kernel updates every tensor in one call; torch's default on a CPU is a Python loop over
        # the tensors, a tenth of a small model's step there. Same update rule.
        optimizer = torch.optim.Adam(parameters, lr=t.lr, betas=t.betas, eps=t.eps, amsgrad=t.amsgrad,
                                     weight_decay=t.weight_decay, fused=self.device.type in ("cpu", "cuda"))
        # train.lr_schedule=cosine sets the rate before every step (train_one_epoch); the epoch scheduler then
        # only carries the base rate.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: 1.0 if t.lr_schedule == "cosine"
            else lr_factor(e, t.warmup_epochs, t.decay_epochs, t.decay_factor))
        scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" and self.device.type == "cuda" else None
        return ema, optimizer, scheduler, scaler

    def _forward_wrapper(self) -> nn.Module:
        """What the training step calls: the model, under DDP with several processes, compiled if asked."""
        forward_model: nn.Module = self.model
        if self.context.world_size > 1:
            forward_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(forward_model) if self.experiment.train.compile else forward_model

    def _restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        if self.ema is not None and "ema" in payload:
            self.ema.module.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        self.state = RunState(epoch=payload["epoch"], batches_done=payload["batches_done"], step=payload["step"],
                              best_score=payload["best"]["score"], best_epoch=payload["best"]["epoch"],
                              epoch_loss_sum=payload["epoch_loss"][0], epoch_samples=payload["epoch_loss"][1],
                              skipped_images=payload["skipped_images"],
                              history=list(payload.get("history", [])))
        ckpt.restore_rng_state(payload["rng"])

    def _payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "format": ckpt.CHECKPOINT_FORMAT,
            "config": experiment_to_dict(self.experiment),
            "vocabulary": self.vocabulary.to_list(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.state.epoch,
            "batches_done": self.state.batches_done,
            "step": self.state.step,
            "rng": ckpt.rng_state(),
            "best": {"score": self.state.best_score, "epoch": self.state.best_epoch},
            "epoch_loss": [self.state.epoch_loss_sum, self.state.epoch_samples],
            "skipped_images": self.state.skipped_images,
            "history": self.state.history,
        }
        if self.ema is not None:
            payload["ema"] = self.ema.module.state_dict()
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        return payload

    def _save(self, name: str) -> None:
        if self.context.is_main:
            ckpt.save_atomic(self._payload(), self.run_dir / name)

    def _log(self, record: dict[str, Any]) -> None:
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "log.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")

    def _batches(self, loader: Any) -> Iterator[tuple[int, dict[str, Any]]]:
        """The epoch's batches, skipping those a mid-epoch checkpoint already trained on."""
        for index, batch in enumerate(loader):
            if index >= self.state.batches_done:
                yield index, batch

    def _hold_images(self, dataset: ReferDataset) -> PrecomputedImages:
        """``dataset``'s images held in memory and attached to it (data.precompute_images)."""
        t = self.experiment.train
        held = PrecomputedImages.build(dataset, self.model, self.device, t.channels_last, t.amp,
                                       progress=self.context.is_main)
        held.attach(dataset)
        if self.context.is_main:
            print(held.describe())
        return held

    def train_one_epoch(self, stop: _StopRequest) -> dict[str, float]:
        t = self.experiment.train
        epoch = self.state.epoch
        if self.train_set is None:
            self.train_set = build_dataset(self.experiment, "train", self.vocabulary, training=True)
            if self.experiment.data.precompute_images:
                self.precomputed = self._hold_images(self.train_set)
        loader = build_loader(self.train_set, self.experiment, training=True, seed=t.seed, epoch=epoch)
        total = len(loader) if not t.max_steps_per_epoch else min(len(loader), t.max_steps_per_epoch)
        self.forward_model.train()
        if t.freeze_batchnorm:
            _set_batchnorm_eval(self.model)
        samples, started = 0, time.perf_counter()
        bar = tqdm(total=total, initial=self.state.batches_done, desc=f"epoch {epoch + 1}/{t.epochs}",
                   disable=not self.context.is_main, leave=False, dynamic_ncols=True)
        batches = self._batches(loader)
        if self.precomputed is not None:
            batches = ((index, self.precomputed.fill(batch)) for index, batch in batches)
        for index, batch in prefetched(batches, self.device, t.channels_last):
            if index >= total:
                break
            self.state.skipped_images += batch["num_skipped"]
            if not batch["metas"]:  # every image of the batch was unreadable (skip_bad_images)
                self.state.batches_done = index + 1
                continue
            if t.lr_schedule == "cosine":
                for group in self.optimizer.param_groups:
                    group["lr"] = t.lr * cosine_factor(epoch * total + index, t.epochs * total, t.warmup_epochs * total)
            losses = self.step(batch)
            self.state.batches_done = index + 1
            batch_size = len(batch["metas"]) * self.context.world_size
            loss_value = float(distributed.all_reduce_mean(losses["loss"]))
            self.state.epoch_loss_sum += loss_value * batch_size
            self.state.epoch_samples += batch_size
            samples += batch_size
            rate = samples / max(time.perf_counter() - started, 1e-9)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
            bar.update(1)
            if self.state.step % t.log_every == 0:
                self._log({"type": "step", "epoch": epoch, "step": self.state.step, "lr": lr,
                           **{k: float(distributed.all_reduce_mean(v)) for k, v in losses.items()},
                           "samples_per_s": rate})
            if t.checkpoint_every and self.state.step % t.checkpoint_every == 0:
                self._save("last.pt")
            if distributed.broadcast_flag(stop.requested, self.device):
                self._save("last.pt")
                raise TrainingInterrupted(f"stopped at step {self.state.step}; resume with "
                                          f"--set train.resume={self.run_dir / 'last.pt'}")
        bar.close()
        return {"loss": self.state.epoch_loss_sum / max(self.state.epoch_samples, 1), "samples": samples,
                "samples_per_s": samples / max(time.perf_counter() - started, 1e-9),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimisation step on a loader batch: to the device, forward, loss, backward, clip, optimizer
        and EMA updates. Returns the losses (``loss`` and its parts); raises NonFiniteLossError."""
        t = self.experiment.train
        batch = move_batch(batch, self.device, t.channels_last)
        held = (nullcontext() if self.precomputed is None
                else self.precomputed.frozen_outputs(self.model.backbone, batch))
        with autocast(self.device, t.amp), held:
            outputs = self.forward_model(**self._forward_inputs(batch))
        outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
        losses = self._losses(outputs, batch)
        loss = losses["loss"]
        if distributed.broadcast_flag(not bool(torch.isfinite(loss)), self.device):
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.step + 1} (epoch {self.state.epoch + 1}, batch "
                f"{self.state.batches_done + 1}); the last good checkpoint {self.run_dir / 'last.pt'} is kept. "
                "Try a lower train.lr or train.amp=none.")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if t.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.state.step)
        self.state.step += 1
        return losses

    def _forward_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The model's forward arguments from a batch: the teacher tokens (with ``input_token_noise``, a
        departure, that share of them randomised as inputs; the targets stay the batch's) and the entries the
        training aids read."""
        layout, noise = self.model.layout, self.experiment.model.input_token_noise
        inputs = {k: batch[k] for k in ("images", "pad_mask", "expression_ids")}
        for name in ("answer_tokens",) if layout.generalised else tuple(f"{part}_tokens" for part in layout.parts):
            tokens = batch[name]
            inputs[name] = noisy_coordinates(tokens, noise, layout.num_bin) if noise > 0 else tokens
        if self.model.aids is not None:
            inputs["aid_inputs"] = {key: batch[key] for key in self.model.aids.forward_keys}
        return inputs

    def _losses(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # Under DDP every term is divided by the global batch's counts over the processes, so that the objective
        # does not depend on how the batch is split (docs/training.md).
        shares = (lambda counts: distributed.count_shares(counts, self.device)) if self.context.world_size > 1 else None
        return self.criterion(outputs, batch, shares)

    def run(self, after_epoch: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Train the remaining epochs; ``after_epoch(record)`` sees each epoch's log record and may
        return True to stop early (the learning-curve benchmark stops at a wall-clock budget)."""
        t = self.experiment.train
        with _StopRequest() as stop:
            while self.state.epoch < t.epochs:
                record = self._run_epoch(stop)
                if after_epoch is not None and after_epoch(record):
                    break
        if self.state.skipped_images and self.context.is_main:
            print(f"skipped {self.state.skipped_images} unreadable training images (data.skip_bad_images)")
        return {"run_dir": str(self.run_dir), "best_score": self.state.best_score,
                "skipped_images": self.state.skipped_images, "is_main": self.context.is_main,
                "best_epoch": self.state.best_epoch, "history": self.state.history}

    def _run_epoch(self, stop: _StopRequest) -> dict[str, Any]:
        """Train one epoch, validate, step the schedule, checkpoint; returns the epoch's log record."""
        t = self.experiment.train
        epoch = self.state.epoch
        started = time.perf_counter()
        train_stats = self.train_one_epoch(stop)
        record: dict[str, Any] = {"type": "epoch", "epoch": epoch, "step": self.state.step, **train_stats,
                                  "train_seconds": time.perf_counter() - started,
                                  "skipped_images": self.state.skipped_images}
        if self.val_split is not None:
            limit = t.val_limit or None
            models = {"raw": self.model, **({"ema": self.ema.module} if self.ema is not None else {})}
            if self.val_set is None:  # read once: the annotation file can take seconds to parse
                self.val_set = build_dataset(self.experiment, self.val_split, self.vocabulary, training=False)
                if self.experiment.data.precompute_images:  # both weights share the frozen modules, every epoch
                    self.val_held = self._hold_images(self.val_set)
            record["val"] = {name: evaluate_model(model, self.experiment, self.vocabulary, self.val_split, self.device,
                                                  limit=limit, dataset=self.val_set, held=self.val_held)["metrics"]
                             for name, model in models.items()}
            score = max(headline_score(s, self.experiment.model.task, self.model.layout.generalised)
                        for s in record["val"].values())
        else:
            score = -train_stats["loss"]
        self.state.epoch = epoch + 1
        self.state.batches_done = 0
        self.state.epoch_loss_sum, self.state.epoch_samples = 0.0, 0
        self.scheduler.step()
        improved = score > self.state.best_score
        if improved:
            self.state.best_score, self.state.best_epoch = score, epoch
        self.state.history.append(record)
        self._log(record)
        self._save("last.pt")
        if improved:
            self._save("best.pt")
        distributed.barrier()
        return record


def train(experiment: Experiment) -> dict[str, Any]:
    """Train an experiment (alone or under torchrun); returns the run directory and the validation history."""
    context = distributed.setup(experiment.train.device)
    try:
        return Trainer(experiment, context).run()
    finally:
        distributed.teardown()
