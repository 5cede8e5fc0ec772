"""Training throughput of the full 640 px SeqTR configuration on synthetic data held in memory.

One training step is the engine's own (`seqtr_lib.engine.Trainer.step`): forward under autocast, the
label-smoothed loss, backward, gradient-norm clip 0.15, Adam (amsgrad) and the EMA update, with the model
and the images in channels_last. The batches are random 0-255 images with a random un-padded region, valid box (and
mask) tokens and expressions of up to 15 words, built once on the device and cycled, so the numbers
measure the model and the optimizer, not data loading. Each configuration (batch size x compile)
gets a fresh model; out-of-memory is recorded as a result, not a crash.

On a GPU (benchmarks/gpu_check.sh runs it this way)::

    python benchmarks/bench_train.py --batch-sizes 64,128 --compile both --out benchmarks/results/bench_train.json

Check the script itself on a CPU in seconds::

    python benchmarks/bench_train.py --device cpu --tiny --out /tmp/bench_train.json

With ``--real-data DATA_ROOT`` each configuration is also trained end to end from the synthetic set in
DATA_ROOT (written there at ``--image-size`` when absent) through the real loader, LSJ included: once with
the transforms in the loader workers (``host``) and once with ``data.device_transforms`` (``device``, the
workers send JPEG bytes). Each gets ``real_loader_ratio`` = its samples/s over the data-on-device figure::

    python benchmarks/bench_train.py --batch-sizes 128 --compile on --real-data /tmp/synthetic640 \
        --out docs/results/bench_train_real_h100.json

The JSON is rewritten (atomically) after every configuration, so a run stopped by a time limit keeps
what it measured. Exit status 1 if a configuration failed other than by running out of memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from seqtr_lib import distributed
from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.config import DataConfig, Experiment, ModelConfig, SyntheticConfig, TrainConfig
from seqtr_lib.dataset_check import prepare_synthetic
from seqtr_lib.engine import Trainer
from seqtr_lib.evaluation import prefetched
from seqtr_lib.model.seqtr import build_model, count_parameters
from seqtr_lib.text import PAD_ID, Vocabulary

GIB = 2**30
# A small colour/shape/position vocabulary, like the synthetic set's; its size barely matters.
EXPRESSIONS = [
    "the big red square on the left",
    "small blue circle next to the green triangle",
    "yellow star at the top right corner",
    "the second purple ellipse from the bottom",
    "dark orange shape below the white cross",
]
# The full model is ModelConfig's defaults; --tiny shrinks every width so a CPU runs it in seconds.
TINY_MODEL = dict(darknet_width=0.125, word_dim=16, gru_hidden=16, d_model=32, num_heads=2,
                  num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64, num_ray=6)


def synthetic_batch(batch_size: int, image_size: int, max_token: int, vocabulary_size: int, model: ModelConfig,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One random training batch, laid out as `seqtr_lib.data.loader.Collate`'s, on the generator's device.

    images float32 (B, 3, S, S) raw 0-255, zero outside each sample's region; pad_mask bool (B, S, S)
    True on padding. Each region spans the full width and 60-100% of the height (a resized landscape
    photo padded to a square). expression_ids int64 (B, max_token): 3..max_token word ids, then PAD.
    box_tokens int64 (B, 4) with x1 <= x2, y1 <= y2 in [0, num_bin - 1]; mask_tokens int64 (B, 2N):
    N - 3..N vertices, EOS for the missing ones.
    """
    device = generator.device
    options = dict(generator=generator, device=device)
    heights = torch.randint(int(0.6 * image_size), image_size + 1, (batch_size,), **options)
    rows = torch.arange(image_size, device=device)
    pad_mask = (rows[None, :, None] >= heights[:, None, None]).expand(batch_size, image_size, image_size)
    images = torch.rand(batch_size, 3, image_size, image_size, **options) * 255
    images = images.masked_fill(pad_mask[:, None], 0.0)
    lengths = torch.randint(3, max_token + 1, (batch_size,), **options)
    words = torch.randint(PAD_ID + 1, vocabulary_size, (batch_size, max_token), **options)
    expression_ids = words.masked_fill(torch.arange(max_token, device=device)[None, :] >= lengths[:, None], PAD_ID)
    corners = torch.randint(0, model.num_bin, (batch_size, 2, 2), **options).sort(dim=1).values  # (B, 2, [x, y])
    box_tokens = corners.reshape(batch_size, 4)  # (B, [x1, y1, x2, y2])
    points = 2 * model.num_ray
    mask_tokens = torch.randint(0, model.num_bin, (batch_size, points), **options)
    vertices = torch.randint(model.num_ray - 3, model.num_ray + 1, (batch_size,), **options)
    missing = torch.arange(points, device=device)[None, :] >= 2 * vertices[:, None]
    mask_tokens = mask_tokens.masked_fill(missing, model.num_bin)  # EOS
    return dict(images=images, pad_mask=pad_mask.contiguous(), expression_ids=expression_ids, box_tokens=box_tokens,
                mask_tokens=mask_tokens)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_config: ModelConfig, recipe: TrainConfig, vocabulary: Vocabulary,
            batches: list[dict[str, torch.Tensor]], device: torch.device, warmup_steps: int, steps: int,
            seed: int) -> dict[str, Any]:
    """Train a fresh model with the engine's own step (`Trainer.step`) for warm-up then timed steps;
    samples/s, step time and the final loss. ``recipe`` carries compile, EMA, AMP and channels_last."""
    with tempfile.TemporaryDirectory() as run_root:
        experiment = Experiment(name="bench_train", output_dir=run_root, model=model_config,
                                train=dataclasses.replace(recipe, seed=seed))
        trainer = Trainer(experiment, distributed.Context(0, 1, 0, device), vocabulary)
        return _timed_steps(trainer, batches, device, warmup_steps, steps)


def _timed_steps(trainer: Trainer, batches: list[dict[str, torch.Tensor]], device: torch.device,
                 warmup_steps: int, steps: int) -> dict[str, Any]:
    def train_step(step: int) -> torch.Tensor:
        return trainer.step(batches[step % len(batches)])["loss"].detach()

    started = time.perf_counter()
    for step in range(warmup_steps):
        train_step(step)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(warmup_steps, warmup_steps + steps):
        loss = train_step(step)
    synchronize(device)
    elapsed = time.perf_counter() - started
    batch_size = batches[0]["images"].shape[0]
    final_loss = float(loss)
    if not math.isfinite(final_loss):
        raise FloatingPointError(f"the loss is {final_loss} after {warmup_steps + steps} steps")
    return {"samples_per_s": round(batch_size * steps / elapsed, 2), "step_ms": round(1000 * elapsed / steps, 2),
            "warmup_s": round(warmup_s, 2), "final_loss": round(final_loss, 4)}


def measure_real_data(model_config: ModelConfig, recipe: TrainConfig, data: DataConfig, device: torch.device,
                      warmup_steps: int, steps: int, seed: int) -> dict[str, Any]:
    """Train a fresh model from ``data`` through the real loader (workers, collate, transfer, and with
    data.device_transforms the decoding on the device) with the engine's step; samples/s over the timed steps.

    The loader's worker start-up falls in the untimed warm-up steps. Needs warmup_steps + steps batches
    from one epoch of the training split.
    """
    from seqtr_lib.data.loader import build_loader
    from seqtr_lib.data.refer import build_dataset, load_vocabulary

    with tempfile.TemporaryDirectory() as run_root:
        experiment = Experiment(name="bench_train_real", output_dir=run_root, model=model_config, data=data,
                                train=dataclasses.replace(recipe, seed=seed))
        vocabulary = load_vocabulary(experiment)
        trainer = Trainer(experiment, distributed.Context(0, 1, 0, device), vocabulary)
        train_set = build_dataset(experiment, "train", vocabulary, training=True)
        loader = build_loader(train_set, experiment, training=True)
        if len(loader) < warmup_steps + steps:
            raise ValueError(f"{data.data_root} has {len(loader)} training batches of {data.batch_size}; the "
                             f"benchmark needs {warmup_steps + steps}: generate more images (--real-images)")
        trainer.forward_model.train()
        samples, loss = 0, torch.zeros(())
        for index, batch in prefetched(enumerate(loader), device, recipe.channels_last):
            if index == warmup_steps:
                synchronize(device)
                started = time.perf_counter()
            if index >= warmup_steps:
                samples += len(batch["metas"])
            loss = trainer.step(batch)["loss"].detach()
            if index + 1 == warmup_steps + steps:
                break
        synchronize(device)
        elapsed = time.perf_counter() - started
    final_loss = float(loss)
    if not math.isfinite(final_loss):
        raise FloatingPointError(f"the loss is {final_loss} after {warmup_steps + steps} steps")
    return {"samples_per_s": round(samples / elapsed, 2), "step_ms": round(1000 * elapsed / steps, 2),
            "final_loss": round(final_loss, 4)}


def real_data_config(args: argparse.Namespace, batch_size: int, device_transforms: bool) -> DataConfig:
    """The paper's training data pipeline (LSJ at --image-size) over the synthetic set of --real-data."""
    return DataConfig(dataset="synthetic", data_root=str(args.real_data), image_size=args.image_size, lsj=True,
                      batch_size=batch_size, num_workers=args.workers, device_transforms=device_transforms,
                      max_token=args.max_token,
                      synthetic=SyntheticConfig(num_images=args.real_images, image_size=args.image_size, seed=args.seed))


def _is_out_of_memory(error: BaseException) -> bool:
    # torch.compile can wrap an allocation failure in its own exception type.
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small model, 64 px, 2 steps: checks the script on a CPU")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 64,128; tiny: 2)")
    parser.add_argument("--compile", choices=("off", "on", "both"), default=None,
                        help="torch.compile the model: off, on, or both in turn (default both; tiny: off)")
    parser.add_argument("--task", choices=("box", "mask", "multi"), default="box")
    parser.add_argument("--amp", choices=("bf16", "none"), default="bf16", help="autocast dtype (CUDA only)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="EMA update every step")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=False,
                        help="let cuDNN time its convolution algorithms (the engine leaves this off)")
    parser.add_argument("--image-size", type=int, default=None, help="square input side (default 640; tiny: 64)")
    parser.add_argument("--max-token", type=int, default=15)
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps (default 5; tiny: 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; tiny: 2)")
    parser.add_argument("--num-batches", type=int, default=2, help="distinct batches held in memory, cycled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-data", type=Path, default=None, metavar="DATA_ROOT",
                        help="also train end to end from the synthetic set there (written when absent), "
                             "with host-side and device-side transforms")
    parser.add_argument("--real-images", type=int, default=2000, help="images to write for --real-data")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="loader workers for --real-data, and processes writing its set")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_train.json"))
    args = parser.parse_args(argv)
    defaults = {"batch_sizes": "2", "compile": "off", "image_size": 64, "warmup_steps": 1, "steps": 2} if args.tiny \
        else {"batch_sizes": "64,128", "compile": "both", "image_size": 640, "warmup_steps": 5, "steps": 20}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes = [int(size) for size in str(args.batch_sizes).split(",") if size.strip()]
    if args.steps < 1 or args.warmup_steps < 0 or args.num_batches < 1:
        parser.error("--steps and --num-batches must be at least 1, --warmup-steps at least 0")
    if args.image_size % 32:
        parser.error(f"--image-size {args.image_size} must be a multiple of 32 (the backbone's stride)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    model_config = ModelConfig(task=args.task, **(TINY_MODEL if args.tiny else {}))
    recipe = TrainConfig(amp=args.amp, channels_last=args.channels_last)
    vocabulary = Vocabulary.build(EXPRESSIONS)
    counts = count_parameters(build_model(model_config, vocabulary)).values()
    parameters = {"total": sum(total for total, _ in counts), "trainable": sum(trainable for _, trainable in counts)}
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    report: dict[str, Any] = {
        "benchmark": "bench_train",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "settings": {
            "image_size": args.image_size, "max_token": args.max_token, "task": args.task, "tiny": args.tiny,
            "amp": args.amp if device.type == "cuda" else "none", "channels_last": args.channels_last,
            "cudnn_benchmark": args.cudnn_benchmark, "ema": args.ema, "warmup_steps": args.warmup_steps,
            "steps": args.steps, "num_batches": args.num_batches,
            "data": "synthetic, resident on the device", "model": dataclasses.asdict(model_config),
            "real_data": None if args.real_data is None else {
                "data_root": str(args.real_data), "lsj": True, "workers": args.workers,
                "inputs": {"host": "decode, LSJ and padding in the loader workers",
                           "device": "data.device_transforms: workers send JPEG bytes; decode, resize, crop "
                                     "and pad on the device"}},
            "optimizer": {"name": "Adam", "lr": recipe.lr, "betas": list(recipe.betas), "eps": recipe.eps,
                          "amsgrad": recipe.amsgrad, "grad_clip": recipe.grad_clip},
        },
        "parameters": parameters,
        "results": [],
    }
    failed = False
    if args.real_data is not None:
        print(prepare_synthetic(Experiment(data=real_data_config(args, args.batch_sizes[0], False)),
                                workers=max(1, args.workers)), flush=True)  # --workers 0: loading in this process
    generator = torch.Generator(device).manual_seed(args.seed)
    for batch_size in args.batch_sizes:
        batches = [synthetic_batch(batch_size, args.image_size, args.max_token, len(vocabulary), model_config,
                                   generator) for _ in range(args.num_batches)]
        data_bytes = sum(t.numel() * t.element_size() for batch in batches for t in batch.values())
        for compile_model in compile_modes:
            result: dict[str, Any] = {"batch_size": batch_size, "compile": compile_model,
                                      "data_memory_gib": round(data_bytes / GIB, 3)}
            print(f"batch {batch_size}, compile {'on' if compile_model else 'off'} ...", flush=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if compile_model:
                torch.compiler.reset()  # each configuration compiles from scratch, for its own shapes
            try:
                configuration = dataclasses.replace(recipe, compile=compile_model, ema=args.ema)
                result.update(status="ok", **measure(model_config, configuration, vocabulary, batches, device,
                                                     args.warmup_steps, args.steps, args.seed))
            except Exception as error:  # one configuration failing must not lose the others' numbers
                result.update(status="oom" if _is_out_of_memory(error) else "error",
                              error=f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:500]}")
                if result["status"] == "error":
                    failed = True
                    traceback.print_exc()
            if args.real_data is not None and result["status"] == "ok":
                result["real_data"] = {}
                for inputs in ("host", "device"):
                    print(f"  real data, transforms on the {inputs} ...", flush=True)
                    try:
                        data = real_data_config(args, batch_size, device_transforms=inputs == "device")
                        measured = measure_real_data(model_config, configuration, data, device, args.warmup_steps,
                                                     args.steps, args.seed)
                        measured["real_loader_ratio"] = round(measured["samples_per_s"] / result["samples_per_s"], 3)
                        result["real_data"][inputs] = {"status": "ok", **measured}
                    except Exception as error:
                        failed = True
                        traceback.print_exc()
                        result["real_data"][inputs] = {"status": "error", "error": f"{type(error).__name__}: {error}"}
            if device.type == "cuda":
                result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report["results"].append(result)
            write_json_atomic(args.out, report)
            print("  " + json.dumps(result), flush=True)
        del batches
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
