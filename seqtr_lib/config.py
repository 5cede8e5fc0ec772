"""Experiment configuration: params YAML -> frozen, typed dataclasses, with ``--set key=value`` overrides.

A params file has four sections, each a dataclass below::

    name: synthetic_det          # experiment name; results go to <output_dir>/<name>/
    model: {task: box, ...}      # ModelConfig
    data: {dataset: synthetic, ..., synthetic: {num_images: 6000, ...}}   # DataConfig, SyntheticConfig
    train: {epochs: 30, ...}

A nested key is overridden with its dotted name: ``--set data.synthetic.num_images=2000``.

Everything is validated when loaded, before any heavy work: unknown keys (with the closest valid key
suggested, or where a renamed key went), wrong types, out-of-range values and missing files each fail with
the key named. Configs stored in checkpoints are read with the same rules, renamed keys upgraded.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqtr_lib.data.datasets import DATASETS, annotation_path

REPOSITORY = Path(__file__).resolve().parent.parent  # the folder holding seqtr_lib/, params/ and weights/

# The parts of each task's sequence, in order (seqtr_lib.codec lays them out).
TASK_PARTS = {"box": ("box",), "mask": ("mask",), "multi": ("box", "mask")}
TASKS = tuple(TASK_PARTS)
AMP_MODES = ("none", "bf16", "fp16")
MAPPINGS = ("relative", "absolute")
MEMORY_STRIDES = (32, 16)
# Model keys that change how tokens become pixels, not the network (evaluation records them).
DECODING_KEYS = ("decode_bin_centres", "outline_offset")


class ConfigError(ValueError):
    """A params file or override is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    task: str = "box"  # box | mask | multi (box then mask in one sequence)
    num_bin: int = 1000  # coordinate quantization bins; EOS is one more id
    num_ray: int = 18  # mask contour points (18 RefCOCO, 12 RefCOCO+/g)
    mapping: str = "relative"  # coordinates divided by the padded size (relative) or image_size (absolute)
    decode_bin_centres: bool = False  # a token decodes to its bin's centre (the reference: the lower edge)
    outline_offset: float = 0.0  # input pixels a decoded contour moves outward (0.5: to the boundary pixels' edges)
    darknet_width: float = 1.0  # channel multiplier of DarkNet-53 (1.0 = 256/512/1024 output channels)
    darknet_weights: str | None = None  # Darknet .weights file to initialise the backbone
    trainable_backbone_modules: int = 2  # the last k backbone modules train; -1 trains all
    word_vectors: str = "random"  # GloVe text file, "spacy:<pipeline>", or "random"
    word_dim: int = 300  # word vector size
    freeze_word_vectors: bool = True  # frozen in the paper; random vectors should train
    gru_hidden: int = 512  # per direction; the sentence feature (and fusion width) is twice this
    d_model: int = 256  # transformer width
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 3
    ffn_dim: int = 1024
    dropout: float = 0.1
    # Departures for training from scratch (off in every paper params file; docs/method.md, section 9):
    memory_stride: int = 32  # 32 (paper) or 16: fuse at stride 16, so the memory has 4x the cells
    target_cell_loss: float = 0.0  # weight of a cross-entropy that picks the memory cell holding the target's centre
    query_selection: bool = False  # first decoder input = selected cell's memory + position (needs target_cell_loss)
    input_token_noise: float = 0.0  # share of teacher-forced coordinate inputs replaced by a random coordinate
    scene_loss: float = 0.0  # weight of classifying every scene object's colour, kind and size (synthetic set only)
    colour_pathway: int = 0  # > 0: the backbone sees grey; colour arrives through this many per-pixel features
    attribute_prior: float = 0.0  # weight of naming the target's colour and kind from the words; > 0 adds the prior


@dataclass(frozen=True)
class GeneralisedConfig:
    """Shares of a generalised synthetic set (issue 36; docs/method.md, section 11); all 0: the classic set."""

    multi_target: float = 0.0  # share of records naming two or more objects ("all the red shapes")
    no_target: float = 0.0  # share of records naming nothing in the image ("the green star" where there is none)
    split_objects: float = 0.0  # share of images with one object cut into pieces by a shape in front of it

    @property
    def on(self) -> bool:
        return self.multi_target > 0 or self.no_target > 0 or self.split_objects > 0


@dataclass(frozen=True)
class SyntheticConfig:
    """The generated "shapes" set (`seqtr_lib.data.synthetic`); read only when data.dataset is synthetic."""

    num_images: int = 6000  # images over all four splits
    image_size: int = 256  # side of the square images, in pixels
    seed: int = 0  # the set is a deterministic function of (num_images, image_size, seed, generalised)
    generalised: GeneralisedConfig = field(default_factory=GeneralisedConfig)  # off: the classic set


@dataclass(frozen=True)
class ZoomOutConfig:
    """Training-time zoom-out of the synthetic set (`seqtr_lib.data.transforms.place_on_canvas`): with
    ``probability`` a scene is placed at a random offset on a grey canvas whose height and width are each
    drawn up to ``max_factor`` times the image's. Off (probability 0) in every params file."""

    probability: float = 0.0  # share of training samples zoomed out
    max_factor: float = 2.0  # largest canvas side over the image's side, for each side independently


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"  # one of seqtr_lib.data.datasets.DATASETS
    data_root: str = "data"  # holds annotations/<dataset>/instances.json and images/
    annotation_file: str | None = None  # default: <data_root>/annotations/<dataset>/instances.json
    vocabulary: str | None = None  # vocabulary JSON; default: built from the training split
    image_size: int = 640  # long side after resize; input is padded to a multiple of 32
    max_token: int | None = None  # default: the dataset's (15 RefCOCO/+, 20 RefCOCOg/ReferIt/Flickr, 40 mixed)
    lsj: bool = True  # large-scale jitter at train time
    lsj_scale: tuple[float, float] = (0.3, 1.4)
    center_sampling: bool = False  # mask vertices by rays from the mass centre instead of contour steps
    shuffle_fraction: float = 0.0  # share of a batch whose mask point order is permuted
    batch_size: int = 128
    eval_batch_size: int = 128
    num_workers: int = 4
    skip_bad_images: bool = False  # skip (and count) unreadable images instead of failing
    device_transforms: bool = False  # workers send JPEG bytes; decode, resize, crop and pad on the device
    precompute_images: bool = False  # decode each training image (and run the frozen backbone modules) once
    zoom_out: ZoomOutConfig = field(default_factory=ZoomOutConfig)  # dataset: synthetic only (docs/method.md, 9.1)
    # Generalised answers (issue 36; docs/method.md, section 11): > 0 reads records naming zero or more objects
    # (gRefCOCO's, a generalised synthetic set's) into answers of at most max_objects boxes or contours;
    # 0 keeps the paper's one-object samples. max_points: points per contour (task mask).
    max_objects: int = 0
    max_points: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # dataset: synthetic only


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    amsgrad: bool = True
    weight_decay: float = 0.0
    grad_clip: float = 0.15  # max gradient norm; 0 disables
    warmup_epochs: int = 5  # factor (epoch+1)/(warmup+1) during warm-up
    decay_epochs: tuple[int, ...] = (50,)  # multiply lr by decay_factor from each of these epochs
    decay_factor: float = 0.1
    # step: the paper's (warm-up, then x decay_factor from each of decay_epochs, per epoch); cosine: per step, a
    # linear warm-up over warmup_epochs, then half a cosine down towards 0 at the end (decay_epochs unused)
    lr_schedule: str = "step"
    ema: bool = True
    ema_decay: float = 0.999
    seed: int = 6666
    amp: str = "none"  # none | bf16 | fp16 (GPU only)
    channels_last: bool = False
    freeze_batchnorm: bool = False  # every BatchNorm in eval mode (needed for exact DDP equivalence on CPU)
    sync_batchnorm: bool = False  # SyncBatchNorm across GPUs under torchrun (CUDA only)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50  # steps between JSONL log lines
    checkpoint_every: int = 0  # also write last.pt every N steps (0: only at epoch ends)
    resume: str | None = None  # checkpoint to continue the same run from
    finetune_from: str | None = None  # checkpoint whose model weights start a new run (resume wins)
    max_steps_per_epoch: int = 0  # cap for smoke runs (0: whole epoch)
    val_limit: int = 0  # validate each epoch on the split's first N expressions (0: all of them)


@dataclass(frozen=True)
class Experiment:
    name: str = "experiment"
    output_dir: str = "outputs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        """Where this experiment's checkpoints, logs and figures go."""
        return Path(self.output_dir) / self.name

    @property
    def max_token(self) -> int:
        return self.data.max_token or DATASETS[self.data.dataset].max_token

    @property
    def generalised(self) -> bool:
        """Whether each answer holds zero or more objects (data.max_objects > 0; docs/method.md, section 11)."""
        return self.data.max_objects > 0

    @property
    def annotation_path(self) -> Path:
        """data.annotation_file if set, else the dataset's file under data.data_root."""
        if self.data.annotation_file:
            return Path(self.data.annotation_file)
        return annotation_path(self.data.data_root, self.data.dataset)


# Keys that moved, old -> new: a params file or override using an old one is told where it went, and a
# config stored in a checkpoint written before the move is upgraded (it cannot be edited).
MOVED_KEYS = {
    "data.synthetic_images": "data.synthetic.num_images",
    "data.synthetic_image_size": "data.synthetic.image_size",
    "data.synthetic_seed": "data.synthetic.seed",
}


def load_params(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                start_files: bool = True) -> Experiment:
    """Read a params YAML file (or only defaults when ``path`` is None) and apply ``key=value`` overrides.

    ``start_files=False`` is for commands that build the model from a checkpoint, which holds every weight
    (evaluate, predict, import-seqtr, notebooks 02-04): the files a new model starts from
    (`START_FILE_KEYS`) need not exist then."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"params file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    valid = _valid_keys(Experiment)
    for item in overrides:
        key, value = _split_override(item)
        if key not in valid:
            raise ConfigError(f"--set {item}: {_unknown_key(key, valid)}")
        _set_nested(raw, key.split("."), yaml.safe_load(value) if value else None, source=item)
    # Params files and overrides must use the current names; only stored configs are upgraded.
    experiment = experiment_from_dict(raw, source=str(path) if path else "defaults", upgrade_moved_keys=False)
    validate(experiment, start_files)
    return experiment


def experiment_from_dict(raw: dict[str, Any], source: str = "params", upgrade_moved_keys: bool = True) -> Experiment:
    """Build an Experiment from nested plain values (as in YAML or a checkpoint), checking keys and types.

    ``upgrade_moved_keys`` moves the old keys of MOVED_KEYS to their new places first, as a checkpoint's
    stored config needs; without it an old key is refused, naming where it went.
    """
    return _build(Experiment, _upgraded(raw) if upgrade_moved_keys else raw, prefix="", source=source)


def experiment_to_dict(experiment: Experiment) -> dict[str, Any]:
    """Plain nested values (lists, not tuples) for YAML, JSON and checkpoints; ``data.synthetic`` only for the
    synthetic dataset (a real dataset's config does not carry it), and its ``generalised`` shares only when on
    (a classic config reads as it did before they existed)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    values = plain(dataclasses.asdict(experiment))
    if experiment.data.dataset != "synthetic":
        del values["data"]["synthetic"]
    elif not experiment.data.synthetic.generalised.on:
        del values["data"]["synthetic"]["generalised"]
    return values


# The files only a new model reads (its start weights and word vectors); a checkpoint holds all of them.
START_FILE_KEYS = ("model.darknet_weights", "model.word_vectors", "train.finetune_from")


def validate(experiment: Experiment, start_files: bool = True) -> None:
    """Check value ranges and referenced files; raise ConfigError naming the key. ``start_files=False`` skips
    the files of `START_FILE_KEYS` (see `load_params`)."""
    m, d, t = experiment.model, experiment.data, experiment.train
    checks = [
        ("model.task", m.task in TASKS, f"must be one of {', '.join(TASKS)}"),
        ("model.num_bin", m.num_bin >= 2, "must be at least 2"),
        ("model.num_ray", m.num_ray >= 3, "must be at least 3 (a polygon needs three points)"),
        ("model.mapping", m.mapping in MAPPINGS, f"must be one of {', '.join(MAPPINGS)}"),
        ("model.outline_offset", 0 <= m.outline_offset <= 4,
         "must lie in [0, 4] input pixels (0.5 moves a contour through the boundary pixels' centres to their edges)"),
        ("model.darknet_width", m.darknet_width > 0, "must be positive"),
        ("model.trainable_backbone_modules", -1 <= m.trainable_backbone_modules <= 14,
         "must be -1 (all) or 0..14 (DarkNet-53 has 14 modules in the reference's split)"),
        ("model.d_model", m.d_model > 0 and m.d_model % m.num_heads == 0, "must be a positive multiple of num_heads"),
        ("model.dropout", 0.0 <= m.dropout < 1.0, "must be in [0, 1)"),
        ("model.memory_stride", m.memory_stride in MEMORY_STRIDES, "must be 32 (the paper) or 16"),
        ("model.target_cell_loss", m.target_cell_loss >= 0, "must be 0 (off) or positive"),
        ("model.input_token_noise", 0 <= m.input_token_noise < 1, "must be in [0, 1): the share of inputs replaced"),
        ("model.scene_loss", m.scene_loss >= 0, "must be 0 (off) or positive"),
        ("model.scene_loss", m.scene_loss == 0 or d.dataset == "synthetic",
         "needs every object of an image labelled, which only the synthetic set's 'scene' field has; set it to 0"),
        ("model.colour_pathway", m.colour_pathway >= 0, "must be 0 (off) or the number of per-pixel colour features"),
        ("model.attribute_prior", m.attribute_prior >= 0, "must be 0 (off) or positive"),
        ("model.attribute_prior", m.attribute_prior == 0 or (m.colour_pathway > 0 and m.scene_loss > 0
                                                            and m.target_cell_loss > 0),
         "needs model.colour_pathway, model.scene_loss and model.target_cell_loss: it matches the words against "
         "the pathway's colour and the scene loss's kind classifiers, and adds to the target-cell scores"),
        ("model.query_selection", not m.query_selection or m.target_cell_loss > 0,
         "needs model.target_cell_loss > 0: the cell scores it selects by are trained by that loss"),
        ("data.dataset", d.dataset in DATASETS, f"must be one of {', '.join(DATASETS)}"),
        ("data.image_size", d.image_size >= 32 and d.image_size % 32 == 0, "must be a positive multiple of 32"),
        ("data.max_token", d.max_token is None or d.max_token >= 1, "must be at least 1"),
        ("data.lsj_scale", 0 < d.lsj_scale[0] <= d.lsj_scale[1], "must be (low, high) with 0 < low <= high"),
        ("data.shuffle_fraction", 0.0 <= d.shuffle_fraction <= 1.0, "must be in [0, 1]"),
        ("data.batch_size", d.batch_size >= 1, "must be at least 1"),
        ("data.eval_batch_size", d.eval_batch_size >= 1, "must be at least 1"),
        ("data.num_workers", d.num_workers >= 0, "must be 0 or more"),
        ("data.synthetic", d.dataset == "synthetic" or d.synthetic == SyntheticConfig(),
         f"applies to dataset synthetic only, not {d.dataset}; remove it"),
        ("data.zoom_out.probability", 0 <= d.zoom_out.probability <= 1, "must be in [0, 1] (0: off)"),
        ("data.zoom_out.max_factor", d.zoom_out.max_factor >= 1,
         "must be at least 1 (the canvas side over the image side)"),
        ("data.zoom_out.probability", d.zoom_out.probability == 0 or d.dataset == "synthetic",
         "needs the synthetic set, whose 'scene' field tells whether the larger frame changes what a region "
         "word ('on the left') denotes; set it to 0"),
        ("data.zoom_out.probability", d.zoom_out.probability == 0 or not d.device_transforms,
         "places the decoded image on a canvas in the loader, which data.device_transforms skips; turn one off"),
        ("data.precompute_images", not d.precompute_images or not (d.lsj or d.zoom_out.probability > 0
                                                                       or d.device_transforms),
         "holds each training image as it is fed every epoch, which needs data.lsj false, data.zoom_out off and "
         "data.device_transforms false (their draws change the image per sample)"),
        ("data.precompute_images", not d.precompute_images or not t.compile,
         "swaps the frozen backbone modules for their held outputs at each step, which a compiled model would not "
         "see; turn train.compile off"),
        ("data.synthetic.num_images", d.synthetic.num_images >= 4, "must be at least 4 (one image for each split)"),
        ("data.synthetic.image_size", d.synthetic.image_size >= 64,
         "must be at least 64 pixels (smaller shapes are unreadable)"),
        ("data.synthetic.seed", d.synthetic.seed >= 0, "must be 0 or more"),
        *((f"data.synthetic.generalised.{name}", 0 <= getattr(d.synthetic.generalised, name) <= 1, "must be in [0, 1]")
          for name in ("multi_target", "no_target", "split_objects")),
        ("data.synthetic.generalised.no_target", d.synthetic.generalised.multi_target
         + d.synthetic.generalised.no_target <= 1, "plus multi_target must be at most 1 (they are shares of records)"),
        ("data.max_objects", d.max_objects >= 0, "must be 0 (the paper's one-object answers) or the most objects "
         "an answer names"),
        ("data.max_objects", d.max_objects == 0 or m.task in ("box", "mask"),
         "needs model.task box or mask: a generalised answer is boxes or contours, not both"),
        ("data.max_objects", d.max_objects == 0 or d.zoom_out.probability == 0,
         "and data.zoom_out cannot be combined yet (zoom-out re-reads one target's region words); set one to 0"),
        ("data.shuffle_fraction", d.max_objects == 0 or d.shuffle_fraction == 0,
         "must be 0 with data.max_objects > 0 (the point-order shuffle is defined for one contour of num_ray slots)"),
        ("data.max_points", d.max_objects == 0 or m.task != "mask" or d.max_points >= 3,
         "must be at least 3 with data.max_objects > 0 and task mask (a contour needs three points)"),
        ("train.epochs", t.epochs >= 1, "must be at least 1"),
        ("train.val_limit", t.val_limit >= 0, "must be 0 (the whole split) or positive"),
        ("train.lr", t.lr > 0, "must be positive"),
        ("train.betas", all(0 <= b < 1 for b in t.betas), "must be two values in [0, 1)"),
        ("train.grad_clip", t.grad_clip >= 0, "must be 0 (off) or positive"),
        ("train.warmup_epochs", t.warmup_epochs >= 0, "must be 0 or more"),
        ("train.ema_decay", 0 < t.ema_decay < 1, "must be in (0, 1)"),
        ("train.amp", t.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
        ("train.decay_epochs", list(t.decay_epochs) == sorted(t.decay_epochs), "must be increasing"),
        ("train.lr_schedule", t.lr_schedule in ("step", "cosine"), "must be step or cosine"),
        ("train.warmup_epochs", t.lr_schedule != "cosine" or t.warmup_epochs < t.epochs,
         "must be fewer than train.epochs under train.lr_schedule=cosine (the cosine follows the warm-up)"),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key} = {_lookup(experiment, key)!r} is invalid: it {rule}")
    for key in ("data.vocabulary", "data.annotation_file", "train.resume"):
        value = _lookup(experiment, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{key} = {value!r}: no such file")
    if not start_files:
        return
    for key in ("model.darknet_weights", "train.finetune_from"):
        value = _lookup(experiment, key)
        if value and not repository_file(value).is_file():
            where = "" if Path(value).is_absolute() else f" here or in {REPOSITORY}"
            raise ConfigError(f"{key} = {value!r}: no such file{where}")
    source = m.word_vectors
    if source != "random" and not source.startswith("spacy:") and not Path(source).is_file():
        raise ConfigError(f"model.word_vectors = {source!r}: no such file (use a GloVe text file, "
                          "'spacy:<pipeline>' or 'random')")


def repository_file(path: str) -> Path:
    """A start file (``train.finetune_from``, ``model.darknet_weights``): relative to the cwd, else to the
    repository, whose released ``weights/`` a params file may name (the synthetic mask starts from
    ``weights/synthetic_det.pt``; the demo's backbone is ``weights/synthetic_darknet.weights``)."""
    here = Path(path)
    return here if here.is_file() or here.is_absolute() else REPOSITORY / here


def _lookup(experiment: Experiment, key: str) -> Any:
    value: Any = experiment
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _valid_keys(cls: type, prefix: str = "") -> set[str]:
    """Every settable key of a config dataclass, dotted (``data.synthetic.seed``); nested sections recurse."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= _valid_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def _unknown_key(key: str, valid: typing.Iterable[str], prefix: str = "") -> str:
    """Why ``prefix + key`` is refused: where it moved, else the closest of ``valid`` (or all of them)."""
    dotted = prefix + key
    if dotted in MOVED_KEYS:
        return f"unknown key '{dotted}': {dotted} moved to {MOVED_KEYS[dotted]}"
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return f"unknown key '{dotted}'; {hint}"


def _upgraded(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with each old key of MOVED_KEYS moved to its new place."""
    raw = copy.deepcopy(raw)
    for old, new in MOVED_KEYS.items():
        *sections, name = old.split(".")
        node: Any = raw
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and name in node:
            _set_nested(raw, new.split("."), node.pop(name), source=old)
    return raw


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-4")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _set_nested(raw: dict[str, Any], parts: list[str], value: Any, source: str) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {source!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: dict[str, Any], prefix: str, source: str) -> Any:
    """A config dataclass from a mapping of its fields' values (``prefix`` dots its keys in messages)."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{source}: {_unknown_key(str(key), names, prefix)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _coerce(value, hints[name], prefix + name, source) for name, value in raw.items()})


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Convert a YAML value to the annotated type, or fail naming the key."""
    if dataclasses.is_dataclass(hint):  # a section: model, data, train, data.synthetic
        if value is None:  # "data:" with nothing under it
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping of keys, got {value!r}")
        return _build(hint, value, prefix=f"{key}.", source=source)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "5e-4" as a string
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    type_name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{source}: {key} = {value!r} is not a valid {type_name}")
