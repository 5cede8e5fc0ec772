"""The scripts in benchmarks/: each imports and parses its arguments, the cheap ones run end to end in their
quickest mode, and the GPU shell scripts call them with options they have. Timings are not checked, only
that the JSON each writes holds finite numbers under the keys its docstring names.

Left out (minutes on 2 cores, or a browser): bench_cpu.py's paper-size sections (inference, evaluation,
training: over a minute per task even with --quick) and widget_screenshot.py (JupyterLab, Chromium and the
default 6,000-image set); both are only imported here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import ROOT, cli_env, run_cli

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ["bench_cpu.py", "bench_data.py", "bench_decode.py", "bench_eval.py", "bench_train.py", "cell_selection.py",
           "cpu_agreement.py", "learning_curve.py", "learning_probes.py", "outline_cap.py", "readme_picture.py",
           "widget_screenshot.py"]
# learning_curve.py on the tiny set: one epoch of two steps, scored on the first 8 val expressions.
TINY_CURVE = ["--budget-s", "1", "--max-epochs", "1", "--val-limit", "8", "--set", "data.synthetic.num_images=24",
              "--set", "data.synthetic.image_size=64", "--set", "data.image_size=64", "--set",
              "train.max_steps_per_epoch=2", "--set", "data.num_workers=0", "--set", "data.batch_size=4"]


def _script(name: str, *args: str, cwd: Path = ROOT, timeout: float = 120) -> str:
    """Run benchmarks/<name> with ``args`` (from ``cwd``); its stdout. Fails with its output."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], cwd=cwd, env=cli_env(),
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _load(path: Path) -> dict:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- every script imports and parses its arguments ---------------------------------------------------


def test_every_script_is_listed():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    assert "usage:" in run_cli(str(BENCHMARKS / name), "--help", timeout=60).stdout


def _shell_calls(shell: str) -> list[tuple[str, set[str]]]:
    """(script or ``-m seqtr_lib <command>``, its long options) of each Python call in a shell script."""
    text = (BENCHMARKS / shell).read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for match in re.finditer(r'"\$PYTHON" (benchmarks/\w+\.py|-m seqtr_lib [\w-]+)([^|;&]*)', line):
            calls.append((match.group(1), set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", match.group(2)))))
    return calls


@pytest.mark.parametrize("shell", ["gpu_check.sh", "gpu_curves.sh"])
def test_gpu_scripts_call_existing_options(shell):
    calls = _shell_calls(shell)
    assert calls, f"no Python calls found in {shell}"
    helps: dict[str, str] = {}
    for target, options in calls:
        if target not in helps:
            command = target.split() if target.startswith("-m") else [str(ROOT / target)]
            helps[target] = run_cli(*command, "--help", timeout=60).stdout
        missing = {o for o in options if o not in helps[target]}
        assert not missing, f"{shell} calls {target} with {sorted(missing)}, which it does not have"


def test_gpu_curves_variants_exist():
    text = (BENCHMARKS / "gpu_curves.sh").read_text()
    variants = re.search(r"CURVE_VARIANTS:-([^}]*)}", text).group(1).split()
    assert variants and set(variants) <= set(_benchmark_module("learning_curve").VARIANTS)


def test_learning_curve_variants_are_valid_configs():
    """Each variant's overrides on its params file pass validation (the params files gain departures)."""
    from seqtr_lib.config import load_params

    curve = _benchmark_module("learning_curve")
    for name, (params, overrides, _) in curve.VARIANTS.items():
        experiment = load_params(str(ROOT / params), [*curve.SCHEDULE, *curve.SET_2000, *overrides])
        model = experiment.model
        assert (model.scene_loss, model.colour_pathway, model.attribute_prior) == (0.0, 0, 0.0), name


# --- end to end, quickest mode ------------------------------------------------------------------------


def test_bench_train_tiny(tmp_path):
    out = tmp_path / "train.json"
    _script("bench_train.py", "--tiny", "--device", "cpu", "--real-data", str(tmp_path / "real"), "--real-images",
            "24", "--workers", "0", "--out", str(out))
    report = _load(out)
    assert report["parameters"]["total"] > 0
    [result] = report["results"]
    assert result["status"] == "ok" and _finite(result["samples_per_s"], result["step_ms"], result["final_loss"])
    for inputs in ("host", "device"):
        measured = result["real_data"][inputs]
        assert measured["status"] == "ok" and _finite(measured["samples_per_s"], measured["real_loader_ratio"])


def test_bench_eval_tiny(tmp_path):
    out = tmp_path / "eval.json"
    _script("bench_eval.py", "--tiny", "--device", "cpu", "--data-root", str(tmp_path / "data"), "--images", "24",
            "--limit", "8", "--workers", "0", "--out", str(out))
    results = _load(out)["results"]
    assert [(r["task"], r["cuda_graphs"]) for r in results] == [("box", False), ("box", True), ("mask", False),
                                                               ("mask", True)]
    assert all(r["expressions"] == 8 and _finite(r["expressions_per_s"]) for r in results)


def test_bench_decode_quick(tmp_path):
    out = tmp_path / "decode.json"
    _script("bench_decode.py", "--quick", "--batch-sizes", "1", "--device", "cpu", "--threads", "1", "--out", str(out))
    results = _load(out)["results"]
    assert [(r["task"], r["steps"]) for r in results] == [("box", 4), ("mask", 36)]
    for r in results:
        assert _finite(r["encode_s"], r["decode_cached_s"], r["decode_recompute_s"], r["decode_graph_s"], r["speedup"],
                       r["graph_speedup"], r["decode_share"])
        assert isinstance(r["graph_tokens_equal"], bool)


def test_bench_data_quick(tmp_path):
    out = tmp_path / "data.json"
    _script("bench_data.py", "--num-images", "4", "--seconds", "0.1", "--batch-size", "2", "--loader-workers", "0",
            "--out", str(out))
    results = _load(out)["results"]
    assert {"decode_only", "box_train_lsj_float32", "mask_eval_resize_float32",
            "loader_box_train_lsj_0_workers_uint8"} <= set(results)
    assert all(_finite(r["samples_per_s"]) and r["samples_per_s"] > 0 for r in results.values())


def test_bench_cpu_synthetic_section(tmp_path):
    out = tmp_path / "cpu.json"
    _script("bench_cpu.py", "--quick", "--sections", "synthetic", "--threads", "1", "--out", str(out))
    rows = _load(out)["results"]
    assert {r["batch"] for r in rows} == {1, 64} and {r["section"] for r in rows} == {"synthetic"}
    assert {"fp32", "channels_last+bf16+fold_bn"} <= {r["choice"] for r in rows}
    assert any(r["is_auto"] for r in rows)
    assert all(_finite(r["median_s"], r["speedup"]) and isinstance(r["tokens_equal_fp32"], bool) for r in rows)


def test_cell_selection_released_box_weights(tiny_data_root, tmp_path):
    # The checkpoint's params read data/ from the working directory.
    (tmp_path / "data").symlink_to(tiny_data_root, target_is_directory=True)
    out = tmp_path / "cells.json"
    _script("cell_selection.py", str(ROOT / "weights" / "synthetic_det.pt"), "--splits", "val", "--limit", "8",
            "--out", str(out), cwd=tmp_path)
    val = _load(out)["splits"]["val"]
    assert val["expressions"] >= 8
    for key in ("cell_right", "acc", "acc_true_cell", "scene_colour", "scene_kind"):
        assert _finite(val[key]) and 0 <= val[key] <= 100, key


def test_cpu_agreement_released_box_weights(tiny_data_root, tmp_path):
    out = tmp_path / "agreement.json"
    _script("cpu_agreement.py", "--checkpoint", str(ROOT / "weights" / "synthetic_det.pt"), "--data-root",
            str(tiny_data_root), "--limit", "8", "--threads", "1", "--executions",
            "auto,channels_last+bf16+fold_bn+recheck", "--out", str(out))
    report = _load(out)
    fp32, *others = report["results"]
    assert fp32["execution"] == "fp32" and [r["execution"] for r in others] == ["auto",
                                                                               "channels_last+bf16+fold_bn+recheck"]
    assert all(0 <= r["equal_to_fp32"] <= 1 and _finite(r["metric_change_points"], r["speedup"]) for r in others)
    assert "recheck" in others[1]


def test_learning_curve_one_tiny_epoch_and_figures(tiny_data_root, tmp_path):
    results = tmp_path / "results"
    _script("learning_curve.py", "--variant", "cells_s16", "--data-root", str(tiny_data_root), *TINY_CURVE,
            "--set", f"output_dir={tmp_path / 'outputs'}", "--results", str(results))
    curve = _load(results / "learning_curve_cells_s16.json")
    [point] = curve["points"]
    assert point["epoch"] == 1 and point["samples"] == 8 and _finite(point["loss"], point["raw"], point["ema"])
    assert curve["config"]["model"]["attribute_prior"] == 0.0
    assert (results / "learning_curves.png").is_file()
    # --from-run reads the finished run back as a curve.
    _script("learning_curve.py", "--from-run", str(tmp_path / "outputs" / "cells_s16"), "--results", str(results),
            "--no-plot")
    assert len(_load(results / "learning_curve_cells_s16_full.json")["points"]) == 1
    # --defaults-figure from the recorded curves (copied: it writes beside them).
    recorded = tmp_path / "recorded"
    curve_module = _benchmark_module("learning_curve")
    for file, *_ in curve_module.DEFAULT_CURVES:
        (recorded / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "docs" / "results" / file, recorded / file)
    _script("learning_curve.py", "--defaults-figure", "--results", str(recorded))
    assert cv2.imread(str(recorded / "learning_curves_defaults.png")) is not None


def test_learning_probes_two_steps(tmp_path):
    out = tmp_path / "probes.json"
    _script("learning_probes.py", "--steps", "2", "--out", str(out))
    results = _load(out)
    for name in ("decoder_1", "decoder_3", "decoder_3_cell_loss"):
        assert len(results[name]["token_cross_entropy"]) == 5
        assert _finite(*results[name]["token_cross_entropy"], results[name]["held_out_acc_at_0.5"])
    for name in ("cells_3", "cells_3_encoder"):
        assert _finite(results[name]["cell_accuracy"], results[name]["chance"])


def test_outline_cap_tiny(tiny_data_root, tmp_path):
    out = tmp_path / "outline.json"
    _script("outline_cap.py", "--set", f"data.data_root={tiny_data_root}", "--num-rays", "18", "--num-bins", "64",
            "--offsets", "0.5", "--limit", "10", "--out", str(out))
    [row] = _load(out)["miou"]
    assert (row["num_ray"], row["num_bin"]) == (18, 64)
    assert all(_finite(row[k]) and 0 < row[k] <= 100 for k in ("lower_edge", "bin_centres", "offset_0.5"))


def test_readme_picture_on_a_tiny_image(tiny_data_root, tmp_path):
    annotations = json.loads((tiny_data_root / "annotations" / "synthetic" / "instances.json").read_text())
    first = annotations["val"][0]
    image = tiny_data_root / "images" / "synthetic" / f"{first['image_id']}.jpg"
    out = tmp_path / "picture.png"
    stdout = _script("readme_picture.py", "--image", str(image), "--expression", first["expressions"][0], "--out",
                     str(out))
    assert stdout.startswith("box [") and "\nmask [[" in stdout
    assert cv2.imread(str(out)) is not None
