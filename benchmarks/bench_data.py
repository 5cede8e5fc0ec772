"""Training-pipeline throughput per loader worker: decode JPEG + LSJ + pad + targets + collate.

Generates photo-like 640 px JPEGs with polygon objects in a temporary data_root (instances.json in the
synthetic layout), then runs ReferDataset + Collate in this one process with one OpenCV and one torch
thread, exactly as a loader worker does, for the box and the mask task. Writes JSON::

    python benchmarks/bench_data.py --out benchmarks/results/bench_data.json

Target: >= 150 samples/s per core for boxes, so 16 loader processes feed one GPU at >= 2,000 samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from seqtr_lib.codec import SequenceCodec, TokenLayout
from seqtr_lib.config import load_params
from seqtr_lib.data.loader import Collate, build_loader
from seqtr_lib.data.refer import ReferDataset, build_dataset
from seqtr_lib.images import read_image
from seqtr_lib.reports import cpu_model
from seqtr_lib.text import Vocabulary

SHAPES = ((480, 640), (640, 480), (427, 640), (640, 640))  # (height, width), COCO-like long side 640


def photo_like(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[list[float]]]:
    """A textured (H, W, 3) BGR image with 3-6 filled polygons, and the polygons (flat x, y lists)."""
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 40, (height, width, 3), dtype=np.uint8))  # fine detail, like photos
    polygons = []
    for _ in range(rng.integers(3, 7)):
        center = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height])
        radius = rng.uniform(0.05, 0.3) * min(height, width)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 12)))
        directions = np.stack([np.cos(angles), np.sin(angles)], 1)
        points = center + radius * rng.uniform(0.5, 1.0, (len(angles), 1)) * directions
        points = np.clip(points, 0, [width - 1, height - 1])
        cv2.fillPoly(image, [points.astype(np.int32)], rng.integers(0, 256, 3).tolist())
        polygons.append(points.reshape(-1).round(2).tolist())
    return image, polygons


def write_dataset(root: Path, num_images: int, seed: int, repeats: int) -> tuple[list[str], float]:
    """Images and instances.json under ``root``; returns the expressions and the mean JPEG size in kB.

    The annotations are listed ``repeats`` times so that a loader epoch lasts long enough to measure.
    """
    rng = np.random.default_rng(seed)
    folder = root / "images" / "synthetic"
    folder.mkdir(parents=True)
    annotations, sizes = [], []
    for image_id in range(num_images):
        height, width = SHAPES[image_id % len(SHAPES)]
        image, polygons = photo_like(rng, height, width)
        path = folder / f"{image_id}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        sizes.append(path.stat().st_size)
        for number, polygon in enumerate(polygons):
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append({
                "image_id": image_id, "height": height, "width": width,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "mask": [polygon], "expressions": [f"shape number {number}", f"the object {number} here"]})
    (root / "annotations" / "synthetic").mkdir(parents=True)
    (root / "annotations" / "synthetic" / "instances.json").write_text(json.dumps({"train": annotations * repeats}))
    return [e for a in annotations for e in a["expressions"]], float(np.mean(sizes) / 1024)


def samples_per_second(dataset: ReferDataset, collate: Collate, seconds: float, batch_size: int) -> float:
    """Load and collate batches of consecutive samples for about ``seconds`` (after one warm-up batch)."""
    collate([dataset[(0, i % len(dataset))] for i in range(batch_size)])  # lazy imports, first allocations
    done, index, epoch = 0, 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        keys = [(epoch, (index + i) % len(dataset)) for i in range(batch_size)]
        collate([dataset[key] for key in keys])
        index += batch_size
        epoch += index // len(dataset)
        done += batch_size
    return done / (time.perf_counter() - started)


def loader_samples_per_second(root: Path, vocabulary: Vocabulary, task: str, workers: int, batch_size: int,
                              seconds: float, seed: int, image_dtype: torch.dtype) -> float:
    """A whole DataLoader (build_loader, ``workers`` processes) feeding the main process, and the GPU if any.

    Images reach the device as float32 either way (uint8 batches are converted there).
    """
    experiment = load_params(None, [f"data.data_root={root}", f"model.task={task}", f"data.num_workers={workers}",
                                    f"data.batch_size={batch_size}", f"train.seed={seed}"])
    dataset = build_dataset(experiment, "train", vocabulary, training=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    done, started, epoch = 0, 0.0, 0
    while True:
        for batch in build_loader(dataset, experiment, training=True, epoch=epoch, image_dtype=image_dtype):
            batch["images"].to(device, non_blocking=True).float()
            if not started:  # the first batch pays for the workers' start
                started = time.perf_counter()
                continue
            done += len(batch["metas"])
            if time.perf_counter() - started > seconds:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return done / (time.perf_counter() - started)
        epoch += 1


def decodes_per_second(paths: list[Path], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        read_image(paths[done % len(paths)])
        done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/bench_data.json")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[],
                        help="also measure whole DataLoaders with these worker counts (batch 128)")
    args = parser.parse_args()

    # One worker = one core. Set before any loader forks: changing it inside a worker deadlocks.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        expressions, mean_kb = write_dataset(root, args.num_images, args.seed, repeats=20)
        vocabulary = Vocabulary.build(expressions)
        paths = sorted((root / "images" / "synthetic").glob("*.jpg"))
        results["decode_only"] = {"samples_per_s": decodes_per_second(paths, args.seconds)}
        for task, training, dtype in (("box", True, torch.float32), ("box", True, torch.uint8),
                                      ("box", False, torch.float32), ("mask", True, torch.float32),
                                      ("mask", True, torch.uint8), ("mask", False, torch.float32)):
            dataset = ReferDataset(root, "synthetic", "train", task, vocabulary, training=training,
                                   image_size=640, lsj=True, num_ray=18, seed=args.seed)
            codec = SequenceCodec(TokenLayout(task, num_bin=1000, num_ray=18))
            collate = Collate(codec, shuffle_fraction=0.2 if training and task == "mask" else 0.0, image_dtype=dtype)
            rate = samples_per_second(dataset, collate, args.seconds, args.batch_size)
            name = f"{task}_{'train_lsj' if training else 'eval_resize'}_{str(dtype).removeprefix('torch.')}"
            results[name] = {"samples_per_s": rate}
        for workers in args.loader_workers:
            for task, dtype in (("box", torch.float32), ("box", torch.uint8), ("mask", torch.uint8)):
                rate = loader_samples_per_second(root, vocabulary, task, workers, 128, args.seconds, args.seed,
                                                 dtype)
                name = f"loader_{task}_train_lsj_{workers}_workers_{str(dtype).removeprefix('torch.')}"
                results[name] = {"samples_per_s": rate}
    report = {
        "benchmark": "data pipeline per worker (1 process, 1 OpenCV thread, 1 torch thread); loader_* rows: "
                     "whole DataLoaders, batches moved to the GPU when there is one",
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "image_long_side": 640,
        "num_images": args.num_images,
        "mean_jpeg_kb": round(mean_kb, 1),
        "batch_size": args.batch_size,
        "seconds_per_measurement": args.seconds,
        "target_box_train_samples_per_s": 150,
        "results": {name: {k: round(v, 1) for k, v in value.items()} for name, value in results.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
