"""Latency of SeqTR generation with the key/value cache against recomputing the prefix (the reference's way).

For each model (the full 640 px configuration and the small synthetic-set CPU model), task (box: 4
steps; mask: 2N = 36 steps with num_ray 18) and batch size, with the same random weights:

    encode_s            backbone + expression encoder + fusion + transformer encoder
    decode_cached_s     `generate_from_memory(..., use_cache=True)`
    decode_recompute_s  `generate_from_memory(..., use_cache=False)`
    decode_graph_s      `GraphDecoder(model).generate_from_memory(...)`: static shapes, CUDA graphs on a GPU
    speedup             decode_recompute_s / decode_cached_s
    graph_speedup       decode_cached_s / decode_graph_s (graph_tokens_equal: the same tokens as cached)
    decode_share        decode_cached_s / (encode_s + decode_cached_s), the decoder's part of inference

Each figure is the median of ``--repeats`` runs after one warm-up run. The EOS logit is suppressed so
every mask decode runs all 2N steps (random weights could otherwise stop early). The reference
decodes 2N + 1 steps; the last one can only produce EOS or an odd token that is dropped, so we stop
at 2N. When encoding a batch would take longer than ``--max-encode-seconds`` (the 640 px model at
batch 32 on a CPU), the batch-1 memory is repeated for the decode timings and encode_s is
extrapolated linearly from batch 1 (``encode_extrapolated``: true).

    python benchmarks/bench_decode.py                    # both models, batch 1 and 32
    python benchmarks/bench_decode.py --quick            # small model only, fewer repeats
    python benchmarks/bench_decode.py --device cuda --out benchmarks/results/bench_decode_gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.config import ModelConfig
from seqtr_lib.model.graph_decoding import GraphDecoder
from seqtr_lib.model.seqtr import Memory, SeqTR, build_model
from seqtr_lib.reports import cpu_model
from seqtr_lib.text import PAD_ID, Vocabulary

VOCABULARY = Vocabulary.build(["the big red square on the left of the small blue circle near a green star"])
MAX_TOKEN = 15
# name -> (model overrides on ModelConfig's full-size defaults, image size)
MODELS = {
    "full_640": ({}, 640),
    "small_cpu_256": (dict(darknet_width=0.25, word_dim=64, freeze_word_vectors=False, gru_hidden=64, d_model=128,
                           num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=256), 256),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after one warm-up call."""
    run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def random_inputs(batch: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random 0-255 images whose lower quarter is padding, and random 8-word expressions."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, image_size, image_size, generator=generator) * 255
    pad_mask = torch.zeros(batch, image_size, image_size, dtype=torch.bool)
    pad_mask[:, image_size * 3 // 4 :] = True
    images[pad_mask[:, None].expand_as(images)] = 0
    expression_ids = torch.randint(PAD_ID + 1, len(VOCABULARY), (batch, MAX_TOKEN), generator=generator)
    expression_ids[:, 8:] = PAD_ID
    return images.to(device), pad_mask.to(device), expression_ids.to(device)


def repeat_memory(memory: Memory, batch: int) -> Memory:
    return Memory(*(part.repeat(batch, *[1] * (part.ndim - 1)) for part in memory[:3]))


def build(task: str, overrides: dict[str, Any], device: torch.device) -> SeqTR:
    torch.manual_seed(0)
    model = build_model(ModelConfig(task=task, **overrides), VOCABULARY).to(device).eval()
    with torch.no_grad():
        model.predictor[-1].bias[model.layout.eos] = -1e4  # decode every step
    return model


def measure(name: str, task: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    overrides, image_size = MODELS[name]
    model = build(task, overrides, device)
    inputs = random_inputs(1, image_size, device)
    with torch.inference_mode():
        encode_one = median_seconds(lambda: model.encode(*inputs), args.repeats, device)
        extrapolated = batch > 1 and encode_one * batch > args.max_encode_seconds
        if extrapolated:
            encode_s = encode_one * batch
            memory = repeat_memory(model.encode(*inputs), batch)
        else:
            if batch > 1:
                inputs = random_inputs(batch, image_size, device)
            encode_s = median_seconds(lambda: model.encode(*inputs), args.repeats, device) if batch > 1 else encode_one
            memory = model.encode(*inputs)
        cached = median_seconds(lambda: model.generate_from_memory(memory, use_cache=True), args.repeats, device)
        recompute = median_seconds(lambda: model.generate_from_memory(memory, use_cache=False), args.repeats, device)
        graph_decoder = GraphDecoder(model)  # the warm-up call of median_seconds captures the graphs
        graphed = median_seconds(lambda: graph_decoder.generate_from_memory(memory), args.repeats, device)
        expected, got = model.generate_from_memory(memory), graph_decoder.generate_from_memory(memory)
        tokens_equal = all(torch.equal(expected[key], got[key]) for key in expected if key.endswith("_tokens"))
    steps = sum(model.layout.length(part) for part in model.layout.parts_to_generate(task))
    return {
        "model": name, "image_size": image_size, "task": task, "batch": batch, "steps": steps,
        "memory_tokens": memory.features.shape[1],
        "encode_s": encode_s, "encode_extrapolated": extrapolated,
        "decode_cached_s": cached, "decode_recompute_s": recompute, "decode_graph_s": graphed,
        "speedup": recompute / cached, "graph_speedup": cached / graphed, "graph_tokens_equal": tokens_equal,
        "decode_share": cached / (encode_s + cached),
        "cached_ms_per_step": 1000 * cached / steps,
    }


def machine(device: torch.device) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--tasks", default="box,mask")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-encode-seconds", type=float, default=60.0,
                        help="extrapolate encode time from batch 1 when a batch would take longer")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--quick", action="store_true", help="small model only, 2 repeats")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_decode.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.repeats = "small_cpu_256", 2
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    report = {
        "benchmark": "bench_decode",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "settings": {"num_ray": ModelConfig().num_ray, "repeats": args.repeats,
                     "max_encode_seconds": args.max_encode_seconds},
        "results": [],
    }
    for name in args.models.split(","):
        for task in args.tasks.split(","):
            for batch in (int(size) for size in args.batch_sizes.split(",")):
                result = measure(name, task, batch, args, device)
                report["results"].append(result)
                write_json_atomic(args.out, report)
                rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
                print(json.dumps(rounded), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
