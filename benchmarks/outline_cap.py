"""The best mask mIoU a model could reach: each target's own contour, through tokens, decoded and rasterised.

For each number of contour points (``--num-rays``) and bins (``--num-bins``), the first ``--limit`` expressions
of a split go the way a prediction goes: the transformed mask's contour is sampled as the training targets
are, quantized to tokens, decoded to the original image and rasterised, then compared with the annotated mask
(pycocotools IoU). The decodings:

    lower_edge      a token decodes to its bin's lower edge (the reference)
    bin_centres     to its bin's centre (model.decode_bin_centres)
    offset_D        bin centres, and the contour moved D input pixels outward (model.outline_offset D), for each
                    D of --offsets: cv2's contours run through the boundary pixels' centres, so 0.5 should win
                    when a bin is one input pixel

    python benchmarks/outline_cap.py --params params/synthetic_mask.yaml --split train \\
        --out docs/results/outline_cap_synthetic_mask.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch
from tqdm import tqdm

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.codec import SequenceCodec, TokenLayout, polygon_rle
from seqtr_lib.config import load_params
from seqtr_lib.data.refer import build_dataset, load_vocabulary
from seqtr_lib.reports import cpu_model


def decodings(offsets: list[float]) -> dict[str, tuple[bool, float]]:
    """Name -> (decode_bin_centres, outline_offset)."""
    return {"lower_edge": (False, 0.0), "bin_centres": (True, 0.0),
            **{f"offset_{offset:g}": (True, offset) for offset in offsets}}


def cap(params: str, overrides: list[str], split: str, num_ray: int, num_bin: int, limit: int, seed: int,
        offsets: list[float]) -> dict[str, float]:
    """Mean IoU (%) of each decoding over ``limit`` expressions drawn at random (``seed``) from ``split``."""
    experiment = load_params(params, [*overrides, f"model.num_ray={num_ray}", f"model.num_bin={num_bin}"])
    dataset = build_dataset(experiment, split, load_vocabulary(experiment), training=False)
    codecs = {name: SequenceCodec(TokenLayout("mask", num_bin, num_ray), experiment.model.mapping,
                                  experiment.data.image_size, bin_centres, offset)
              for name, (bin_centres, offset) in decodings(offsets).items()}
    indices = np.random.default_rng(seed).choice(len(dataset), min(limit, len(dataset)), replace=False)
    ious: dict[str, list[float]] = {name: [] for name in codecs}
    for index in tqdm(indices, desc=f"{num_ray} points, {num_bin} bins", leave=False):
        sample = dataset[int(index)]
        meta = sample["meta"]
        for name, codec in codecs.items():
            tokens = codec.encode_vertices(sample["vertices"], meta["pad_shape"])
            predicted = polygon_rle(codec.polygon_in_original(tokens, meta), meta["ori_shape"])
            ious[name].append(float(mask_utils.iou([predicted], [meta["gt_mask_rle"]], [0])[0, 0]))
    return {name: round(100 * float(np.mean(values)), 2) for name, values in ious.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/synthetic_mask.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-rays", default="18,36", help="comma-separated contour point counts")
    parser.add_argument("--num-bins", default="64,128,256", help="comma-separated bin counts")
    parser.add_argument("--offsets", default="0.25,0.5,0.75,1", help="comma-separated outline offsets, input pixels")
    parser.add_argument("--limit", type=int, default=1500, help="expressions, drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (printed either way)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    offsets = [float(value) for value in args.offsets.split(",")]
    rows = []
    for num_ray, num_bin in itertools.product(map(int, args.num_rays.split(",")), map(int, args.num_bins.split(","))):
        rows.append({"num_ray": num_ray, "num_bin": num_bin,
                     **cap(args.params, args.overrides, args.split, num_ray, num_bin, args.limit, args.seed, offsets)})
        print(rows[-1], flush=True)
    results = {"params": args.params, "overrides": args.overrides, "split": args.split, "expressions": args.limit,
               "seed": args.seed, "machine": cpu_model(), "date": datetime.date.today().isoformat(),
               "miou": rows}
    if args.out:
        write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
