"""Helpers the numbered notebooks call, so that their cells stay a few lines long.

Paths in params files and notebook parameters are relative to the repository root, as on the command
line; each notebook starts with ``os.chdir(repo_root())`` so that JupyterLab (cwd ``notebooks/``) and
papermill (any cwd) agree.

- experiments: `load_experiment` (params file + overrides + the notebooks' output_dir/data_root);
- training from a cell: `launch_torchrun` (streams the log, a failing rank fails the cell),
  `start_fresh_log`, `read_log`, `live_curves`;
- data checks (00): `prepare_synthetic`, `check_dataset`;
- evaluation analysis (02): `metrics_table`, `read_predictions`, `expression_ious`, `category_breakdown`;
- figures: `save_and_show` writes a matplotlib Figure as PNG and displays that PNG in the cell.
"""

from __future__ import annotations

import collections
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqtr_lib.checkpoint import resolve_checkpoint
from seqtr_lib.config import Experiment, load_params
from seqtr_lib.data.refer import DATASETS, decode_mask, image_path, read_annotations
from seqtr_lib.metrics import box_iou
from seqtr_lib.text import clean_expression

# Groups of expression lengths for the breakdown: (label, most words in the group).
LENGTH_BUCKETS = (("up to 3 words", 3), ("4-6 words", 6), ("7-9 words", 9), ("10+ words", 10**9))


def is_project(folder: Path) -> bool:
    """A seqtr project holds ``notebooks/`` and ``params/``: the repository, or a copy by `pipeline.make_project`."""
    return (folder / "notebooks").is_dir() and (folder / "params").is_dir()


def repo_root() -> Path:
    """The project the notebooks run in: the first folder at or above the cwd holding ``notebooks/`` and
    ``params/`` (JupyterLab and papermill start kernels in ``notebooks/``), else the repository the package
    was installed from."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if is_project(folder):
            return folder
    package_parent = Path(__file__).resolve().parent.parent
    if is_project(package_parent):
        return package_parent
    raise FileNotFoundError(f"no folder with notebooks/ and params/ above {Path.cwd()}: start Jupyter inside the "
                            "seqtr repository (or a project made by seqtr_lib.pipeline.make_project)")


def parameter_list(value: Any, name: str) -> list:
    """A list parameter as given: a list, or its JSON/YAML text (``papermill -p`` passes lists as strings).

    Raises ValueError naming the parameter and showing papermill's ``-y`` form for anything else.
    """
    if isinstance(value, str):
        import yaml

        try:
            parsed = yaml.safe_load(value) if value.strip() else []
        except yaml.YAMLError:
            parsed = None
        value = parsed if isinstance(parsed, list) else value
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"parameter {name} must be a list, got {value!r}; with papermill write it as JSON after -p, "
                     f"e.g. -p {name} '[\"a\", \"b\"]', or as YAML with -y '{name}: [a, b]'")


def notebook_overrides(overrides: Sequence[str] = (), output_dir: str = "", data_root: str = "") -> list[str]:
    """The ``--set`` list a notebook's parameters stand for; an empty output_dir/data_root keeps the params file's."""
    extra = [f"output_dir={output_dir}"] * bool(output_dir) + [f"data.data_root={data_root}"] * bool(data_root)
    return [*parameter_list(overrides, "overrides"), *extra]


def load_experiment(params_file: str, overrides: Sequence[str] | str = (), output_dir: str = "",
                    data_root: str = "") -> Experiment:
    """The Experiment of a params file with the notebook's overrides applied (validated, paths as written)."""
    return load_params(params_file, notebook_overrides(overrides, output_dir, data_root))


def default_checkpoint(experiment: Experiment, checkpoint: str = "") -> Path:
    """``checkpoint`` when given, else the run's best.pt, else the released weights; prints which."""
    path, which = resolve_checkpoint(experiment.run_dir, experiment.name, checkpoint)
    print(which)
    return path


# ---------------------------------------------------------------------------------------------------
# Training from a cell
# ---------------------------------------------------------------------------------------------------


def torchrun_command(params_file: str, overrides: Sequence[str], nproc_per_node: int, nnodes: int = 1,
                     rdzv_endpoint: str = "", command: str = "train") -> list[str]:
    """``python -m torch.distributed.run ... -m seqtr_lib <command> --params ... --set ...`` as a list.

    One node runs ``--standalone``; several nodes meet at ``rdzv_endpoint`` (host:port of the first node)
    with the c10d rendezvous, so the same command line works on every node.
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"nproc_per_node ({nproc_per_node}) and nnodes ({nnodes}) must be at least 1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]
    if nnodes == 1 and not rdzv_endpoint:
        launcher.append("--standalone")
    elif not rdzv_endpoint:
        raise ValueError(f"nnodes = {nnodes} needs rdzv_endpoint, the host:port of the first node (e.g. "
                         "node0.cluster:29500), reachable from every node")
    else:
        launcher += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint,
                     "--rdzv_id", "seqtr"]
    sets = [part for item in overrides for part in ("--set", item)]
    return [*launcher, "-m", "seqtr_lib", command, "--params", str(params_file), *sets]


def launch_torchrun(params_file: str, overrides: Sequence[str], nproc_per_node: int, nnodes: int = 1,
                    rdzv_endpoint: str = "", command: str = "train", tail_lines: int = 40) -> None:
    """Run seqtr under torchrun from a notebook cell, streaming its output into the cell.

    Equivalent to ``subprocess.run(cmd, check=True)`` (a shell ``!`` line would hide the exit status): a
    non-zero exit of any rank raises CalledProcessError carrying the last ``tail_lines`` lines.
    """
    cmd = torchrun_command(params_file, overrides, nproc_per_node, nnodes, rdzv_endpoint, command)
    print("$", subprocess.list2cmdline(cmd), flush=True)
    # Unbuffered children print as they go; progress bars redraw every few seconds, not every step.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "5"}
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as process:
        # newline="" keeps "\r": a progress bar redraws in place in Jupyter as in a terminal.
        for line in io.TextIOWrapper(process.stdout, encoding="utf-8", errors="replace", newline=""):
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.endswith("\n"):
                tail.append(line.rstrip())
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, cmd, output="\n".join(tail))


def start_fresh_log(experiment: Experiment) -> Path | None:
    """Before a new (not resumed) run, move an old log.jsonl to log.previous.jsonl so curves show one run."""
    log = experiment.run_dir / "log.jsonl"
    if experiment.train.resume or not log.is_file():
        return None
    return log.replace(log.with_name("log.previous.jsonl"))


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/log.jsonl`` (``type`` "step" or "epoch"); a torn last line is ignored."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training log {path}; rank 0 writes it (on a multi-node run, look on the "
                                "first node) once training has logged its first steps")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the writer may be mid-line while a live view reads
            continue
    return records


@contextmanager
def live_curves(run_dir: str | Path, task: str, every_s: float = 20.0) -> Iterator[None]:
    """Redraw the training curves in the cell every ``every_s`` seconds while the body trains, and at the end."""
    from IPython.display import Image, Markdown, display

    from seqtr_lib.viz import figure_png, training_curves

    handle = display(Markdown("*training curves appear after the first logged steps*"), display_id=True)
    stop = threading.Event()

    def refresh() -> None:
        try:
            records = read_log(run_dir)
        except FileNotFoundError:
            return
        if records:
            handle.update(Image(data=figure_png(training_curves(records, task))))

    def loop() -> None:
        while not stop.wait(every_s):
            refresh()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        refresh()


def save_and_show(figure: Any, path: str | Path, dpi: int = 110) -> None:
    """Write a matplotlib Figure as PNG and display that file in the cell (what you see is what is saved)."""
    from IPython.display import Image, display

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    display(Image(filename=str(path)))


# ---------------------------------------------------------------------------------------------------
# Data (00_prepare_data)
# ---------------------------------------------------------------------------------------------------


def _synthetic_shape(annotation_file: Path) -> tuple[int, int]:
    """(number of images, image side) of a generated synthetic set; every image has an annotation."""
    document = read_annotations(annotation_file)
    annotations = [a for split in document.values() for a in split]
    return len({a["image_id"] for a in annotations}), (annotations[0]["width"] if annotations else 0)


def prepare_synthetic(experiment: Experiment, regenerate: bool = False) -> str:
    """Generate the synthetic set the params describe under data.data_root, unless it is already there.

    A set of another size is never overwritten silently: that needs ``regenerate=True`` (the set is a
    deterministic function of size, seed and image size, so nothing is lost).
    """
    from seqtr_lib.data.synthetic import generate_dataset

    data = experiment.data
    path = experiment.annotation_path
    wanted = (data.synthetic_images, data.synthetic_image_size)
    if path.is_file() and not regenerate:
        found = _synthetic_shape(path)
        if found != wanted:
            raise ValueError(f"{path} holds {found[0]} images of {found[1]} px but the params ask for {wanted[0]} "
                             f"of {wanted[1]} px; set regenerate = True to replace it, or choose another data_root")
        return f"kept the synthetic set in {data.data_root} ({found[0]} images of {found[1]} px)"
    summary = generate_dataset(data.data_root, data.synthetic_images, data.synthetic_seed, data.synthetic_image_size)
    return f"generated {data.synthetic_images} images in {summary['seconds']:.0f} s under {data.data_root}"


@dataclass
class DatasetReport:
    """What 00_prepare_data checks in a dataset tree."""

    annotation_file: Path
    splits: dict[str, dict[str, int]]  # split -> objects, expressions, images, missing_images
    absent_splits: list[str]  # splits the dataset should have but the file lacks
    missing_examples: list[str]  # a few missing image paths
    lengths: dict[str, list[int]]  # split -> words per expression
    max_token: int
    vocabulary_size: int
    unknown_word_share: dict[str, float]  # split -> share of words outside the training vocabulary
    word_vector_coverage: float | None  # share of vocabulary words the word vectors know (None: random)

    def table(self) -> str:
        """Counts per split as aligned text."""
        lines = [f"{'split':<8}{'objects':>9}{'expressions':>13}{'images':>8}{'missing':>9}{'unknown words':>15}"]
        for split, counts in self.splits.items():
            lines.append(f"{split:<8}{counts['objects']:>9}{counts['expressions']:>13}{counts['images']:>8}"
                         f"{counts['missing_images']:>9}{self.unknown_word_share[split]:>14.1%}")
        return "\n".join(lines)


def check_dataset(experiment: Experiment, load_word_vectors: bool = True) -> DatasetReport:
    """Counts per split, missing images, expression lengths and vocabulary coverage of a dataset tree."""
    from seqtr_lib.data.refer import load_vocabulary
    from seqtr_lib.text import load_word_vectors as read_vectors

    data = experiment.data
    document = read_annotations(experiment.annotation_path)
    vocabulary = load_vocabulary(experiment)
    splits, lengths, unknown, missing_examples = {}, {}, {}, []
    for split, annotations in document.items():
        paths = {image_path(data.data_root, data.dataset, a) for a in annotations}
        missing = sorted(str(p) for p in paths if not p.is_file())
        missing_examples += missing[:3]
        words = [clean_expression(e) for a in annotations for e in a["expressions"]]
        splits[split] = {"objects": len(annotations), "expressions": len(words), "images": len(paths),
                         "missing_images": len(missing)}
        lengths[split] = [len(w) for w in words]
        flat = [word for expression in words for word in expression]
        unknown[split] = sum(word not in vocabulary for word in flat) / max(len(flat), 1)
    coverage = None
    if load_word_vectors and experiment.model.word_vectors != "random":
        _, coverage = read_vectors(vocabulary, experiment.model.word_vectors, experiment.model.word_dim)
    absent = [s for s in DATASETS[data.dataset].splits if s not in document]
    return DatasetReport(experiment.annotation_path, splits, absent, missing_examples, lengths,
                         experiment.max_token, len(vocabulary), unknown, coverage)


@dataclass
class Sample:
    """One annotated object of a split with its image, in original pixels."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    annotation: dict[str, Any]
    expression: str
    box: np.ndarray  # (4,) x1, y1, x2, y2
    mask: np.ndarray | None  # (H, W) uint8, None when the annotation has no mask


_PARSED: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]] = {}


def annotations_of(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """`read_annotations`, parsed once per version of the file: cells ask for samples one at a time, and a
    RefCOCO file takes seconds to parse. Only the latest file is kept. Do not modify the result."""
    path = Path(path)
    if not path.is_file():
        return read_annotations(path)  # its error names the file and the fix
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _PARSED:
        _PARSED.clear()
        _PARSED[key] = read_annotations(path)
    return _PARSED[key]


def load_sample(experiment: Experiment, split: str, index: int, expression_index: int = 0) -> Sample:
    """Annotation ``index`` of ``split`` with its image, box, mask and one of its expressions."""
    from seqtr_lib.data.refer import read_image

    annotations = annotations_of(experiment.annotation_path)[split]
    if not 0 <= index < len(annotations):
        raise IndexError(f"sample_index {index} is outside split {split!r} of {experiment.annotation_path} "
                         f"(0 .. {len(annotations) - 1})")
    annotation = annotations[index]
    image = read_image(image_path(experiment.data.data_root, experiment.data.dataset, annotation))
    x, y, w, h = annotation["bbox"]
    mask = decode_mask(annotation["mask"], *image.shape[:2])[0] if "mask" in annotation else None
    expressions = annotation["expressions"]
    return Sample(image, annotation, expressions[expression_index % len(expressions)],
                  np.array([x, y, x + w, y + h], dtype=np.float32), mask)


def pad_shape_of(image: np.ndarray, multiple: int = 32) -> tuple[int, int]:
    """(pad_h, pad_w): the image size rounded up to a multiple of 32, as the network's input is padded."""
    height, width = image.shape[:2]
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def padded(mask: np.ndarray, pad_shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) mask zero-padded at the bottom and right to pad_shape."""
    return np.pad(mask, ((0, pad_shape[0] - mask.shape[0]), (0, pad_shape[1] - mask.shape[1])))


def target_sequence(experiment: Experiment, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The training target of a sample at its original resolution: points (K, 2) and tokens.

    Box task: the two corners and 4 tokens; mask and multi-task: the sampled contour vertices
    (``model.num_ray``, ``data.center_sampling``) and 2 * num_ray tokens (EOS for missing points).
    Training does the same after resizing the long side to ``data.image_size``.
    """
    from seqtr_lib.sequence import box_to_tokens, sample_mask_vertices, vertices_to_tokens

    pad_shape, num_bin = pad_shape_of(sample.image), experiment.model.num_bin
    if experiment.model.task == "box":
        return sample.box.reshape(2, 2), box_to_tokens(sample.box, pad_shape, num_bin)
    if sample.mask is None:
        raise ValueError(f"annotation {sample.annotation.get('image_id')} has no mask, but task "
                         f"{experiment.model.task!r} needs one")
    vertices = sample_mask_vertices(padded(sample.mask, pad_shape), experiment.model.num_ray, pad_shape,
                                    experiment.data.center_sampling)
    return vertices.T[(vertices >= 0).all(axis=0)], vertices_to_tokens(vertices, pad_shape, num_bin)


def optional_grounder(experiment: Experiment, checkpoint: str = ""):
    """A Grounder as `default_checkpoint` picks it, or None with a note when there is no checkpoint."""
    from seqtr_lib.predict import Grounder

    try:
        path = default_checkpoint(experiment, checkpoint)
    except FileNotFoundError as error:
        print(f"{error}: showing targets only")
        return None
    return Grounder.from_checkpoint(path)


def prediction_iou(sample: Sample, prediction: Any) -> float:
    """IoU of a `predict.Prediction` with the sample's annotation: boxes for a box, masks for a mask."""
    if prediction.task == "box":
        return float(box_iou(prediction.box[None], sample.box[None])[0])
    if sample.mask is None:
        raise ValueError(f"annotation {sample.annotation.get('image_id')} has no mask to compare a mask with")
    from seqtr_lib.metrics import mask_ious
    from seqtr_lib.sequence import mask_to_rle

    return float(mask_ious([mask_to_rle(prediction.mask)], [mask_to_rle(sample.mask)])[0][0])


def attention_examples(experiment: Experiment, grounder: Any, split: str = "val",
                       count: int = 12) -> list[tuple[Sample, Any, float]]:
    """The first ``count`` samples of a split (all, if it has fewer) predicted with their attention maps,
    best IoU first: [(sample, prediction, iou)]."""
    examples = []
    for index in range(min(count, len(annotations_of(experiment.annotation_path)[split]))):
        sample = load_sample(experiment, split, index)
        prediction = grounder.predict(sample.image, sample.expression, return_attention=True)
        examples.append((sample, prediction, prediction_iou(sample, prediction)))
    return sorted(examples, key=lambda example: -example[2])


def _polygons(annotation: dict[str, Any]) -> list | None:
    return annotation["mask"] if isinstance(annotation.get("mask"), list) else None


def sample_gallery(experiment: Experiment, split: str = "train", num_samples: int = 12, seed: int = 0):
    """A grid of random objects of a split with box, mask polygons and one expression each."""
    from seqtr_lib.viz import draw_comparison, grid_figure

    annotations = annotations_of(experiment.annotation_path)[split]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(annotations), size=min(num_samples, len(annotations)), replace=False)
    figure, axes = grid_figure(len(picks))
    for ax, pick in zip(axes, picks):
        sample = load_sample(experiment, split, int(pick), int(rng.integers(1000)))
        draw_comparison(ax, sample.image, sample.box, _polygons(sample.annotation), title=sample.expression)
    return figure


def failure_gallery(experiment: Experiment, split: str, records: Sequence[dict[str, Any]], ious: np.ndarray,
                    count: int = 8):
    """The ``count`` objects whose worst expression has the lowest IoU, worst first.

    One panel per object (its expressions often fail together); ground truth green, prediction red.
    """
    from seqtr_lib.viz import draw_comparison, grid_figure

    task = experiment.model.task
    worst, shown = [], set()
    for i in np.argsort(ious, kind="stable"):
        if records[i]["ann_index"] not in shown and len(worst) < count:
            worst.append(i)
            shown.add(records[i]["ann_index"])
    figure, axes = grid_figure(len(worst))
    for ax, i in zip(axes, worst):
        record = records[i]
        sample = load_sample(experiment, split, record["ann_index"], record["expression_index"])
        polygon = record.get("pred_polygon")
        draw_comparison(ax, sample.image, sample.box if task != "mask" else None,
                        _polygons(sample.annotation) if task != "box" else None, record.get("pred_box"),
                        np.reshape(polygon, (-1, 2)) if polygon is not None and task != "box" else None,
                        title=f"IoU {ious[i]:.2f}: {record['expression']}")
    return figure


# ---------------------------------------------------------------------------------------------------
# Evaluation analysis (02_evaluate)
# ---------------------------------------------------------------------------------------------------


def metrics_table(results: dict[str, Any]) -> str:
    """engine.evaluate's results as aligned text: one row per split and weights, metrics in percent."""
    rows = [(split, weights, metrics) for split, per_split in results["splits"].items()
            for weights, metrics in per_split.items()]
    columns = [k for k in rows[0][2] if k not in ("num_expressions", "skipped_images")] if rows else []
    lines = [f"{'split':<8}{'weights':<14}" + "".join(f"{c:>13}" for c in columns) + f"{'expressions':>13}"]
    for split, weights, metrics in rows:
        lines.append(f"{split:<8}{weights:<14}" + "".join(f"{metrics[c]:>13.2f}" for c in columns)
                     + f"{metrics['num_expressions']:>13}")
    return "\n".join(lines)


def read_predictions(experiment: Experiment, split: str, weights: str = "ema") -> list[dict[str, Any]]:
    """The per-expression records engine.evaluate wrote for a split and weight set."""
    path = experiment.run_dir / "predictions" / f"{split}_{weights}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no predictions {path}: evaluate split {split!r} first (weights are 'raw', "
                                "'ema' when the checkpoint has EMA weights, and '<weights>_shuffled')")
    return json.loads(path.read_text())


def expression_ious(records: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]], task: str) -> np.ndarray:
    """IoU of each record's prediction with its ground truth: boxes for task box/multi, masks for mask.

    Masks are rasterised at the original image size with the engine's rules (fewer than 2 points: empty;
    2 points: the box they span), against the annotation's mask. Returns float64 (N,).
    """
    from seqtr_lib.metrics import mask_ious
    from seqtr_lib.sequence import polygon_to_rle

    if task != "mask":
        pred = np.array([r["pred_box"] for r in records], dtype=np.float64).reshape(-1, 4)
        gt = np.array([r["gt_box"] for r in records], dtype=np.float64).reshape(-1, 4)
        return box_iou(pred, gt)
    pred_rles, gt_rles = [], []
    for record in records:
        annotation = annotations[record["ann_index"]]
        height, width = annotation["height"], annotation["width"]
        pred_rles.append(polygon_to_rle([record["pred_polygon"]], height, width))
        gt_rles.append(decode_mask(annotation["mask"], height, width)[1])
    return mask_ious(pred_rles, gt_rles)[0]


def _length_bucket(expression: str) -> str:
    words = len(clean_expression(expression))
    return next(label for label, most in LENGTH_BUCKETS if words <= most)


def category_breakdown(records: Sequence[dict[str, Any]], ious: np.ndarray,
                       annotations: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean IoU and Acc@0.5 (percent) by expression length and, where annotated, by expression type.

    The synthetic set records each expression's type (attribute, size, position, relation) in the
    annotation field ``expression_types``. Returns {grouping: {group: {"n", "miou", "acc@0.5"}}}.
    """
    groups: dict[str, dict[str, list[float]]] = {"expression length": {}}
    for record, iou in zip(records, ious):
        groups["expression length"].setdefault(_length_bucket(record["expression"]), []).append(float(iou))
        types = annotations[record["ann_index"]].get("expression_types")
        if types:
            groups.setdefault("expression type", {}).setdefault(types[record["expression_index"]], []).append(float(iou))
    order = {label: i for i, (label, _) in enumerate(LENGTH_BUCKETS)}
    return {grouping: {name: {"n": len(values), "miou": 100 * float(np.mean(values)),
                              "acc@0.5": 100 * float(np.mean(np.asarray(values) >= 0.5))}
                       for name, values in sorted(members.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))}
            for grouping, members in groups.items()}


def breakdown_table(breakdown: dict[str, dict[str, dict[str, float]]]) -> str:
    """category_breakdown as aligned text."""
    lines = []
    for grouping, members in breakdown.items():
        lines.append(f"{grouping:<20}{'n':>7}{'mIoU':>9}{'Acc@0.5':>10}")
        lines += [f"  {name:<18}{v['n']:>7}{v['miou']:>9.2f}{v['acc@0.5']:>10.2f}" for name, v in members.items()]
    return "\n".join(lines)
