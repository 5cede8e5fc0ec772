"""docs/gpu_recipe.md holds no number of its own: each is a GPU record's, or worked out from the records, the
params files' epochs and the RefCOCO train size that docs/data.md cites."""

from __future__ import annotations

import json

from conftest import ROOT
from seqtr_lib.config import load_params

RECIPE = (ROOT / "docs" / "gpu_recipe.md").read_text()
PROSE = " ".join(RECIPE.split())  # line breaks as spaces: a phrase may wrap anywhere
RESULTS = ROOT / "docs" / "results"
# RefCOCO's unc train split, from the source docs/data.md links (an outside fact, not a record of ours).
REFCOCO_UNC_TRAIN_OBJECTS = 42_404


def _step(record: str, batch_size: int = 128) -> dict:
    (result,) = [r for r in json.loads((RESULTS / record).read_text())["results"] if r["batch_size"] == batch_size]
    return result


def _loader(key: str) -> float:
    return json.loads((RESULTS / "bench_data_h200.json").read_text())["results"][key]["samples_per_s"]


def _epochs(params: str) -> int:
    return load_params(ROOT / "params" / f"{params}.yaml", start_files=False).train.epochs


def _row(label: str) -> list[str]:
    """The cells after the first of the recipe's table row that starts with ``label``."""
    (line,) = [line for line in RECIPE.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in line.strip().strip("|").split("|")][1:]


def test_each_estimated_time_is_the_params_epochs_of_samples_over_its_records_samples_per_second():
    rows = {  # first cell -> (record file, its samples/s, the params file whose schedule the row times)
        "training step, `train.compile` true, batch 128":
            ("bench_train_h200_compile.json", _step("bench_train_h200_compile.json")["samples_per_s"], "refcoco-unc_det"),
        "training step, `train.compile` false, batch 128":
            ("bench_train_h200_eager.json", _step("bench_train_h200_eager.json")["samples_per_s"], "refcoco-unc_det"),
        "loader, 8 workers (box, LSJ, uint8 batches)":
            ("bench_data_h200.json", _loader("loader_box_train_lsj_8_workers_uint8"), "refcoco-unc_det"),
        "loader, 16 workers (box, LSJ, uint8 batches)":
            ("bench_data_h200.json", _loader("loader_box_train_lsj_16_workers_uint8"), "refcoco-unc_det"),
        "mask loader, 8 workers (LSJ, uint8 batches)":
            ("bench_data_h200.json", _loader("loader_mask_train_lsj_8_workers_uint8"), "refcoco-unc_mask"),
    }
    for label, (record, samples_per_s, params) in rows.items():
        linked, rate, minutes = _row(label)
        epochs = _epochs(params)
        assert f"(results/{record})" in linked, label
        assert float(rate.replace(",", "")) == samples_per_s, label
        assert minutes == f"{round(epochs * REFCOCO_UNC_TRAIN_OBJECTS / samples_per_s / 60)} min", label
        assert f"{epochs * REFCOCO_UNC_TRAIN_OBJECTS:,} samples" in PROSE, params
        assert f"| {epochs} epochs |" in RECIPE, params


def test_the_recipe_names_the_records_settings_and_the_train_size_data_md_cites():
    compiled, eager = _step("bench_train_h200_compile.json"), _step("bench_train_h200_eager.json")
    assert (compiled["compile"], eager["compile"]) == (True, False)
    for number in (f"{compiled['peak_memory_gib']:.2f} GiB compiled", f"{eager['peak_memory_gib']:.2f} GiB without",
                   f"{compiled['data_memory_gib']:.2f} GiB", f"{compiled['warmup_s']:.2f} s",
                   f"{_loader('loader_mask_train_lsj_16_workers_uint8')} samples/s"):
        assert number in PROSE, number
    record = json.loads((RESULTS / "bench_train_h200_compile.json").read_text())
    loader = json.loads((RESULTS / "bench_data_h200.json").read_text())
    assert loader["gpu"] == record["device"]
    assert (f"one {record['device']} with torch {record['torch'].split('+')[0]} and CUDA {record['cuda']}"
            f" (this project pins torch 2.14.1) and its Intel Xeon host with {loader['logical_cpus']} logical CPUs"
            in PROSE)
    assert loader["cpu"].startswith("Intel(R) Xeon(R)") and loader["image_long_side"] == 640
    assert f"{loader['image_long_side']} px long side, in batches of {loader['batch_size']}." in PROSE
    # the params file trains what the step records measured, at the records' batch size
    settings = record["settings"]
    experiment = load_params(ROOT / "params" / "refcoco-unc_det.yaml", start_files=False)
    assert (experiment.data.batch_size, experiment.data.image_size, experiment.max_token, experiment.model.task,
            experiment.train.amp, experiment.train.channels_last, experiment.train.ema) == \
           (128, settings["image_size"], settings["max_token"], settings["task"], settings["amp"],
            settings["channels_last"], settings["ema"])
    for document in ("docs/gpu_recipe.md", "docs/data.md"):
        assert f"{REFCOCO_UNC_TRAIN_OBJECTS:,} objects" in " ".join((ROOT / document).read_text().split()), document
