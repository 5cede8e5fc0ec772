"""A dataset tree before training (notebook 00): the synthetic set generated once, and a real tree checked.

`prepare_synthetic` generates the synthetic set the params describe unless that set is already there;
`check_dataset` counts objects, expressions and images per split, lists missing images, and measures
expression lengths and how much of the text the vocabulary and word vectors cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seqtr_lib.config import Experiment
from seqtr_lib.data.datasets import DATASETS, image_path
from seqtr_lib.data.refer import read_annotations
from seqtr_lib.text import clean_expression


def _synthetic_shape(annotation_file: Path) -> tuple[int, int, bool]:
    """(number of images, image side, generalised) of a generated synthetic set; every image has an annotation,
    and a generalised set's records name their objects in ``bboxes``."""
    document = read_annotations(annotation_file)
    annotations = [a for split in document.values() for a in split]
    return (len({a["image_id"] for a in annotations}), (annotations[0]["width"] if annotations else 0),
            bool(annotations) and "bboxes" in annotations[0])


def prepare_synthetic(experiment: Experiment, regenerate: bool = False, workers: int | None = None) -> str:
    """Generate the synthetic set the params describe under data.data_root, unless it is already there.

    A set of another size is never overwritten silently: that needs ``regenerate=True`` (the set is a
    deterministic function of size, seed and image size, so nothing is lost). ``workers``: generating
    processes (`generate_dataset`'s default when None).
    """
    from seqtr_lib.data.synthetic import generate_dataset

    data, synthetic = experiment.data, experiment.data.synthetic
    path = experiment.annotation_path
    wanted = (synthetic.num_images, synthetic.image_size, synthetic.generalised.on)
    if path.is_file() and not regenerate:
        found = _synthetic_shape(path)
        if found != wanted:
            kinds = [" (a generalised set)" if shape[2] else "" for shape in (found, wanted)]
            raise ValueError(f"{path} holds {found[0]} images of {found[1]} px{kinds[0]} but the params ask for "
                             f"{wanted[0]} of {wanted[1]} px{kinds[1]}; set regenerate = True to replace it, or choose "
                             "another data_root")
        return f"kept the synthetic set in {data.data_root} ({found[0]} images of {found[1]} px)"
    summary = generate_dataset(data.data_root, synthetic.num_images, synthetic.seed, synthetic.image_size, workers,
                               generalised=synthetic.generalised)
    return f"generated {synthetic.num_images} images in {summary['seconds']:.0f} s under {data.data_root}"


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
    # The whole file, not a ReferDataset: a check reports every split and problem instead of stopping at one.
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
