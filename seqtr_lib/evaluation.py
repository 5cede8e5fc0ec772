"""Evaluation: generate for every (object, expression) of a split, map tokens back to original pixels, score.

Metrics are exact per expression (gathered across ranks, de-duplicated), computed at the original image
size; the per-expression records feed the evaluation notebook (IoU histograms, failure galleries).
`evaluate` scores a checkpoint's raw and EMA weights on several splits and writes metrics.json;
`evaluate_model` is one model on one split (the trainer's validation calls it too).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqtr_lib import checkpoint as ckpt
from seqtr_lib import distributed
from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.codec import SequenceCodec
from seqtr_lib.config import DECODING_KEYS, TASK_PARTS, Experiment, experiment_from_dict
from seqtr_lib.data.datasets import DATASETS
from seqtr_lib.data.loader import build_loader
from seqtr_lib.data.refer import ReferDataset, build_dataset, scene_classes
from seqtr_lib.execution import Execution, ran_as, recheck_tally, resolve, training_bf16
from seqtr_lib.execution import generate as generate_under
from seqtr_lib.generalised_metrics import (EXPRESSION_TYPES, grec_sample_values, summarize_gres, summarize_grec,
                                          targets_named)
from seqtr_lib.metrics import box_iou, box_metrics, mask_ious, summarize_mask_ious
from seqtr_lib.model.graph_decoding import GraphDecoder
from seqtr_lib.model.seqtr import SeqTR, build_model, without_weight_files
from seqtr_lib.runtime import ExportedSeqTR
from seqtr_lib.text import Vocabulary

if TYPE_CHECKING:  # seqtr_lib.precompute imports this module
    from seqtr_lib.precompute import PrecomputedImages


def autocast(device: torch.device, amp: str):
    """The training step's autocast: bf16/fp16 on CUDA; bf16 on a CPU with bf16 units
    (`execution.training_bf16`: emulated bf16 is slower than float32 there); otherwise nothing."""
    if device.type == "cpu" and training_bf16(device, amp):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if amp == "none" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def move_batch(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Batch to the device; images travel as uint8 (a quarter of the bytes) and become floats there.

    A batch of encoded images (data.device_transforms) is decoded, resized, cropped and padded there.
    """
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
             if k != "encoded_images"}
    if "encoded_images" in batch:
        from seqtr_lib.data.device_images import batch_images

        moved["images"] = batch_images(batch["encoded_images"], batch["metas"], tuple(batch["pad_mask"].shape[-2:]),
                                       device)
    moved["images"] = moved["images"].float()
    if channels_last:
        moved["images"] = moved["images"].contiguous(memory_format=torch.channels_last)
    return moved


def prefetched(pairs: Iterable[tuple[int, dict[str, Any]]], device: torch.device,
               channels_last: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, batch) pairs with each batch moved to the device (`move_batch`) one step ahead.

    On a CUDA device the next batch's copy (and, with data.device_transforms, its decoding and resizing)
    is queued on a side stream before the current batch is handed out, so that it runs while the current
    step computes; the step waits only for its own batch. Elsewhere the batches are moved in turn.
    """
    if device.type != "cuda":
        for index, batch in pairs:
            yield index, move_batch(batch, device, channels_last)
        return
    side = torch.cuda.Stream(device)
    pending: tuple[int, dict[str, Any], torch.cuda.Event] | None = None
    for index, batch in pairs:
        with torch.cuda.stream(side):
            moved = move_batch(batch, device, channels_last)
            ready = torch.cuda.Event()
            ready.record(side)
        if pending is not None:
            yield _on_current_stream(*pending, device)
        pending = (index, moved, ready)
    if pending is not None:
        yield _on_current_stream(*pending, device)


def _on_current_stream(index: int, batch: dict[str, Any], ready: torch.cuda.Event,
                       device: torch.device) -> tuple[int, dict[str, Any]]:
    current = torch.cuda.current_stream(device)
    current.wait_event(ready)
    for value in batch.values():
        if torch.is_tensor(value):
            value.record_stream(current)  # the allocator must not reuse its memory before the step is done
    return index, batch


# The model keys the codec decodes with (the architecture always comes from the checkpoint itself).
TOKEN_FORMAT_KEYS = ("task", "num_bin", "num_ray", "mapping")
ANSWER_CAP_KEYS = ("max_objects", "max_points")  # the data's, part of a generalised model's format


@torch.inference_mode()
def evaluate_model(model: SeqTR | ExportedSeqTR, experiment: Experiment, vocabulary: Vocabulary, split: str,
                   device: torch.device, limit: int | None = None,
                   shuffle_expressions: bool = False, strategy: str = "greedy", top_p: float = 0.9,
                   cuda_graphs: bool = False, execution: Execution | None = None,
                   dataset: ReferDataset | None = None, held: PrecomputedImages | None = None) -> dict[str, Any]:
    """Generate for every (object, expression) of a split on all ranks; gather exact per-expression results.

    Metrics are computed at the original image size from the complete list of expressions, never as a
    mean of per-batch means. ``shuffle_expressions`` is the ablation that proves the words are used: each
    sample is grounded with the expression of another sample of its batch (a fixed random permutation).
    ``strategy`` "top_p" samples each token from the nucleus of mass ``top_p`` (seeded by train.seed and the
    rank) instead of taking the most likely one. ``cuda_graphs`` decodes greedily with
    `seqtr_lib.model.graph_decoding.GraphDecoder` (the same tokens; CUDA graphs on a GPU).
    ``execution`` (`seqtr_lib.execution`) runs the model that way, on a prepared copy when it folds
    BatchNorm; None runs it as the training step does (train.amp, train.channels_last: validation).
    ``dataset``: the split's evaluation dataset (`build_dataset` with ``training=False``) when the caller scores
    it more than once (each epoch's validation, several weights): building it reads the whole annotation file,
    seconds for the synthetic set's 77 MB. ``held``: that dataset's images held in memory
    (`seqtr_lib.precompute`, attached to it): the frozen backbone modules then give their held outputs.
    ``model`` may be an exported network (`seqtr_lib.runtime.ExportedSeqTR`, CPU): it runs as it was
    compiled (``execution``, ``cuda_graphs`` and ``held`` do not apply).
    """
    exported = model if isinstance(model, ExportedSeqTR) else None
    if exported is not None and (execution is not None or cuda_graphs or held is not None):
        raise ValueError("an exported model runs as its runtime compiled it: no execution choice, cuda_graphs or "
                         "held images")
    if dataset is not None and (dataset.split != split or dataset.training):
        raise ValueError(f"dataset is the {'training' if dataset.training else 'evaluation'} set of split "
                         f"{dataset.split!r}; evaluate_model needs the evaluation set of {split!r}")
    if held is not None and (dataset is None or dataset.precomputed_shapes is None or execution is not None):
        raise ValueError("held images (data.precompute_images) need the dataset they are attached to and no "
                         "execution choice")
    if cuda_graphs and strategy != "greedy":
        raise ValueError("cuda_graphs decodes greedily; use strategy 'greedy' or turn cuda_graphs off")
    codec = SequenceCodec.from_experiment(experiment)  # what Collate quantized with
    given, was_training = model, exported is None and model.training
    if exported is None:
        model.eval()
    if execution is not None:
        model = execution.prepare(model)
    graph_decoder = GraphDecoder(model) if cuda_graphs else None
    sampling = None
    if strategy == "top_p":
        sampling = torch.Generator(device=device).manual_seed(experiment.train.seed + distributed.rank())
    dataset = dataset or build_dataset(experiment, split, vocabulary, training=False)
    loader = build_loader(dataset, experiment, training=False, seed=experiment.train.seed, epoch=0)
    permutation_rng = torch.Generator().manual_seed(experiment.train.seed)
    records: list[dict[str, Any]] = []
    skipped = 0
    # A bar that does not wrap the loader: tqdm.notebook would keep a finished loader (and its workers) alive.
    bar = tqdm(total=len(loader), desc=f"evaluate {split}", leave=False, disable=not distributed.is_main_process())
    for batch in loader:
        bar.update(1)
        skipped += batch["num_skipped"]
        if not batch["metas"]:
            continue
        if shuffle_expressions:
            order = torch.randperm(len(batch["metas"]), generator=permutation_rng)
            batch["expression_ids"] = batch["expression_ids"][order]
            batch["metas"] = [{**meta, "expression": batch["metas"][j]["expression"]}
                              for meta, j in zip(batch["metas"], order.tolist())]
        if exported is not None:
            generated = exported.generate(batch["images"], batch["pad_mask"], batch["expression_ids"],
                                          strategy=strategy, top_p=top_p, generator=sampling)
        elif execution is not None:
            batch = move_batch(batch, device, execution.channels_last)
            decoding = {} if graph_decoder is not None else dict(strategy=strategy, top_p=top_p, generator=sampling)
            generated = generate_under(model, execution, batch["images"], batch["pad_mask"], batch["expression_ids"],
                                       decoder=graph_decoder, **decoding)
        else:
            batch = move_batch(batch if held is None else held.fill(batch), device, experiment.train.channels_last)
            with nullcontext() if held is None else held.frozen_outputs(model.backbone, batch):
                generated = _generate_as_trained(model, graph_decoder, batch, device, experiment.train.amp, strategy,
                                                 top_p, sampling)
        generated = {k: v.float().cpu().numpy() if k.endswith("scores") else v.cpu().numpy()
                     for k, v in generated.items()}
        for i, meta in enumerate(batch["metas"]):
            record: dict[str, Any] = {"ann_index": meta["ann_index"], "expression_index": meta["expression_index"],
                                      "image_id": meta["image_id"], "expression": meta["expression"]}
            if codec.layout.generalised:
                record.update(gt_boxes=meta["gt_boxes"], no_target=meta["no_target"],
                              **codec.decode_answer(generated, i, meta))
            else:
                record.update(gt_box=[float(v) for v in meta["gt_box"]], **codec.decode(generated, i, meta))
            if "pred_rle" in record:
                record["gt_rle"] = meta["gt_mask_rle"]
            records.append(record)
        if limit is not None and len(records) >= limit:
            break
    bar.close()
    if was_training:
        given.train()  # a copy that execution.prepare made is dropped
    unique: dict[tuple[int, int], dict[str, Any]] = {}
    for record in distributed.gather_objects(records):
        unique.setdefault((record["ann_index"], record["expression_index"]), record)
    ordered = [unique[key] for key in sorted(unique)]
    skipped = sum(distributed.gather_objects([skipped]))
    metrics = (generalised_metrics_from_records(ordered, experiment.model.task) if codec.layout.generalised
               else metrics_from_records(ordered, experiment.model.task))
    outcome = {"metrics": metrics, "records": ordered,
               "num_expressions": len(ordered), "skipped_images": skipped}
    if exported is not None:
        outcome["ran_as"] = exported.name
        if exported.tally is not None:
            outcome["recheck"] = exported.tally
        return outcome
    tally = recheck_tally(model)
    if tally is not None:  # this process's samples
        outcome.update(recheck=tally, ran_as=ran_as(model, execution))
    return outcome


def _generate_as_trained(model: SeqTR, graph_decoder: GraphDecoder | None, batch: dict[str, Any], device: torch.device,
                         amp: str, strategy: str, top_p: float, sampling: torch.Generator | None
                         ) -> dict[str, torch.Tensor]:
    """Generation as the training step runs the model (train.amp's autocast around encoder and decoder)."""
    with autocast(device, amp):
        if graph_decoder is not None:
            memory = model.encode(batch["images"], batch["pad_mask"], batch["expression_ids"])
            return graph_decoder.generate_from_memory(memory)
        return model.generate(batch["images"], batch["pad_mask"], batch["expression_ids"],
                              strategy=strategy, top_p=top_p, generator=sampling)


def metrics_from_records(records: list[dict[str, Any]], task: str) -> dict[str, float]:
    """Each part's metrics over all records (keys prefixed ``box/`` and ``mask/`` for a multi-task model);
    each record also receives its ``box_iou`` and/or ``mask_iou``, which the saved predictions keep."""
    per_part: dict[str, dict[str, float]] = {}
    for part in TASK_PARTS[task]:
        if part == "box":
            gt = np.array([r["gt_box"] for r in records], dtype=np.float32).reshape(-1, 4)
            pred = np.array([r["pred_box"] for r in records], dtype=np.float32).reshape(-1, 4)
            per_part[part] = box_metrics(pred, gt)
            for record, iou in zip(records, np.asarray(box_iou(pred, gt)).tolist()):
                record["box_iou"] = iou
        else:
            ious, intersections, unions = mask_ious([r["pred_rle"] for r in records], [r["gt_rle"] for r in records])
            per_part[part] = summarize_mask_ious(ious, intersections, unions)
            for record, iou in zip(records, ious.tolist()):
                record["mask_iou"] = iou
    if len(per_part) == 1:
        return dict(*per_part.values())
    return {f"{part}/{key}": value for part, metrics in per_part.items() for key, value in metrics.items()}


def generalised_metrics_from_records(records: list[dict[str, Any]], task: str) -> dict[str, float]:
    """A generalised model's metrics over all records (`seqtr_lib.generalised_metrics`, in percent): GREC's
    ``precision`` (Precision@(F1=1, IoU>=0.5)), ``n_acc`` and ``t_acc`` for boxes, GRES's ``giou``, ``ciou``,
    ``n_acc`` and ``t_acc`` for masks; then the same over each expression type present, prefixed
    ``no_target/``, ``one_target/``, ``several_targets/`` (an accuracy a type cannot have is left out). Each
    record also receives its ``f1`` (boxes) or ``mask_iou`` (masks, gRES's per-sample IoU)."""
    counts = targets_named(records)
    if task == "box":
        f1, num_predicted, num_targets = grec_sample_values([r["pred_boxes"] for r in records],
                                                            [r["gt_boxes"] if not r["no_target"] else []
                                                             for r in records])
        for record, value in zip(records, f1.tolist()):
            record["f1"] = value

        def summarize(rows: np.ndarray) -> dict[str, float]:
            return summarize_grec(f1[rows], num_predicted[rows], num_targets[rows])
    else:
        _, intersections, unions = mask_ious([r["pred_rle"] for r in records], [r["gt_rle"] for r in records])
        target_empty = counts == 0
        predicted_empty = np.array([not r["pred_polygons"] for r in records], dtype=bool)
        for index, record in enumerate(records):
            record["mask_iou"] = summarize_gres(intersections[index:index + 1], unions[index:index + 1],
                                                target_empty[index:index + 1],
                                                predicted_empty[index:index + 1])["giou"] / 100.0

        def summarize(rows: np.ndarray) -> dict[str, float]:
            return summarize_gres(intersections[rows], unions[rows], target_empty[rows], predicted_empty[rows])
    metrics = summarize(np.ones(len(records), dtype=bool)) if records else {}
    for name, of_type in EXPRESSION_TYPES.items():
        rows = of_type(counts)
        if rows.any():
            metrics.update({f"{name}/{key}": value for key, value in summarize(rows).items()})
    return metrics


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[Experiment, Vocabulary, dict[str, SeqTR]]:
    """Rebuild the model(s) stored in a checkpoint: ``{"raw": model, "ema": model}`` (ema when present)."""
    _, experiment, vocabulary, models = _load_models(path, device)
    return experiment, vocabulary, models


def _load_models(path: str | Path, device: torch.device | str
                 ) -> tuple[dict[str, Any], Experiment, Vocabulary, dict[str, SeqTR]]:
    """The checkpoint's payload (read once), its experiment, vocabulary and models."""
    payload = ckpt.load(path)
    experiment = experiment_from_dict(payload["config"], source=str(path))
    vocabulary = Vocabulary.from_list(payload["vocabulary"])
    models = {}
    for name, key in (("raw", "model"), ("ema", "ema")):
        if key in payload:
            model = build_model(without_weight_files(experiment.model), vocabulary, scene_classes(experiment),
                                experiment.data.max_objects, experiment.data.max_points)
            model.load_state_dict(payload[key])
            models[name] = model.to(device).eval()
    return payload, experiment, vocabulary, models


def _load_export(path: str | Path, runtime: str, precision: str
                 ) -> tuple[dict[str, Any], Experiment, Vocabulary, dict[str, ExportedSeqTR]]:
    """`_load_models` of an export folder: its network under the name of the weights it was exported from."""
    network = ExportedSeqTR(path, runtime, precision)
    return {"step": None, "epoch": None}, network.experiment, network.vocabulary, {network.manifest["weights"]: network}


def evaluate(experiment: Experiment, checkpoint_path: str | Path, splits: tuple[str, ...] | None = None,
             save_predictions: bool = True, shuffle_ablation: bool = False, strategy: str = "greedy",
             top_p: float = 0.9, limit: int | None = None, cuda_graphs: bool = False,
             execution: str = "auto", runtime: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """Evaluate the raw and EMA weights of a checkpoint on each split; rank 0 writes metrics.json.

    ``checkpoint_path`` may be an export folder (`seqtr_lib.export`): its network runs under ``runtime`` and
    ``precision`` (`seqtr_lib.runtime.ExportedSeqTR`) and is scored under the name of the weights it holds
    ("ema" as exported by default); ``execution`` and ``cuda_graphs`` do not apply to it.

    The data are the params' at the checkpoint's input size (``data.image_size`` as trained, printed when the
    params say otherwise); the decoding is the params' (`DECODING_KEYS`).

    With ``shuffle_ablation`` each weight set is also evaluated with expressions shuffled across samples
    (keys ``raw_shuffled``/``ema_shuffled``): a model that reads the words must fall far below its score.
    ``limit`` scores only the first expressions of each split (whole batches, in file order).
    Predictions go to ``<run_dir>/predictions/<split>_<weights>.json``: the records without their RLEs, each
    with its ``box_iou`` / ``mask_iou``. ``execution`` (`seqtr_lib.execution`: ``auto``, ``fp32`` or steps
    such as ``channels_last+bf16+fold_bn``) is how the models run; the results name it.
    """
    context = distributed.setup(experiment.train.device)
    try:
        export = Path(checkpoint_path).is_dir()
        if export and (cuda_graphs or context.device.type != "cpu"):
            raise ValueError(f"{checkpoint_path} is an export folder: it runs on the CPU (--set train.device=cpu), "
                             "without cuda_graphs")
        payload, trained, vocabulary, models = (_load_export(checkpoint_path, runtime, precision) if export
                                                else _load_models(checkpoint_path, context.device))
        # The params read the data and decode the tokens: their token format must be the stored model's.
        differences = [f"model.{key}: {getattr(trained.model, key)!r} -> {getattr(experiment.model, key)!r}"
                       for key in TOKEN_FORMAT_KEYS if getattr(trained.model, key) != getattr(experiment.model, key)]
        differences += [f"data.{key}: {getattr(trained.data, key)!r} -> {getattr(experiment.data, key)!r}"
                        for key in ANSWER_CAP_KEYS if getattr(trained.data, key) != getattr(experiment.data, key)]
        if differences:
            raise ValueError(f"checkpoint {checkpoint_path} writes another token format than the params describe "
                             f"(checkpoint -> params: {'; '.join(differences)}); evaluate it with the params it was "
                             "trained with")
        # The input size is the model's, as for predict (the released weights were fine-tuned at 192 px, the
        # synthetic params train at 128): a notebook opened on its params scores them as they were trained.
        if trained.data.image_size != experiment.data.image_size:
            if context.is_main:
                print(f"evaluating at data.image_size {trained.data.image_size}, the checkpoint's input size (the "
                      f"params say {experiment.data.image_size})", flush=True)
            experiment = dataclasses.replace(experiment, data=dataclasses.replace(experiment.data,
                                                                                  image_size=trained.data.image_size))
        # The decoding is the params', so one checkpoint can be scored under several; the results name it.
        decoding = {key: getattr(experiment.model, key) for key in DECODING_KEYS}
        stored = {key: getattr(trained.model, key) for key in DECODING_KEYS}
        if decoding != stored and context.is_main:
            print(f"decoding as the params say, {decoding}; the checkpoint stores {stored} (predict and the "
                  "notebooks use the checkpoint's)", flush=True)
        network = next(iter(models.values())) if export else None  # an export holds one network
        chosen = None if export else resolve(execution, context.device, trained.model, experiment.data.image_size,
                                             generalised=trained.data.max_objects > 0)
        ran_as = (network.name if network is not None else chosen.describe() if chosen is not None
                  else f"as trained (train.amp {experiment.train.amp})")
        if context.is_main:
            print(f"execution: {ran_as}", flush=True)
        splits = splits or tuple(s for s in DATASETS[experiment.data.dataset].splits if s != "train")
        results: dict[str, Any] = {"checkpoint": str(checkpoint_path), "step": payload["step"],
                                   "epoch": payload["epoch"], "image_size": experiment.data.image_size,
                                   "decoding": decoding,
                                   "execution": ran_as if export else chosen.name if chosen is not None
                                   else "as_trained", "splits": {}}
        if strategy != "greedy":
            results.update(strategy=strategy, top_p=top_p)
        if limit:
            results["limit"] = limit
        for split in splits:
            per_split: dict[str, Any] = {}
            dataset = build_dataset(experiment, split, vocabulary, training=False)  # read once for every pass
            for name, model in models.items():
                for shuffled in (False, True) if shuffle_ablation else (False,):
                    key = f"{name}_shuffled" if shuffled else name
                    outcome = evaluate_model(model, experiment, vocabulary, split, context.device,
                                             limit=limit, shuffle_expressions=shuffled, strategy=strategy, top_p=top_p,
                                             cuda_graphs=cuda_graphs, execution=chosen, dataset=dataset)
                    per_split[key] = {**outcome["metrics"], "num_expressions": outcome["num_expressions"],
                                      "skipped_images": outcome["skipped_images"]}
                    if "recheck" in outcome:  # bf16 + recheck: how often float32 was needed, on this process
                        tally = outcome["recheck"]
                        results.setdefault("recheck", {})[f"{split}/{key}"] = {**dataclasses.asdict(tally),
                                                                              "ran_as": outcome["ran_as"]}
                        if context.is_main:
                            print(f"{split} ({key}): {tally.describe()}", flush=True)
                    if save_predictions and context.is_main:
                        write_json_atomic(experiment.run_dir / "predictions" / f"{split}_{key}.json",
                                          [{k: v for k, v in r.items() if not k.endswith("rle")}
                                           for r in outcome["records"]])
            results["splits"][split] = per_split
        if network is not None:  # what ran in the end: the recheck may have given int8 up on the way
            results["execution"] = network.name
        if context.is_main:
            metrics_path = experiment.run_dir / "metrics.json"
            write_json_atomic(metrics_path, _with_earlier_splits(metrics_path, results))
        return results
    finally:
        distributed.teardown()


def _with_earlier_splits(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """``results`` plus the splits an earlier metrics.json at ``path`` holds for the same evaluation (same
    checkpoint, step, strategy and limit), so that `evaluate --splits testA` after `--splits val,testB`
    keeps all three; a split evaluated again takes the new scores."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return results
    same = all(earlier.get(key) == results.get(key)
               for key in ("checkpoint", "step", "epoch", "image_size", "strategy", "top_p", "limit", "execution",
                           "decoding"))
    if not same or not isinstance(earlier.get("splits"), dict):
        return results
    return {**results, "splits": {**earlier["splits"], **results["splits"]}}
