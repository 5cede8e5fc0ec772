"""The training engine: recipe pieces, crash-safe resume, DDP equivalence, failure handling, CLI."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT, assert_moved_aside, cli_env, run_cli, write_params
from rounding import U32, assert_same_function
from seqtr_lib import checkpoint as ckpt
from seqtr_lib.engine import ModelEMA, cosine_factor, lr_factor


def test_lr_factor_warms_up_linearly_then_steps_down():
    factors = [lr_factor(e, warmup_epochs=5, decay_epochs=(50,), decay_factor=0.1) for e in range(60)]
    assert factors[:5] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    assert factors[5:50] == pytest.approx([1.0] * 45)
    assert factors[50:] == pytest.approx([0.1] * 10)
    assert lr_factor(80, 0, (75, 78), 0.1) == pytest.approx(0.01)


def test_cosine_factor_warms_up_then_falls_as_half_a_cosine_to_zero():
    factors = [cosine_factor(s, total=10, warmup=2) for s in range(11)]
    assert factors[:3] == pytest.approx([0.5, 1.0, 1.0])
    # Halfway through the 8 decay steps the cosine is at a half; a quarter in, (1 + cos(pi/4)) / 2.
    assert factors[6] == pytest.approx(0.5) and factors[4] == pytest.approx((1 + 2 ** -0.5) / 2)
    assert factors[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))


def test_the_cosine_schedule_sets_each_steps_rate_across_epochs(tiny_data_root, tmp_path):
    lr = 2e-3
    params = write_params(tmp_path / "cosine.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 3, "warmup_epochs": 1, "lr": lr, "lr_schedule": "cosine",
                                 "decay_epochs": [1], "log_every": 1})
    run_cli("-m", "seqtr_lib", "train", "--params", str(params))
    log = _log_lines(tmp_path / "out" / "tiny")
    per_epoch = [r["step"] for r in log if r["type"] == "epoch"][0]
    rates = [r["lr"] for r in log if r["type"] == "step"]
    assert len(rates) == 3 * per_epoch and per_epoch >= 2
    # Step s of 3n: warm-up lr (s+1)/n over the first epoch, then lr (1 + cos(pi (s - n) / 2n)) / 2: the epoch
    # boundaries leave no step (decay_epochs is not read).
    n = per_epoch
    expected = [lr * (s + 1) / n if s < n else lr * (1 + math.cos(math.pi * (s - n) / (2 * n))) / 2
                for s in range(3 * n)]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_ema_follows_the_reference_decay_ramp():
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 0.0)
    ema = ModelEMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(step=0)  # decay min(0.999, 1/10) = 0.1 -> 0.1 * 0 + 0.9 * 1
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.update(step=20000)  # (step+1)/(step+10) > 0.999, so decay 0.999 -> 0.999 * 0.9 + 0.001
    assert ema.module.weight.item() == pytest.approx(0.999 * 0.9 + 0.001)
    assert not ema.module.weight.requires_grad


def test_ema_averages_float_buffers_copies_counters_and_survives_a_restore():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model[1].running_mean.fill_(4.0)  # the average starts from 0
        model[1].num_batches_tracked.fill_(7)
    ema.update(step=100)  # decay min(0.5, 101/110) = 0.5
    assert ema.module[1].running_mean.tolist() == pytest.approx([2.0, 2.0])
    assert ema.module[1].num_batches_tracked.item() == 7
    # A checkpoint restore copies into the model in place: the EMA must keep following it.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.bias"] = torch.full((2,), 10.0)
    model.load_state_dict(state)
    before = ema.module[0].bias.clone()
    ema.update(step=100)
    assert ema.module[0].bias.tolist() == pytest.approx((0.5 * before + 5.0).tolist())


def test_atomic_save_leaves_no_partial_file(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_atomic({"format": ckpt.CHECKPOINT_FORMAT, "x": torch.ones(2)}, path)

    class Unsaveable:
        pass

    with pytest.raises(Exception):
        ckpt.save_atomic({"format": ckpt.CHECKPOINT_FORMAT, "bad": Unsaveable()}, path)
    assert torch.equal(ckpt.load(path)["x"], torch.ones(2))  # the old checkpoint survived
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    ckpt.save_atomic({"format": ckpt.CHECKPOINT_FORMAT, "rng": ckpt.rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.restore_rng_state(ckpt.load(tmp_path / "c.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def _weights(path):
    return ckpt.load(path)["model"]


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key].float(), b[key].float(), atol=atol, rtol=0, msg=key)


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_equals_an_uninterrupted_run(tiny_data_root, tmp_path):
    common = {"train": {"epochs": 3, "checkpoint_every": 2, "log_every": 1, "seed": 5},
              "data": {"lsj": True, "num_workers": 0}}
    whole = write_params(tmp_path / "whole.yaml", tiny_data_root, tmp_path / "whole", **common)
    run_cli("-m", "seqtr_lib", "train", "--params", str(whole))

    killed = write_params(tmp_path / "killed.yaml", tiny_data_root, tmp_path / "killed", **common)
    run_dir = tmp_path / "killed" / "tiny"
    env_cmd = [sys.executable, "-m", "seqtr_lib", "train", "--params", str(killed)]
    process = subprocess.Popen(env_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=cli_env())
    steps_per_epoch = None
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        log = run_dir / "log.jsonl"
        if log.exists():
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            epochs = [r for r in records if r["type"] == "epoch"]
            if epochs and steps_per_epoch is None:
                steps_per_epoch = epochs[0]["step"]
            steps = [r["step"] for r in records if r["type"] == "step"]
            # Kill inside the second epoch, after a mid-epoch checkpoint.
            if steps_per_epoch and steps and steps[-1] >= steps_per_epoch + 3:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = ckpt.load(run_dir / "last.pt")
    assert partial["epoch"] < 3
    run_cli("-m", "seqtr_lib", "train", "--params", str(killed), "--set", f"train.resume={run_dir / 'last.pt'}")

    _assert_same_weights(_weights(tmp_path / "whole" / "tiny" / "last.pt"), _weights(run_dir / "last.pt"))
    whole_history = ckpt.load(tmp_path / "whole" / "tiny" / "last.pt")["history"]
    resumed_history = ckpt.load(run_dir / "last.pt")["history"]
    assert [(r["loss"], r["val"]) for r in resumed_history] == [(r["loss"], r["val"]) for r in whole_history]



def _log_lines(run_dir) -> list[dict]:
    """The complete records of a run's log.jsonl (a line being written when the process died is left out)."""
    text = (run_dir / "log.jsonl").read_text() if (run_dir / "log.jsonl").exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def _epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The training order of an epoch in one process: torch's DistributedSampler, shuffled by (seed, epoch)."""
    sampler = torch.utils.data.DistributedSampler(range(num_samples), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_restores_every_field_and_trains_only_the_rest_of_the_epoch(tiny_data_root, tmp_path):
    """Every field of a mid-epoch last.pt, checked one by one against the file (not against another run), and
    the resumed epoch's steps, samples and mean loss against counts derived from the data set."""
    import math
    import random
    import shutil

    from seqtr_lib import distributed, engine
    from seqtr_lib.config import load_params
    from seqtr_lib.data.datasets import image_path
    from seqtr_lib.metrics import headline_score

    # A copy of the tiny set with one unreadable training image, so that skipped_images counts something.
    data_root = tmp_path / "data"
    shutil.copytree(tiny_data_root, data_root)
    train = json.loads((data_root / "annotations" / "synthetic" / "instances.json").read_text())["train"]
    bad_image = train[0]["image_id"]
    bad = {index for index, annotation in enumerate(train) if annotation["image_id"] == bad_image}
    image_path(data_root, "synthetic", train[0]).write_bytes(b"not an image")

    seed, batch_size, lr, warmup, decay = 5, 4, 1e-3, 1, [1]
    params = write_params(tmp_path / "p.yaml", data_root, tmp_path / "out",
                          train={"epochs": 3, "checkpoint_every": 2, "log_every": 1, "seed": seed, "lr": lr,
                                 "warmup_epochs": warmup, "decay_epochs": decay},
                          data={"lsj": True, "batch_size": batch_size, "skip_bad_images": True})
    run_dir = tmp_path / "out" / "tiny"
    # One sample per training object; the loader keeps a last, smaller batch (EpochBatchSampler, drop_last off).
    batches_per_epoch = math.ceil(len(train) / batch_size)

    process = subprocess.Popen([sys.executable, "-m", "seqtr_lib", "train", "--params", str(params)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        # Kill four steps into the second epoch, past a mid-epoch checkpoint (one every 2 steps), long before
        # its end (21 batches): the log is polled every 50 ms and a step takes longer.
        if sum(r["type"] == "step" and r["epoch"] >= 1 for r in _log_lines(run_dir)) >= 4:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    # The kill landed mid-epoch: the checkpoint holds part of an epoch and the process logged no end for it
    # (after SIGKILL the files are as they were at the kill).
    last = run_dir / "last.pt"
    payload = ckpt.load(last)
    epoch, batches_done = payload["epoch"], payload["batches_done"]
    killed_log = _log_lines(run_dir)
    assert epoch >= 1 and 0 < batches_done < batches_per_epoch, (epoch, batches_done)
    assert not [r for r in killed_log if r["type"] == "epoch" and r["epoch"] >= epoch]
    # Every batch holds a readable sample (checked below), so each is one optimisation step.
    assert payload["step"] == epoch * batches_per_epoch + batches_done

    experiment = load_params(params, [f"train.resume={last}", f"train.epochs={epoch + 1}"])
    trainer = engine.Trainer(experiment, distributed.Context(0, 1, 0, torch.device("cpu")))
    resumed_draws = (random.random(), float(np.random.rand()), torch.rand(4))

    # Weights: the model and its average, which must differ (else one check would stand for both).
    model_state, ema_state = trainer.model.state_dict(), trainer.ema.module.state_dict()
    _assert_same_weights(model_state, payload["model"])
    _assert_same_weights(ema_state, payload["ema"])
    assert any(not torch.equal(payload["model"][k], payload["ema"][k]) for k in payload["model"])
    # Adam: every parameter's moments and step count, and the groups' learning rates.
    optimizer, stored = trainer.optimizer.state_dict(), payload["optimizer"]
    assert optimizer["state"].keys() == stored["state"].keys() and stored["state"]
    for index, state in stored["state"].items():
        assert state.keys() == {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if experiment.train.amsgrad else set())
        for name, value in state.items():
            assert torch.equal(optimizer["state"][index][name], value), (index, name)
        assert float(state["step"]) == payload["step"]  # every trained tensor gets a gradient at every step
    assert [g["lr"] for g in optimizer["param_groups"]] == [g["lr"] for g in stored["param_groups"]]
    # The schedule: stepped once per finished epoch, at the rate the recipe gives that epoch.
    assert trainer.scheduler.last_epoch == payload["scheduler"]["last_epoch"] == epoch
    assert trainer.scheduler.get_last_lr() == [lr * lr_factor(epoch, warmup, tuple(decay), 0.1)]
    # A gradient scaler exists only for fp16 on CUDA; this CPU run has none to restore.
    assert trainer.scaler is None and "scaler" not in payload
    # History and best score: the finished epochs' records as the log holds them, and the best of their scores.
    history = [r for r in killed_log if r["type"] == "epoch"]
    assert trainer.state.history == payload["history"] == history and len(history) == epoch
    scores = [max(headline_score(metrics, "box") for metrics in r["val"].values()) for r in history]
    assert (trainer.state.best_score, trainer.state.best_epoch) == (payload["best"]["score"], payload["best"]["epoch"])
    assert (trainer.state.best_score, trainer.state.best_epoch) == (max(scores), scores.index(max(scores)))
    # The batch position and counters.
    assert (trainer.state.epoch, trainer.state.batches_done, trainer.state.step) == (epoch, batches_done,
                                                                                      payload["step"])
    # The epoch's running loss: each logged step loss times its batch's readable samples, summed in order.
    order = _epoch_order(len(train), seed, epoch)
    sizes = [sum(i not in bad for i in order[b * batch_size:(b + 1) * batch_size]) for b in range(batches_per_epoch)]
    assert all(sizes)  # so every batch is one optimisation step (an all-unreadable batch would be skipped)
    first_step = epoch * batches_per_epoch
    logged = {r["step"]: r["loss"] for r in killed_log if r["type"] == "step"}
    loss_sum = 0.0
    for b in range(batches_done):
        loss_sum += logged[first_step + b + 1] * sizes[b]
    assert (trainer.state.epoch_loss_sum, trainer.state.epoch_samples) == tuple(payload["epoch_loss"])
    assert (trainer.state.epoch_loss_sum, trainer.state.epoch_samples) == (loss_sum, sum(sizes[:batches_done]))
    # The bad image's objects were skipped once in every finished epoch, and in this one those already passed.
    skipped = epoch * len(bad) + sum(i in bad for i in order[:batches_done * batch_size])
    assert trainer.state.skipped_images == payload["skipped_images"] == skipped
    # The generators: draws after the restore are those of the stored states, restored here by hand.
    version, keys, gauss = payload["rng"]["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, np_keys, position, has_gauss, cached = payload["rng"]["numpy"]
    np.random.set_state((kind, np_keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(payload["rng"]["torch"])
    stored_draws = (random.random(), float(np.random.rand()), torch.rand(4))
    assert resumed_draws[:2] == stored_draws[:2] and torch.equal(resumed_draws[2], stored_draws[2])

    # The rest of the epoch: one step per remaining batch, every readable sample once, the epoch's mean loss.
    logged_before = len(_log_lines(run_dir))
    trainer.run()
    new = _log_lines(run_dir)[logged_before:]
    steps = [r for r in new if r["type"] == "step"]
    assert [r["step"] for r in steps] == list(range(first_step + batches_done + 1, first_step + batches_per_epoch + 1))
    assert trainer.state.step == (epoch + 1) * batches_per_epoch
    (record,) = [r for r in new if r["type"] == "epoch"]
    assert record["epoch"] == epoch and record["samples"] == sum(sizes[batches_done:])
    for b, step in zip(range(batches_done, batches_per_epoch), steps):
        loss_sum += step["loss"] * sizes[b]
    assert record["loss"] == loss_sum / (len(train) - len(bad))
    assert record["skipped_images"] == (epoch + 1) * len(bad)


# The synthetic params' departures (params/synthetic_det.yaml, synthetic_mask.yaml) on the tiny model.
SYNTHETIC_DEPARTURES = {"memory_stride": 16, "target_cell_loss": 1.0, "query_selection": True, "scene_loss": 1.0,
                        "colour_pathway": 4, "attribute_prior": 1.0, "decode_bin_centres": True}
DDP_CASES = {
    "box, synthetic departures, channels_last": ("box", SYNTHETIC_DEPARTURES, {"channels_last": True}),
    # input_token_noise stays off: each process draws its noise from its own generator (docs/training.md).
    "mask, synthetic departures": ("mask", {**SYNTHETIC_DEPARTURES, "outline_offset": 0.5}, {}),
    "paper configuration": ("box", {"trainable_backbone_modules": 2}, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DDP_CASES))
def test_two_gloo_processes_match_one_process_with_twice_the_batch(tiny_data_root, tmp_path, case):
    # BatchNorm is frozen (SyncBatchNorm does not exist on CPU) at the statistics of the released synthetic
    # backbone: frozen at their initial values (mean 0, variance 1) the 0-255 pixels would reach the fusion
    # un-normalised, around 5,000, where the tanh gate makes the gradient so steep in the weights that float32
    # rounding of one step grows to 1e-3 by the next (docs/training.md). Adam with a large eps is linear in the
    # gradient, so no update is amplified either.
    task, departures, train_extra = DDP_CASES[case]
    train = {"epochs": 1, "max_steps_per_epoch": 2, "ema": False, "eps": 1e-3, "grad_clip": 0.0,
             "freeze_batchnorm": True, "warmup_epochs": 0, "decay_epochs": [], "seed": 2, **train_extra}
    model = {"dropout": 0.0, "darknet_weights": str(ROOT / "weights" / "synthetic_darknet.weights"), **departures}
    folders = {}
    for name, batch_size, launcher in (("single", 4, ()),
                                       ("double", 2, ("-m", "torch.distributed.run", "--standalone",
                                                      "--nproc_per_node", "2"))):
        params = write_params(tmp_path / f"{name}.yaml", tiny_data_root, tmp_path / name, task=task, train=train,
                              model=model, data={"batch_size": batch_size})
        run_cli(*launcher, "-m", "seqtr_lib", "train", "--params", str(params))
        folders[name] = tmp_path / name / "tiny"
    init = write_params(tmp_path / "init.yaml", tiny_data_root, tmp_path / "init", task=task,
                        train={**train, "lr": 1e-12}, model=model, data={"batch_size": 4})
    run_cli("-m", "seqtr_lib", "train", "--params", str(init))

    def losses(folder):
        lines = (folder / "log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if json.loads(line)["type"] == "step"]

    # What separates the two: an objective that depends on the split changes the update by the share one
    # process's count holds of the global one (13 vs 15 scene objects: 7 %; the scene loss per process moved
    # the weights 2e-3 against updates of 2e-3, docs/training.md), float32 rounding of the same objective by
    # n * u of a gradient's summands (u = 6e-8, n up to 4 x 64 x 64 pixels: 1e-3 at the very worst, 1e-6
    # measured). A hundredth of the largest update lies between the two by an order of magnitude each way.
    single, double = _weights(folders["single"] / "last.pt"), _weights(folders["double"] / "last.pt")
    start = _weights(tmp_path / "init" / "tiny" / "last.pt")
    update = max((single[k].float() - start[k].float()).abs().max().item() for k in single
                 if single[k].is_floating_point())
    assert update > 1e-4  # the updates are real
    # A logged loss sums at most B x T non-negative terms (n u = 52 x 6e-8 = 3e-6 of it) from weights that agree.
    assert losses(folders["double"]) == pytest.approx(losses(folders["single"]), rel=1e-5)
    _assert_same_weights(single, double, atol=update / 100)


def _one_gloo_step(rank, params, store, results):
    """One process of `test_a_gloo_step_all_reduces_its_counts_once`: samples rank and rank + 2, one step."""
    import torch.distributed as dist

    from seqtr_lib import distributed, engine
    from seqtr_lib.codec import SequenceCodec
    from seqtr_lib.config import load_params
    from seqtr_lib.data.loader import Collate
    from seqtr_lib.data.refer import build_dataset

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        experiment = load_params(params)
        trainer = engine.Trainer(experiment, distributed.Context(rank, 2, rank, torch.device("cpu")))
        dataset = build_dataset(experiment, "train", trainer.vocabulary, training=True)
        batch = Collate(SequenceCodec.from_experiment(experiment))([dataset[i] for i in (rank, rank + 2)])
        calls, all_reduce = [], dist.all_reduce

        def counted(tensor, *args, **kwargs):
            calls.append((str(tensor.dtype), tensor.numel()))
            return all_reduce(tensor, *args, **kwargs)

        dist.all_reduce = counted
        try:
            losses = trainer.step(batch)
        finally:
            dist.all_reduce = all_reduce
        losses = {name: float(value.detach()) for name, value in losses.items()}
        torch.save({"calls": calls, "losses": losses}, results / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_gloo_step_all_reduces_its_counts_once(tiny_data_root, tmp_path):
    # The divisors of every loss term (samples, scene objects per attribute, words naming a colour and a kind)
    # travel in one all-reduce; the other is the non-finite-loss flag (DDP's gradients go through its reducer).
    from seqtr_lib import distributed, engine
    from seqtr_lib.codec import SequenceCodec
    from seqtr_lib.config import load_params
    from seqtr_lib.data.loader import Collate
    from seqtr_lib.data.refer import build_dataset

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          model={**SYNTHETIC_DEPARTURES, "dropout": 0.0}, data={"batch_size": 2},
                          train={"ema": False, "freeze_batchnorm": True})
    torch.multiprocessing.spawn(_one_gloo_step, args=(params, tmp_path / "store", tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    for result in ranks:
        assert result["calls"] == [("torch.float64", 1 + 3 + 2), ("torch.float32", 1)]

    # The losses are the whole batch's, as one process computes them from the same initial weights.
    experiment = load_params(params)
    trainer = engine.Trainer(experiment, distributed.Context(0, 1, 0, torch.device("cpu")))
    dataset = build_dataset(experiment, "train", trainer.vocabulary, training=True)
    whole = trainer.step(Collate(SequenceCodec.from_experiment(experiment))([dataset[i] for i in range(4)]))
    for name, value in whole.items():
        mean = (ranks[0]["losses"][name] + ranks[1]["losses"][name]) / 2
        assert mean == pytest.approx(float(value.detach()), rel=1e-6), name


@pytest.mark.slow
def test_distributed_evaluation_counts_every_expression_once(tiny_data_root, tmp_path):
    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 1, "max_steps_per_epoch": 1}, data={"eval_batch_size": 3})
    run_cli("-m", "seqtr_lib", "train", "--params", str(params))
    checkpoint = tmp_path / "out" / "tiny" / "last.pt"
    run_cli("-m", "seqtr_lib", "evaluate", "--params", str(params), "--checkpoint", str(checkpoint),
            "--splits", "val,testB")
    alone = json.loads((tmp_path / "out" / "tiny" / "metrics.json").read_text())
    run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "seqtr_lib", "evaluate",
            "--params", str(params), "--checkpoint", str(checkpoint), "--splits", "val,testB")
    together = json.loads((tmp_path / "out" / "tiny" / "metrics.json").read_text())
    annotations = json.loads((tiny_data_root / "annotations" / "synthetic" / "instances.json").read_text())
    for split in ("val", "testB"):
        expected = sum(len(ann["expressions"]) for ann in annotations[split])
        assert alone["splits"][split]["raw"]["num_expressions"] == expected
        assert together["splits"][split]["raw"]["num_expressions"] == expected
        assert together["splits"][split]["raw"] == pytest.approx(alone["splits"][split]["raw"])


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tiny_data_root, tmp_path, monkeypatch):
    from seqtr_lib import engine, loss
    from seqtr_lib.config import load_params

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 2, "max_steps_per_epoch": 3})
    engine.train(load_params(params, ["train.epochs=1"]))
    good = tmp_path / "out" / "tiny" / "last.pt"
    before = good.read_bytes()

    real_loss = loss.label_smooth_cross_entropy  # the box term's, once per step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        return real_loss(*args, **kwargs) * (float("nan") if calls["n"] == 2 else 1.0)

    monkeypatch.setattr(loss, "label_smooth_cross_entropy", poisoned)
    resumed = load_params(params, [f"train.resume={good}"])
    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite loss at step \d+"):
        engine.train(resumed)
    assert good.read_bytes() == before


def test_resume_refuses_a_checkpoint_of_a_different_model(tiny_data_root, tmp_path):
    from seqtr_lib import engine
    from seqtr_lib.config import load_params

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 1, "max_steps_per_epoch": 1})
    engine.train(load_params(params))
    last = tmp_path / "out" / "tiny" / "last.pt"
    with pytest.raises(ValueError, match=r"model.d_model: 32 -> 64|d_model: 32 -> 64"):
        engine.train(load_params(params, [f"train.resume={last}", "model.d_model=64", "train.epochs=2"]))


@pytest.mark.slow
def test_cli_train_evaluate_predict_end_to_end(tiny_data_root, tmp_path):
    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", task="multi",
                          train={"epochs": 2, "checkpoint_every": 3})
    run_cli("-m", "seqtr_lib", "train", "--params", str(params))
    run_dir = tmp_path / "out" / "tiny"
    for name in ("last.pt", "best.pt"):
        payload = torch.load(run_dir / name, weights_only=True)  # every checkpoint loads safely
        assert payload["epoch"] == 2 or name == "best.pt"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["type"] == "epoch"] == [0, 1]
    assert {"raw", "ema"} <= set(next(r for r in log if r["type"] == "epoch")["val"])

    run_cli("-m", "seqtr_lib", "evaluate", "--params", str(params), "--checkpoint", str(run_dir / "best.pt"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "testA", "testB"}
    assert {"box/acc@0.5", "mask/miou", "mask/oiou"} <= set(metrics["splits"]["val"]["ema"])

    run_cli("-m", "seqtr_lib", "evaluate", "--params", str(params), "--checkpoint", str(run_dir / "best.pt"),
            "--splits", "val", "--shuffle-ablation")
    merged = json.loads((run_dir / "metrics.json").read_text())["splits"]
    assert set(merged) == {"val", "testA", "testB"}  # the splits of the first evaluation stay
    assert merged["testB"] == metrics["splits"]["testB"]
    ablation = merged["val"]
    assert ablation["raw_shuffled"]["num_expressions"] == ablation["raw"]["num_expressions"]
    annotations = json.loads((tiny_data_root / "annotations" / "synthetic" / "instances.json").read_text())
    shuffled = json.loads((run_dir / "predictions" / "val_raw_shuffled.json").read_text())
    moved = [r for r in shuffled
             if r["expression"] != annotations["val"][r["ann_index"]]["expressions"][r["expression_index"]]]
    assert len(moved) > len(shuffled) // 2  # most samples were grounded with another sample's words
    run_cli("-m", "seqtr_lib", "evaluate", "--params", str(params), "--checkpoint", str(run_dir / "best.pt"),
            "--splits", "val", "--strategy", "top_p", "--top-p", "0.5", "--limit", "2")
    sampled = json.loads((run_dir / "metrics.json").read_text())
    assert (sampled["strategy"], sampled["top_p"], sampled["limit"]) == ("top_p", 0.5, 2)
    assert set(sampled["splits"]) == {"val"}  # another evaluation: greedy scores are not mixed in
    assert "mask/miou" in sampled["splits"]["val"]["raw"]
    assert 2 <= sampled["splits"]["val"]["raw"]["num_expressions"] <= 8  # whole batches of eval_batch_size 8
    assert sampled["splits"]["val"]["raw"]["num_expressions"] < ablation["raw"]["num_expressions"]
    result = run_cli("-m", "seqtr_lib", "evaluate", "--params", str(params), "--checkpoint", str(run_dir / "best.pt"),
                     "--splits", "val", "--limit", "2", "--execution", "channels_last+bf16+fold_bn+recheck")
    fast = json.loads((run_dir / "metrics.json").read_text())
    assert fast["execution"] == "channels_last+bf16+fold_bn+recheck"
    tally = fast["recheck"]["val/raw"]  # how many samples needed float32, said and stored
    assert tally["samples"] == fast["splits"]["val"]["raw"]["num_expressions"] and 0 <= tally["rechecked"] <= tally["samples"]
    assert f"{tally['rechecked']} of {tally['samples']} samples rechecked in float32" in result.stdout
    _predict_draws_the_printed_contour_and_its_attention(run_dir / "best.pt", tmp_path)


def _predict_draws_the_printed_contour_and_its_attention(checkpoint, tmp_path):
    """`predict --out --attention` of a mask on a drawn 64 x 64 scene: the overlay shows the printed contour where
    it lies, and the attention figure one panel per point, each the heat map of that point's attention as the
    Grounder returns it for the same seed (its brightest colour where that map is largest)."""
    from figure_pixels import assert_contour_drawn, assert_heat_map_shown, bounds_locator, drawn_panels
    from seqtr_lib.predict import Grounder
    from seqtr_lib.viz import PRED_COLOR

    scene = np.full((64, 64, 3), 200, dtype=np.uint8)  # uniform grey: every drawn colour over it is known
    cv2.circle(scene, (22, 38), 9, (0, 0, 255), -1)  # a red disc (BGR) left of the middle, below it
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene)
    scene = scene[..., ::-1]
    sampling = ("--strategy", "top_p", "--seed", "3")
    result = run_cli("-m", "seqtr_lib", "predict", "--checkpoint", str(checkpoint), "--image", str(image),
                     "--expression", "the red circle", "--task", "mask", "--out", str(tmp_path / "overlay.png"),
                     "--attention", str(tmp_path / "attention.png"), *sampling)
    printed = re.search(r"polygon \(x, y, \.\.\.\): (\[.*\])", result.stdout).group(1)
    polygon = np.array(json.loads(printed), dtype=np.float64).reshape(-1, 2)
    assert len(polygon) >= 3, polygon
    overlay = cv2.cvtColor(cv2.imread(str(tmp_path / "overlay.png")), cv2.COLOR_BGR2RGB)
    (bounds,) = drawn_panels(overlay)  # the scene (the title is small)
    assert_contour_drawn(overlay, bounds_locator(bounds, scene.shape[:2]), polygon, PRED_COLOR, scene)

    prediction = Grounder.from_checkpoint(checkpoint, device="cpu").predict(
        str(image), "the red circle", task="mask", return_attention=True, strategy="top_p", seed=3)
    assert np.abs(prediction.polygon - polygon).max() <= 0.05 + 1e-4  # the same contour, printed to 0.1 px
    figure = cv2.cvtColor(cv2.imread(str(tmp_path / "attention.png")), cv2.COLOR_BGR2RGB)
    point_panels = drawn_panels(figure)[1:]  # after the prediction's panel
    assert len(point_panels) == len(polygon)
    for bounds, point, heat in zip(point_panels, polygon, prediction.attention.reshape(len(polygon), 2, 64, 64)):
        assert_heat_map_shown(figure, bounds, scene, heat.mean(axis=0), point)  # its x and y tokens' maps


@pytest.mark.parametrize("task", ["box", "mask"])
def test_ground_truth_tokens_decode_back_to_the_original_pixels(tiny_data_root, tmp_path, task):
    """The evaluation path (tokens -> padded pixels -> original pixels) inverts the data pipeline."""
    from seqtr_lib.config import load_params
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset, load_vocabulary
    from seqtr_lib.codec import SequenceCodec, polygon_rle
    from seqtr_lib.metrics import mask_ious

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", task=task,
                          data={"image_size": 96}, model={"num_ray": 24})
    experiment = load_params(params)
    dataset = build_dataset(experiment, "val", load_vocabulary(experiment), training=False)
    batch = next(iter(build_loader(dataset, experiment, training=False)))
    codec = SequenceCodec.from_experiment(experiment)
    for i, meta in enumerate(batch["metas"]):
        # One bin of the padded image, mapped back to the original size, and float32's rounding of the resize
        # (a scale, a product, a division back: 3u of a coordinate) that may move a coordinate across a bin edge.
        tolerance = (max(meta["pad_shape"]) / experiment.model.num_bin / min(meta["scale_factor"])
                     + 4 * U32 * max(meta["ori_shape"]))
        if task == "box":
            box = codec.box_in_original(batch["box_tokens"][i].numpy(), meta)
            np.testing.assert_allclose(box, meta["gt_box"], atol=tolerance)
        else:
            polygon = codec.polygon_in_original(batch["mask_tokens"][i].numpy(), meta)
            iou, _, _ = mask_ious([polygon_rle(polygon, meta["ori_shape"])], [meta["gt_mask_rle"]])
            assert iou[0] > 0.6, (i, iou)  # 24 contour points of a shape at 96 px


def test_exported_weights_are_half_precision_ema_and_ground_like_the_checkpoint(tiny_data_root, tmp_path):
    from seqtr_lib import engine
    from seqtr_lib.checkpoint import export_weights
    from seqtr_lib.config import load_params
    from seqtr_lib.evaluation import load_trained

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", train={"epochs": 1})
    engine.train(load_params(params, ["train.max_steps_per_epoch=2"]))
    best = tmp_path / "out" / "tiny" / "best.pt"
    released = export_weights(best, tmp_path / "weights" / "tiny.pt")
    payload = torch.load(released, weights_only=True)
    assert set(payload) == {"format", "config", "vocabulary", "epoch", "step", "ema"}
    assert all(t.dtype == torch.float16 for t in payload["ema"].values() if t.is_floating_point())
    _, _, original = load_trained(best)
    _, _, exported = load_trained(released)
    assert set(exported) == {"ema"}
    images = torch.rand(2, 3, 64, 64) * 255
    pad_mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    ids = torch.tensor([[3, 4, 0], [5, 0, 0]])
    # exact: the exported model is the checkpoint's EMA with every weight rounded to float16, nothing else
    rounded = original["ema"]
    rounded.load_state_dict({k: v.half().to(v.dtype) if v.is_floating_point() else v
                             for k, v in rounded.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(exported["ema"].encode(images, pad_mask, ids).features,
                           rounded.encode(images, pad_mask, ids).features)
    # Exported again to the same file (another run's weights): the earlier file is moved aside, not replaced.
    earlier = released.read_bytes()
    engine.train(load_params(params, ["train.max_steps_per_epoch=2", "train.seed=2"]))
    export_weights(best, released)
    (aside,) = [path for path in released.parent.iterdir() if path != released]
    assert re.fullmatch(r"tiny\.\d{8}-\d{6}\.pt", aside.name) and aside.read_bytes() == earlier
    assert ckpt.load(released)["config"]["train"]["seed"] == 2


def test_the_shown_checkpoint_is_the_given_one_then_the_own_run_then_the_released_weights(tmp_path, monkeypatch):
    from seqtr_lib import checkpoint

    run_dir, released_dir = tmp_path / "outputs" / "synthetic_det", tmp_path / "weights"
    monkeypatch.setattr(checkpoint, "RELEASED_DIR", released_dir)
    with pytest.raises(FileNotFoundError, match=r"best.pt does not exist and there are no released weights"):
        checkpoint.resolve_checkpoint(run_dir, "synthetic_det")
    released_dir.mkdir()
    (released_dir / "synthetic_det.pt").write_bytes(b"")
    path, which = checkpoint.resolve_checkpoint(run_dir, "synthetic_det")
    assert path == released_dir / "synthetic_det.pt" and "released weights" in which
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(b"")
    path, which = checkpoint.resolve_checkpoint(run_dir, "synthetic_det")
    assert path == run_dir / "best.pt" and "your own run" in which
    given = tmp_path / "other.pt"
    given.write_bytes(b"")
    assert checkpoint.resolve_checkpoint(run_dir, "synthetic_det", given)[0] == given
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        checkpoint.resolve_checkpoint(run_dir, "synthetic_det", tmp_path / "missing.pt")


def test_the_shown_checkpoint_line_names_the_file_and_the_local_time_it_was_written(tmp_path, monkeypatch, capsys):
    from seqtr_lib import checkpoint, notebook
    from seqtr_lib.config import load_params

    experiment = load_params(None, [f"output_dir={tmp_path / 'outputs'}", "name=synthetic_det"])
    released = tmp_path / "weights" / "synthetic_det.pt"
    given, own = tmp_path / "other.pt", experiment.run_dir / "best.pt"
    monkeypatch.setattr(checkpoint, "RELEASED_DIR", released.parent)
    for path, minute in ((released, 41), (given, 7), (own, 59)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        written = datetime.datetime(2026, 3, 9, 5, minute, 30).timestamp()  # local time, as it is shown
        os.utime(path, (written, written))
    assert notebook.default_checkpoint(experiment) == own
    assert capsys.readouterr().out == f"using your own run {own} (file dated 2026-03-09 05:59)\n"
    assert checkpoint.resolve_checkpoint(experiment.run_dir, "synthetic_det", given)[1] == \
        f"using checkpoint {given} (file dated 2026-03-09 05:07)"
    own.unlink()
    assert checkpoint.resolve_checkpoint(experiment.run_dir, "synthetic_det")[1].startswith(
        f"using the released weights {released} (file dated 2026-03-09 05:41): no run of yours at {own} (")


def test_move_aside_stamps_the_time_and_never_renames_onto_anything(tmp_path, monkeypatch):
    run_dir = tmp_path / "synthetic_det"
    assert ckpt.move_aside(run_dir) is None  # nothing there
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text("{}")
    assert ckpt.move_aside(run_dir) is None and run_dir.is_dir()  # no checkpoints: nothing to keep
    (run_dir / "best.pt").write_bytes(b"weights")
    before = time.strftime("%Y%m%d-%H%M%S")
    moved = ckpt.move_aside(run_dir)
    assert not run_dir.exists() and (moved / "best.pt").read_bytes() == b"weights"
    assert re.fullmatch(r"synthetic_det\.\d{8}-\d{6}", moved.name)
    assert before <= moved.name.split(".")[1] <= time.strftime("%Y%m%d-%H%M%S")

    # The stamp's names taken (an empty folder, which rename() would silently replace, and a file): the next free one.
    monkeypatch.setattr(ckpt.time, "strftime", lambda fmt: "20261207-054100")
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"second")
    (tmp_path / "synthetic_det.20261207-054100").mkdir()
    (tmp_path / "synthetic_det.20261207-054100-2").write_text("taken")
    assert ckpt.move_aside(run_dir) == tmp_path / "synthetic_det.20261207-054100-3"
    assert (tmp_path / "synthetic_det.20261207-054100-3" / "last.pt").read_bytes() == b"second"
    assert not any((tmp_path / "synthetic_det.20261207-054100").iterdir())
    assert (tmp_path / "synthetic_det.20261207-054100-2").read_text() == "taken"
    # A file keeps its suffix, so that it stays what it was (a .weights file, a .pt checkpoint).
    backbone = tmp_path / "weights" / "darknet.weights"
    backbone.parent.mkdir()
    backbone.write_bytes(b"backbone")
    assert ckpt.move_aside(backbone) == tmp_path / "weights" / "darknet.20261207-054100.weights"
    assert not backbone.exists()


def test_resuming_continues_in_its_folder_and_moves_nothing(tiny_data_root, tmp_path, capsys):
    from seqtr_lib import engine
    from seqtr_lib.config import load_params
    from seqtr_lib.reports import read_log

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 2, "max_steps_per_epoch": 1})
    run_dir = tmp_path / "out" / "tiny"
    engine.train(load_params(params, ["train.epochs=1"]))
    engine.train(load_params(params, [f"train.resume={run_dir / 'last.pt'}"]))
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["tiny"]
    assert "earlier run" not in capsys.readouterr().out
    assert ckpt.load(run_dir / "last.pt")["epoch"] == 2
    assert [r["epoch"] for r in read_log(run_dir) if r["type"] == "epoch"] == [0, 1]  # one log, appended to


def test_resuming_a_run_moved_aside_moves_the_run_in_its_place_aside_in_turn(tiny_data_root, tmp_path, capsys):
    # What the line printed on moving a run aside offers: continuing it. The run that took its place is kept too.
    from seqtr_lib import engine
    from seqtr_lib.config import load_params
    from seqtr_lib.reports import read_log

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 2, "max_steps_per_epoch": 1})
    run_dir = tmp_path / "out" / "tiny"
    engine.train(load_params(params, ["train.epochs=1"]))
    first = (run_dir / "best.pt").read_bytes()
    engine.train(load_params(params, ["train.epochs=1", "train.seed=2"]))
    moved = assert_moved_aside(run_dir, first, second_seed=2)
    assert f"to continue it instead, train with --set train.resume={moved / 'last.pt'}" in capsys.readouterr().out
    second = (run_dir / "best.pt").read_bytes()
    engine.train(load_params(params, [f"train.resume={moved / 'last.pt'}"]))
    (second_aside,) = [p for p in (tmp_path / "out").iterdir() if p not in (run_dir, moved)]
    assert (second_aside / "best.pt").read_bytes() == second
    resumed = ckpt.load(run_dir / "last.pt")
    assert (resumed["epoch"], resumed["config"]["train"]["seed"]) == (2, 1)
    assert (moved / "best.pt").read_bytes() == first  # resuming reads the run aside and writes in the run folder
    assert [r["epoch"] for r in read_log(run_dir) if r["type"] == "epoch"] == [0, 1]  # its log goes on


@pytest.mark.slow
def test_a_second_train_command_moves_the_first_run_aside_and_predict_names_what_it_takes(tiny_data_root, tmp_path):
    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 1, "max_steps_per_epoch": 2})
    run_dir = tmp_path / "out" / "tiny"
    run_cli("-m", "seqtr_lib", "train", "--params", str(params))
    first = (run_dir / "best.pt").read_bytes()
    second = run_cli("-m", "seqtr_lib", "train", "--params", str(params), "--set", "train.seed=2")
    moved = assert_moved_aside(run_dir, first, second_seed=2)
    assert (f"an earlier run was in {run_dir}: moved it to {moved}, not overwritten; to continue it instead, "
            f"train with --set train.resume={moved / 'last.pt'}\n") in second.stdout
    # predict without --checkpoint takes the params' run, and says which file and when it was written
    written = datetime.datetime(2026, 3, 9, 5, 41, 30).timestamp()
    os.utime(run_dir / "best.pt", (written, written))
    sample = json.loads((tiny_data_root / "annotations" / "synthetic" / "instances.json").read_text())["val"][0]
    image = tiny_data_root / "images" / "synthetic" / f"{sample['image_id']}.jpg"
    result = run_cli("-m", "seqtr_lib", "predict", "--params", str(params), "--image", str(image),
                     "--expression", sample["expressions"][0], "--out", str(tmp_path / "overlay.png"))
    assert f"using your own run {run_dir / 'best.pt'} (file dated 2026-03-09 05:41)\n" in result.stdout


@pytest.mark.slow
def test_a_second_torchrun_moves_the_first_run_aside_once(tiny_data_root, tmp_path):
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out",
                          train={"epochs": 1, "max_steps_per_epoch": 1}, data={"batch_size": 2})
    run_dir = tmp_path / "out" / "tiny"
    run_cli(*launcher, "-m", "seqtr_lib", "train", "--params", str(params))
    first = (run_dir / "best.pt").read_bytes()
    second = run_cli(*launcher, "-m", "seqtr_lib", "train", "--params", str(params), "--set", "train.seed=2")
    moved = assert_moved_aside(run_dir, first, second_seed=2)
    assert second.stdout.count("an earlier run was in") == 1  # rank 0 moves it; rank 1 waits
    assert f"moved it to {moved}" in second.stdout


def test_finetune_state_keeps_fresh_only_query_positions_of_another_length():
    model = {"a.weight": torch.zeros(2, 3), "decoder.position.weight": torch.zeros(37, 4)}
    source = {"a.weight": torch.ones(2, 3), "decoder.position.weight": torch.ones(5, 4)}
    state, fresh = ckpt.finetune_state(model, source, "box.pt")
    assert fresh == ["decoder.position.weight"]
    assert torch.equal(state["a.weight"], torch.ones(2, 3))
    assert torch.equal(state["decoder.position.weight"], torch.zeros(37, 4))

    same_length = {**source, "decoder.position.weight": torch.ones(37, 4)}
    state, fresh = ckpt.finetune_state(model, same_length, "mask.pt")
    assert fresh == [] and torch.equal(state["decoder.position.weight"], torch.ones(37, 4))

    with pytest.raises(ValueError, match=r"box.pt: a.weight has shape \(2, 4\) there and \(2, 3\) in this model"):
        ckpt.finetune_state(model, {**source, "a.weight": torch.ones(2, 4)}, "box.pt")
    with pytest.raises(ValueError, match=r"box.pt does not fit this model: tensors missing 1 \(first: \['b'\]\)"):
        ckpt.finetune_state({**model, "b": torch.zeros(1)}, source, "box.pt")
    wider = {**source, "decoder.position.weight": torch.ones(5, 8)}  # another d_model, not another length
    with pytest.raises(ValueError, match=r"decoder.position.weight has shape \(5, 8\) there and \(37, 4\)"):
        ckpt.finetune_state(model, wider, "box.pt")


def test_a_box_checkpoint_starts_a_mask_run_with_every_tensor_but_the_query_positions(tiny_data_root, tmp_path):
    from seqtr_lib import distributed, engine
    from seqtr_lib.config import load_params

    box = write_params(tmp_path / "box.yaml", tiny_data_root, tmp_path / "out", train={"epochs": 1})
    engine.train(load_params(box, ["train.max_steps_per_epoch=2", "train.ema=false"]))
    box_weights = ckpt.load(tmp_path / "out" / "tiny" / "last.pt")["model"]

    mask = write_params(tmp_path / "mask.yaml", tiny_data_root, tmp_path / "out", task="mask")
    experiment = load_params(mask, ["name=tiny_mask", f"train.finetune_from={tmp_path / 'out' / 'tiny' / 'last.pt'}"])
    trainer = engine.Trainer(experiment, distributed.Context(0, 1, 0, torch.device("cpu")))
    started = trainer.model.state_dict()
    num_ray = experiment.model.num_ray
    assert started["decoder.position.weight"].shape[0] == 2 * num_ray + 1 != box_weights["decoder.position.weight"].shape[0]
    for name, tensor in box_weights.items():
        if name != "decoder.position.weight":
            assert torch.equal(started[name], tensor), name


def test_refined_bins_repeat_each_coarse_row_and_split_its_probability():
    table = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])  # bins 0 and 1, then EOS
    assert torch.equal(ckpt.refine_bins(table, num_bin=2, factor=2),
                       torch.tensor([[1.0, 10.0], [1.0, 10.0], [2.0, 20.0], [2.0, 20.0], [3.0, 30.0]]))
    bias = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # float64: softmaxes of 3 and 5 terms
    fine = ckpt.refine_bins(bias, num_bin=2, factor=2, logit_bias=True)
    coarse_p, fine_p = bias.softmax(0), fine.softmax(0)
    assert_same_function(fine_p[:4].reshape(2, 2).sum(1), coarse_p[:2], scale=1.0)  # each coarse bin's mass
    assert_same_function(fine_p[4], coarse_p[2], scale=1.0)  # EOS unchanged
    with pytest.raises(ValueError, match=r"has 64 bins and this model 100: .*whole factor"):
        ckpt.finetune_state({"a": torch.zeros(1)}, {"a": torch.zeros(1)}, "box.pt", num_bins=(64, 100))


def test_a_coarse_box_model_starts_a_finer_mask_model_with_the_same_coordinate_beliefs():
    from seqtr_lib.config import ModelConfig
    from seqtr_lib.model.seqtr import build_model
    from seqtr_lib.text import Vocabulary

    vocabulary = Vocabulary.build(["the", "red", "circle"])
    small = {"darknet_width": 0.125, "word_vectors": "random", "word_dim": 16, "gru_hidden": 16, "d_model": 32,
             "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1, "ffn_dim": 32,
             "trainable_backbone_modules": -1, "dropout": 0.0}
    torch.manual_seed(0)
    # float64: predictors of 17 and 33 rows sum in other orders
    coarse = build_model(ModelConfig(task="box", num_bin=16, **small), vocabulary).double().eval()
    fine = build_model(ModelConfig(task="mask", num_bin=32, num_ray=4, **small), vocabulary).double().eval()
    assert set(ckpt.VOCABULARY_KEYS) <= set(fine.state_dict())  # the names refine_bins is told about
    state, fresh = ckpt.finetune_state(fine.state_dict(), coarse.state_dict(), "box.pt", num_bins=(16, 32))
    fine.load_state_dict(state)
    assert fresh == ["decoder.position.weight"]
    fine.decoder.position.weight.data[:5] = coarse.decoder.position.weight.data  # same queries for the first tokens
    images, padding = torch.rand(1, 3, 64, 64, dtype=torch.float64) * 255, torch.zeros(1, 64, 64, dtype=torch.bool)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        memory_coarse, memory_fine = coarse.encode(images, padding, ids), fine.encode(images, padding, ids)
        assert torch.equal(memory_fine.features, memory_coarse.features)  # exact: the same weights and inputs
        # The first coordinate's distribution, coarse bins summed over their fine halves, then EOS.
        p_coarse = coarse(images, padding, ids, box_tokens=torch.zeros(1, 4, dtype=torch.long))["box_logits"][0, 0].softmax(-1)
        p_fine = fine(images, padding, ids, mask_tokens=torch.zeros(1, 8, dtype=torch.long))["mask_logits"][0, 0].softmax(-1)
    assert_same_function(torch.cat([p_fine[:32].reshape(16, 2).sum(1), p_fine[32:]]), p_coarse, scale=1.0)


def test_the_mask_params_start_from_the_box_weights_of_stage_1():
    from seqtr_lib.config import REPOSITORY, load_params
    from seqtr_lib.data.refer import scene_classes
    from seqtr_lib.engine import load_finetune_start
    from seqtr_lib.model.seqtr import build_model
    from seqtr_lib.text import Vocabulary

    experiment = load_params(REPOSITORY / "params" / "synthetic_mask.yaml")
    start = ckpt.load(REPOSITORY / experiment.train.finetune_from)
    box_bins = start["config"]["model"]["num_bin"]
    assert (start["config"]["model"]["task"], experiment.model.num_bin) == ("box", 2 * box_bins)
    model = build_model(experiment.model, Vocabulary.from_list(start["vocabulary"]), scene_classes(experiment))
    note = load_finetune_start(model, experiment.model, start, "weights/synthetic_det.pt")
    assert note == (f"fine-tuning from weights/synthetic_det.pt (a box model); each of its {box_bins} bins split "
                    "into 2; decoder.position.weight initialised afresh (another sequence length)")
    released = start["ema"]["token_embedding.weight"].float()
    embedding = model.token_embedding.weight.detach()
    # exact: copies
    assert torch.equal(embedding[10], released[5])  # fine bins 10 and 11 lie in coarse bin 5
    assert torch.equal(embedding[11], released[5])
    assert torch.equal(embedding[-1], released[-1])  # EOS
    assert torch.equal(model.backbone.layers.stem.conv.weight.detach(),
                       start["ema"]["backbone.layers.stem.conv.weight"].float())


def test_resuming_a_run_ignores_its_params_start_checkpoint(tiny_data_root, tmp_path):
    from seqtr_lib import distributed, engine
    from seqtr_lib.config import load_params

    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out", train={"epochs": 1})
    engine.train(load_params(params, ["train.max_steps_per_epoch=2", "train.seed=1"]))
    (tmp_path / "out" / "tiny" / "last.pt").rename(tmp_path / "first.pt")
    engine.train(load_params(params, ["train.max_steps_per_epoch=2", "train.seed=2"]))
    last = tmp_path / "out" / "tiny" / "last.pt"
    experiment = load_params(params, [f"train.resume={last}", f"train.finetune_from={tmp_path / 'first.pt'}",
                                      "train.epochs=2"])
    trainer = engine.Trainer(experiment, distributed.Context(0, 1, 0, torch.device("cpu")))
    resumed, other = ckpt.load(last)["model"], ckpt.load(tmp_path / "first.pt")["model"]
    name = "predictor.4.weight"
    assert not torch.equal(resumed[name], other[name])
    assert torch.equal(trainer.model.state_dict()[name], resumed[name])


def test_validation_reads_the_annotation_file_once_per_run_and_scores_as_a_fresh_read(tiny_data_root, tmp_path,
                                                                                        monkeypatch):
    """Each epoch validates raw and EMA weights on one val set built once (building reads the whole annotation
    file); a held set scores what a freshly built one scores, and a set of another split is refused."""
    from seqtr_lib import distributed, engine, evaluation
    from seqtr_lib.config import load_params
    from seqtr_lib.data.refer import build_dataset

    built = []

    def counting(experiment, split, vocabulary, training, **kwargs):
        built.append((split, training))
        return build_dataset(experiment, split, vocabulary, training, **kwargs)

    monkeypatch.setattr(engine, "build_dataset", counting)
    monkeypatch.setattr(evaluation, "build_dataset", counting)
    experiment = load_params(write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "out"),
                             ["train.epochs=3", "train.max_steps_per_epoch=1"])
    trainer = engine.Trainer(experiment, distributed.setup("cpu"))
    trainer.run()
    assert built.count(("val", False)) == 1 and built.count(("train", True)) == 1
    held = trainer.val_set
    fresh = evaluation.evaluate_model(trainer.model, experiment, trainer.vocabulary, "val", trainer.device)
    again = evaluation.evaluate_model(trainer.model, experiment, trainer.vocabulary, "val", trainer.device,
                                      dataset=held)
    assert again["metrics"] == fresh["metrics"] and again["num_expressions"] == fresh["num_expressions"] > 0
    with pytest.raises(ValueError, match="evaluation set of 'testA'"):
        evaluation.evaluate_model(trainer.model, experiment, trainer.vocabulary, "testA", trainer.device, dataset=held)
