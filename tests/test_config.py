"""Params files -> typed, frozen configs; every bad input fails early with the key named."""

import dataclasses
from pathlib import Path

import pytest

from seqtr_lib.config import (ConfigError, Experiment, SyntheticConfig, experiment_from_dict, experiment_to_dict,
                              load_params)

PARAMS = Path(__file__).resolve().parent.parent / "params"


@pytest.fixture
def weight_stand_ins(tmp_path, monkeypatch):
    """The real-dataset params point at data/weights/ files; empty stand-ins let them validate."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "weights").mkdir(parents=True)
    for name in ("darknet.weights", "glove.840B.300d.txt"):
        (tmp_path / "data" / "weights" / name).write_text("")


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(PARAMS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_params_file_loads_and_validates(path, weight_stand_ins):
    experiment = load_params(path)
    assert experiment.name == path.stem


def test_real_dataset_params_follow_the_paper(weight_stand_ins):
    refcoco = load_params(PARAMS / "refcoco-unc_mask.yaml")
    assert (refcoco.model.num_ray, refcoco.data.shuffle_fraction) == (18, 0.0)
    assert (refcoco.train.epochs, refcoco.train.decay_epochs) == (90, (75,))
    plus = load_params(PARAMS / "refcocoplus-unc_mask.yaml")
    assert (plus.model.num_ray, plus.data.shuffle_fraction) == (12, 0.2)
    det = load_params(PARAMS / "refcoco-unc_det.yaml")
    assert (det.train.epochs, det.train.decay_epochs, det.data.batch_size) == (60, (50,), 128)
    assert det.model.trainable_backbone_modules == 2 and det.model.freeze_word_vectors
    pretrain = load_params(PARAMS / "mixed_det_pretrain.yaml")
    assert (pretrain.train.epochs, pretrain.train.warmup_epochs, pretrain.train.decay_epochs) == (15, 1, (12,))
    assert not pretrain.data.lsj and not pretrain.train.ema and pretrain.max_token == 40
    finetune = load_params(PARAMS / "refcoco-unc_det_finetune.yaml")
    assert (finetune.train.epochs, finetune.train.warmup_epochs, finetune.train.decay_epochs) == (5, 0, (4,))


def test_synthetic_params_pick_the_task_their_name_says():
    assert load_params(PARAMS / "synthetic_det.yaml").model.task == "box"
    mask = load_params(PARAMS / "synthetic_mask.yaml")
    assert (mask.model.task, mask.model.num_ray) == ("mask", 18)


def test_defaults_follow_the_reference_recipe():
    experiment = load_params(None)
    assert experiment.train.lr == 5e-4 and experiment.train.betas == (0.9, 0.98)
    assert experiment.train.eps == 1e-9 and experiment.train.amsgrad
    assert experiment.train.grad_clip == 0.15 and experiment.train.ema_decay == 0.999
    assert experiment.train.warmup_epochs == 5 and experiment.train.decay_epochs == (50,)
    assert experiment.train.epochs == 60 and experiment.train.seed == 6666
    assert experiment.model.num_bin == 1000 and experiment.model.d_model == 256
    assert experiment.data.image_size == 640 and experiment.data.lsj_scale == (0.3, 1.4)


def test_overrides_are_coerced_to_the_annotated_types(tmp_path):
    experiment = load_params(write(tmp_path, "name: x\n"), [
        "train.lr=1e-4", "train.epochs=3", "data.lsj=false", "train.decay_epochs=[2, 3]",
        "data.lsj_scale=[0.5, 1]", "model.darknet_width=1", "name=renamed", "data.max_token=7",
    ])
    assert experiment.train.lr == 1e-4 and isinstance(experiment.train.lr, float)  # exact: float("1e-4")
    assert experiment.train.epochs == 3 and experiment.data.lsj is False
    assert experiment.train.decay_epochs == (2, 3) and experiment.data.lsj_scale == (0.5, 1.0)
    assert isinstance(experiment.model.darknet_width, float)
    assert experiment.name == "renamed" and experiment.max_token == 7


def test_yaml_exponent_without_dot_is_still_a_float(tmp_path):
    # PyYAML reads "5e-4" as a string (YAML 1.1); the config must not.
    experiment = load_params(write(tmp_path, "train:\n  lr: 5e-4\n"))
    assert experiment.train.lr == 5e-4  # exact: the same decimal parsed


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_params(None).train.lr = 1.0


def test_max_token_defaults_to_the_dataset_value():
    assert load_params(None, ["data.dataset=refcoco-unc"]).max_token == 15
    assert load_params(None, ["data.dataset=refcocog-umd"]).max_token == 20
    assert load_params(None, ["data.dataset=mixed"]).max_token == 40


def test_the_cosine_schedule_needs_epochs_after_its_warm_up_and_a_known_name():
    load_params(None, ["train.lr_schedule=cosine", "train.epochs=3", "train.warmup_epochs=2"])
    with pytest.raises(ConfigError, match=r"train.warmup_epochs = 3 is invalid: .*fewer than train.epochs"):
        load_params(None, ["train.lr_schedule=cosine", "train.epochs=3", "train.warmup_epochs=3"])
    load_params(None, ["train.epochs=3", "train.warmup_epochs=3"])  # the step schedule allows it
    with pytest.raises(ConfigError, match=r"train.lr_schedule = 'linear' is invalid: it must be step or cosine"):
        load_params(None, ["train.lr_schedule=linear"])


def test_dict_round_trip_gives_an_equal_experiment():
    experiment = load_params(PARAMS / "synthetic_mask.yaml", ["train.decay_epochs=[3, 4]"])
    assert experiment_from_dict(experiment_to_dict(experiment)) == experiment


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "did you mean 'train.lr'"),
    ("model.num_rays=12", "did you mean 'model.num_ray'"),
    ("modle.task=box", "did you mean 'model.task'"),
])
def test_unknown_override_key_suggests_the_closest(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(None, [override])


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'"):
        load_params(path)


@pytest.mark.parametrize("override, key", [
    ("train.lr=-0.1", "train.lr"),
    ("model.num_ray=2", "model.num_ray"),
    ("data.dataset=refcoco", "data.dataset"),
    ("model.task=boxes", "model.task"),
    ("data.image_size=100", "data.image_size"),
    ("train.amp=fp8", "train.amp"),
    ("data.shuffle_fraction=1.5", "data.shuffle_fraction"),
    ("train.decay_epochs=[5, 2]", "train.decay_epochs"),
])
def test_invalid_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key} = "):
        load_params(None, [override])


@pytest.mark.parametrize("override, key", [
    ("model.darknet_weights=/nonexistent/darknet.weights", "model.darknet_weights"),
    ("data.vocabulary=missing_vocab.json", "data.vocabulary"),
    ("train.resume=nowhere/last.pt", "train.resume"),
    ("model.word_vectors=glove_missing.txt", "model.word_vectors"),
])
def test_missing_files_fail_before_any_work(override, key):
    with pytest.raises(ConfigError, match=f"{key} = .*no such file"):
        load_params(None, [override])


def test_wrong_types_fail_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs = 'many' is not a valid int"):
        load_params(write(tmp_path, "train:\n  epochs: many\n"))
    with pytest.raises(ConfigError, match="train.epochs = 2.5 is not a valid int"):
        load_params(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="data.lsj_scale needs 2 values"):
        load_params(None, ["data.lsj_scale=[1, 2, 3]"])


def test_missing_params_file_and_malformed_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_params("no/such/params.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_params(None, ["train.lr"])


def test_a_start_checkpoint_is_found_here_else_in_the_repository(tmp_path, monkeypatch):
    from seqtr_lib.config import REPOSITORY, repository_file

    monkeypatch.chdir(tmp_path)  # no weights/ here: the box weights the mask params name still load
    assert repository_file("weights/synthetic_det.pt") == REPOSITORY / "weights" / "synthetic_det.pt"
    assert load_params(REPOSITORY / "params" / "synthetic_mask.yaml").train.finetune_from == "weights/stage1/synthetic_det.pt"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "synthetic_det.pt").write_bytes(b"x")  # one of the cwd's own comes first
    assert repository_file("weights/synthetic_det.pt") == Path("weights/synthetic_det.pt")
    with pytest.raises(ConfigError, match=r"train.finetune_from = 'weights/nothing.pt': no such file here or in"):
        load_params(None, ["train.finetune_from=weights/nothing.pt"])


def test_cli_reports_config_errors_without_a_traceback(capsys):
    from seqtr_lib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["check-params", "--params", str(PARAMS / "synthetic_det.yaml"), "--set", "train.lr=-1"])
    assert exit_info.value.code == 2
    assert "error: train.lr = -1.0 is invalid" in capsys.readouterr().err


def test_run_dir_and_annotation_path():
    experiment = load_params(None, ["name=abc", "output_dir=runs", "data.data_root=/d", "data.dataset=flickr30k"])
    assert experiment.run_dir == Path("runs/abc")
    assert experiment.annotation_path == Path("/d/annotations/flickr30k/instances.json")
    assert isinstance(Experiment(), Experiment)


def test_synthetic_options_nest_under_data_synthetic_in_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "data:\n  synthetic:\n    num_images: 100\n    seed: 4\n")
    experiment = load_params(path, ["data.synthetic.num_images=6000"])
    assert (experiment.data.synthetic.num_images, experiment.data.synthetic.seed) == (6000, 4)
    assert experiment.data.synthetic.image_size == 256  # the default
    assert experiment_to_dict(experiment)["data"]["synthetic"] == {"num_images": 6000, "image_size": 256, "seed": 4}
    with pytest.raises(ConfigError, match=r"data.synthetic.num_images = 2 is invalid: it must be at least 4"):
        load_params(None, ["data.synthetic.num_images=2"])
    with pytest.raises(ConfigError, match=r"'data.synthetic' must be a mapping of keys, got 5"):
        load_params(write(tmp_path, "data:\n  synthetic: 5\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'data.synthetic.images'; did you mean 'data.synthetic.num_images'"):
        load_params(write(tmp_path, "data:\n  synthetic:\n    images: 5\n"))


@pytest.mark.parametrize("old, new", [
    ("data.synthetic_images", "data.synthetic.num_images"),
    ("data.synthetic_image_size", "data.synthetic.image_size"),
    ("data.synthetic_seed", "data.synthetic.seed"),
])
def test_a_moved_key_names_its_new_place_in_overrides_and_files(tmp_path, old, new):
    with pytest.raises(ConfigError, match=rf"--set {old}=64: unknown key '{old}': {old} moved to {new}$"):
        load_params(None, [f"{old}=64"])
    path = write(tmp_path, f"data:\n  {old.split('.')[1]}: 64\n")
    with pytest.raises(ConfigError, match=rf"params.yaml: unknown key '{old}': {old} moved to {new}$"):
        load_params(path)


def test_a_config_stored_before_the_move_is_upgraded():
    stored = experiment_to_dict(load_params(None))
    del stored["data"]["synthetic"]
    stored["data"].update(synthetic_images=40, synthetic_image_size=128, synthetic_seed=3)
    experiment = experiment_from_dict(stored, source="old.pt")
    assert experiment.data.synthetic == SyntheticConfig(num_images=40, image_size=128, seed=3)
    assert experiment.data.dataset == "synthetic"
    assert "synthetic_images" in stored["data"]  # the caller's dict is left as it was


def test_a_real_datasets_config_carries_no_synthetic_options():
    real = load_params(None, ["data.dataset=refcoco-unc"])
    assert "synthetic" not in experiment_to_dict(real)["data"]
    assert experiment_to_dict(load_params(None))["data"]["synthetic"]["num_images"] == 6000
    with pytest.raises(ConfigError, match="data.synthetic .*applies to dataset synthetic only, not refcoco-unc"):
        load_params(None, ["data.dataset=refcoco-unc", "data.synthetic.num_images=5000"])
