"""The scripts in benchmarks/: each imports and parses its arguments, the cheap ones run end to end in their
quickest mode, and the GPU shell scripts call them with options they have. Timings are not checked: a timing is
only finite, while what a script can check exactly is checked exactly (the tokens that two decoders give are
equal, a ratio is the quotient of the figures it is made of, a count is what was asked for).

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
import numpy as np
import pytest

from conftest import ROOT, cli_env, run_cli
from figure_pixels import (assert_box_drawn, assert_contour_drawn, axes_frames, bounds_locator, colour_near,
                           drawn_panels, fitted, frame_locator)
from seqtr_lib.viz import PRED_COLOR

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ["answer_positions.py", "bench_cpu.py", "bench_data.py", "bench_decode.py", "bench_eval.py", "bench_train.py", "cell_selection.py",
           "cpu_agreement.py", "demo_step_profile.py", "demo_timing.py", "learning_curve.py", "learning_probes.py", "outline_cap.py", "readme_picture.py",
           "scale_views.py", "widget_screenshot.py"]
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
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
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
    bench_train = _benchmark_module("bench_train")
    from seqtr_lib.config import ModelConfig
    from seqtr_lib.model.seqtr import build_model
    from seqtr_lib.text import Vocabulary

    model = build_model(ModelConfig(task="box", **bench_train.TINY_MODEL), Vocabulary.build(bench_train.EXPRESSIONS))
    assert report["parameters"] == {"total": sum(p.numel() for p in model.parameters()),
                                    "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    [result] = report["results"]
    assert (result["status"], result["batch_size"], result["compile"]) == ("ok", 2, False)  # the --tiny defaults
    assert _finite(result["samples_per_s"], result["step_ms"], result["final_loss"])
    _assert_rate_and_step_time_agree(result, batch_size=2)
    for inputs in ("host", "device"):
        measured = result["real_data"][inputs]
        assert measured["status"] == "ok" and _finite(measured["samples_per_s"], measured["step_ms"])
        _assert_rate_and_step_time_agree(measured, batch_size=2)  # the real loader's batches are full here
        assert measured["real_loader_ratio"] == round(measured["samples_per_s"] / result["samples_per_s"], 3)


def _assert_rate_and_step_time_agree(result: dict, batch_size: int) -> None:
    """samples/s x ms/step is 1000 x the batch size, up to the rounding of each to 2 decimals: (r + a)(m + b)
    with |a|, |b| <= 0.005 is off by at most 0.005 (r + m) + 0.005^2, r and m within 0.005 of the written ones."""
    rate, step_ms = result["samples_per_s"], result["step_ms"]
    assert abs(rate * step_ms - 1000 * batch_size) <= 0.005 * (rate + step_ms + 0.01) + 0.005**2, result


def test_demo_step_profile_takes_every_step_apart(tiny_data_root, tmp_path):
    out = tmp_path / "profile.json"
    _script("demo_step_profile.py", "--data-root", str(tiny_data_root), "--tasks", "box,mask", "--splits", "0x1,1x1",
            "--precompute", "both", "--steps", "2", "--warmup", "0", "--out", str(out), timeout=300)
    cases = _load(out)["cases"]
    assert [(c["task"], c["workers"], c["threads"], c["precompute_images"]) for c in cases] == [
        (task, workers, 1, held) for task in ("box", "mask") for workers in (0, 1) for held in (False, True)]
    for case in cases:
        phases = case["ms_per_phase"]
        assert list(phases) == ["data", "forward", "loss", "backward", "optimizer", "ema"]
        assert case["samples"] == 2 * 32  # two timed steps of the demo's batch (the tiny set trains on 83)
        # the step is its phases, and the shares and the rate follow from them (float64 sums of a few terms)
        assert math.isclose(case["ms_per_step"], sum(phases.values()), rel_tol=1e-12)
        assert math.isclose(sum(case["share_per_phase"].values()), 1.0, rel_tol=1e-12)
        assert math.isclose(case["samples_per_s"] * case["ms_per_step"], 1000 * 32, rel_tol=1e-12)
        assert all(value > 0 for value in phases.values())
        assert (case["precompute_seconds"] > 0) is case["precompute_images"]
        assert case["amp"] == "none"


def test_demo_step_profile_times_each_train_amp_asked_for(tiny_data_root, tmp_path):
    out = tmp_path / "profile.json"
    _script("demo_step_profile.py", "--data-root", str(tiny_data_root), "--tasks", "box", "--splits", "0x1",
            "--precompute", "on", "--amp", "none,bf16", "--steps", "1", "--warmup", "0", "--out", str(out), timeout=300)
    assert [(c["task"], c["precompute_images"], c["amp"]) for c in _load(out)["cases"]] == [
        ("box", True, "none"), ("box", True, "bf16")]


@pytest.mark.slow
@pytest.mark.xdist_group("fast_project")
def test_demo_timing_reads_what_a_demo_left(fast_project):
    """demo_timing.py's reading of a demo's outputs, on the fast demo's: every notebook of both experiments and 05,
    02's scores as metrics.json holds them, one validation per epoch of the fast schedule."""
    from conftest import demo_outputs
    from seqtr_lib.pipeline import FAST_OVERRIDES

    outputs = demo_outputs(fast_project)
    record = _benchmark_module("demo_timing").read_outputs(outputs)
    epochs = int(next(o for o in FAST_OVERRIDES if o.startswith("train.epochs=")).split("=")[1])
    assert set(record["notebook_seconds"]) == {"05", "box", "mask"}
    for task, experiment, metric in (("box", "synthetic_det", "acc@0.5"), ("mask", "synthetic_mask", "miou")):
        assert list(record["notebook_seconds"][task]) == ["00", "01", "02", "03", "04"]
        assert all(seconds > 0 for seconds in record["notebook_seconds"][task].values())
        val = json.loads((outputs / experiment / "metrics.json").read_text())["splits"]["val"]
        assert record[task][metric] == {weights: round(scores[metric], 2) for weights, scores in val.items()}
        assert set(record[task][metric]) == {"raw", "ema", "raw_shuffled", "ema_shuffled"}
        assert [e["epoch"] for e in record[task]["val_per_epoch"]] == list(range(epochs))


def test_bench_eval_tiny(tmp_path):
    out = tmp_path / "eval.json"
    _script("bench_eval.py", "--tiny", "--device", "cpu", "--data-root", str(tmp_path / "data"), "--images", "24",
            "--limit", "8", "--workers", "0", "--out", str(out))
    results = _load(out)["results"]
    assert [(r["task"], r["cuda_graphs"]) for r in results] == [("box", False), ("box", True), ("mask", False),
                                                               ("mask", True)]
    for r in results:
        assert r["expressions"] == 8 and _finite(r["expressions_per_s"], r["seconds"])
        # 8 / s rounded to 0.1 times s rounded to 0.01: (8 / s + a)(s + b) - 8 = a s + 8 b / s + a b, |a| <= 0.05,
        # |b| <= 0.005, with s and 8 / s within those of the written figures
        rate, seconds = r["expressions_per_s"], r["seconds"]
        assert abs(rate * seconds - 8) <= 0.05 * (seconds + 0.005) + 0.005 * (rate + 0.05) + 0.05 * 0.005


def test_bench_decode_quick(tmp_path):
    out = tmp_path / "decode.json"
    _script("bench_decode.py", "--quick", "--batch-sizes", "1", "--device", "cpu", "--threads", "1", "--out", str(out))
    results = _load(out)["results"]
    assert [(r["task"], r["steps"]) for r in results] == [("box", 4), ("mask", 36)]
    for r in results:
        assert (r["model"], r["image_size"], r["batch"], r["encode_extrapolated"]) == ("small_cpu_256", 256, 1, False)
        # The graph decoder (plain static-shape decoding on a CPU) gives the cached decoder's tokens exactly.
        assert r["graph_tokens_equal"] is True
        assert _finite(r["encode_s"], r["decode_cached_s"], r["decode_recompute_s"], r["decode_graph_s"])
        # The derived figures are the quotients the docstring names (unrounded in the JSON).
        cached = r["decode_cached_s"]
        assert r["speedup"] == r["decode_recompute_s"] / cached
        assert r["graph_speedup"] == cached / r["decode_graph_s"]
        assert r["decode_share"] == cached / (r["encode_s"] + cached)
        assert r["cached_ms_per_step"] == 1000 * cached / r["steps"]


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
    _script("bench_cpu.py", "--quick", "--sections", "synthetic", "--synthetic-sizes", "128,192", "--threads", "1",
            "--out", str(out))
    report = _load(out)
    rows = report["results"]
    assert {(r["image_size"], r["batch"]) for r in rows} == {(128, 1), (128, 64), (192, 1), (192, 64)}
    rows = [r for r in rows if r["image_size"] == 128]
    assert {r["batch"] for r in rows} == {1, 64} and {r["section"] for r in rows} == {"synthetic"}
    assert {"fp32", "channels_last+bf16+fold_bn"} <= {r["choice"] for r in rows}
    for batch in (1, 64):
        assert any(r["is_auto"] for r in rows if r["batch"] == batch)
        (fp32,) = [r for r in rows if r["batch"] == batch and r["choice"] == "fp32"]
        # fp32 against itself: the same tokens, and its own median over its own is 1
        assert fp32["tokens_equal_fp32"] is True and fp32["speedup"] == 1.0
    assert report["settings"]["repeats"] == 1  # --quick
    for r in rows:
        assert isinstance(r["tokens_equal_fp32"], bool) and _finite(r["median_s"], r["speedup"])
        assert len(r["times_s"]) == (4 if r["batch"] == 1 else 1)  # the synthetic section times batch 1 4 x longer
        # rounding keeps the order: the extremes of the rounded times are the rounded extremes
        assert (r["min_s"], r["max_s"]) == (min(r["times_s"]), max(r["times_s"])) and r["min_s"] <= r["median_s"] <= r["max_s"]


def test_cell_selection_released_box_weights(tiny_data_root, tmp_path):
    # The checkpoint's params read data/ from the working directory.
    (tmp_path / "data").symlink_to(tiny_data_root, target_is_directory=True)
    out = tmp_path / "cells.json"
    _script("cell_selection.py", str(ROOT / "weights" / "synthetic_det.pt"), "--splits", "val", "--limit", "8",
            "--out", str(out), cwd=tmp_path)
    val = _load(out)["splits"]["val"]
    n = val["expressions"]
    assert n == _whole_batches(8, tiny_data_root)
    for key in ("cell_right", "acc", "acc_cell_right", "acc_true_cell", "scene_colour", "scene_kind"):
        assert _finite(val[key]) and 0 <= val[key] <= 100, key
    # Each share counts expressions: a whole number of n (of the right ones for acc_cell_right), rounded to 2 places.
    right = round(val["cell_right"] * n / 100)
    assert val["cell_right"] == round(100 * right / n, 2)
    for key in ("acc", "acc_true_cell", "scene_colour", "scene_kind"):
        assert val[key] in {round(100 * k / n, 2) for k in range(n + 1)}, key
    if right:
        assert val["acc_cell_right"] in {round(100 * k / right, 2) for k in range(right + 1)}
    # Acc@0.5 is the mean of the right and the wrong cells' accuracies, weighted by their counts.
    hits = val["acc_cell_right"] * right / 100 + (val["acc_cell_wrong"] or 0) * (n - right) / 100
    assert val["acc"] == round(100 * round(hits) / n, 2)


def _whole_batches(limit: int, data_root: Path) -> int:
    """The val expressions that the released box weights' evaluation batches hold until ``limit`` is reached."""
    from seqtr_lib import checkpoint

    batch = checkpoint.load(ROOT / "weights" / "synthetic_det.pt")["config"]["data"]["eval_batch_size"]
    annotations = json.loads((data_root / "annotations" / "synthetic" / "instances.json").read_text())
    return min(sum(len(a["expressions"]) for a in annotations["val"]), -(-limit // batch) * batch)


def test_cpu_agreement_released_box_weights(tiny_data_root, tmp_path):
    out = tmp_path / "agreement.json"
    _script("cpu_agreement.py", "--checkpoint", str(ROOT / "weights" / "synthetic_det.pt"), "--data-root",
            str(tiny_data_root), "--limit", "8", "--threads", "1", "--executions",
            "auto,channels_last+bf16+fold_bn+recheck", "--out", str(out))
    report = _load(out)
    fp32, *others = report["results"]
    assert fp32["execution"] == "fp32" and [r["execution"] for r in others] == ["auto",
                                                                               "channels_last+bf16+fold_bn+recheck"]
    from seqtr_lib.metrics import headline_score

    n = report["num_expressions"]
    assert n == _whole_batches(8, tiny_data_root) and report["limit"] == 8
    for r in others:
        # a share of the n expressions, and the difference of the two stored metrics, each rounded as written
        assert r["equal_to_fp32"] in {round(k / n, 4) for k in range(n + 1)}
        assert r["metric_change_points"] == round(headline_score(r["metrics"], "box")
                                                  - headline_score(fp32["metrics"], "box"), 3)
        assert _finite(r["speedup"])
    tally = others[1]["recheck"]
    assert tally["samples"] == n and 0 <= tally["rechecked"] <= n


def test_learning_curve_one_tiny_epoch_and_figures(tiny_data_root, tmp_path):
    results = tmp_path / "results"
    _script("learning_curve.py", "--variant", "cells_s16", "--data-root", str(tiny_data_root), *TINY_CURVE,
            "--set", f"output_dir={tmp_path / 'outputs'}", "--results", str(results))
    curve = _load(results / "learning_curve_cells_s16.json")
    [point] = curve["points"]
    assert point["epoch"] == 1 and point["samples"] == 8 and _finite(point["loss"], point["raw"], point["ema"])
    assert curve["config"]["model"]["attribute_prior"] == 0.0
    # One metric: a panel against minutes and one against samples, each showing the one raw score (a blue
    # marker) in its middle, where matplotlib puts a lone point.
    pixels = cv2.cvtColor(cv2.imread(str(results / "learning_curves.png")), cv2.COLOR_BGR2RGB)
    frames = axes_frames(pixels)
    assert len(frames) == 2, frames
    for frame, x in zip(frames, (point["train_seconds"] / 60, point["samples"] / 1000)):
        at = frame_locator(frame, fitted([x]), fitted([point["raw"]]))(x, point["raw"])
        assert colour_near(pixels, at, "C0"), f"no raw score in the middle of {frame}"
    # --from-run reads the finished run back as a curve.
    _script("learning_curve.py", "--from-run", str(tmp_path / "outputs" / "cells_s16"), "--results", str(results),
            "--no-plot")
    assert _load(results / "learning_curve_cells_s16_full.json")["points"] == [point]  # the same epoch, read back
    # --defaults-figure from the recorded curves (copied: it writes beside them).
    recorded = tmp_path / "recorded"
    curve_module = _benchmark_module("learning_curve")
    for file, *_ in curve_module.DEFAULT_CURVES:
        (recorded / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "docs" / "results" / file, recorded / file)
    _script("learning_curve.py", "--defaults-figure", "--results", str(recorded))
    _assert_default_curves_drawn(recorded / "learning_curves_defaults.png", recorded, curve_module.DEFAULT_CURVES)


def _assert_default_curves_drawn(path: Path, results: Path, curves) -> None:
    """learning_curves_defaults.png: a box and a mask panel (y from 0 to 100 %), each recorded curve's EMA
    scores drawn in its colour (the legend's: full schedule C0, demo C1, plain recipe C7) at each point."""
    pixels = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    frames = axes_frames(pixels)
    assert len(frames) == 2, frames
    for frame, task in zip(frames, ("box", "mask")):
        shown = [(json.loads((results / file).read_text())["points"], style)
                 for file, _, panel, style in curves if panel == task]
        locate = frame_locator(frame, fitted([p["samples"] / 1000 for points, _ in shown for p in points]), (0, 100))
        for points, style in shown:
            for point in points:
                at = locate(point["samples"] / 1000, point["ema"])
                assert colour_near(pixels, at, {"-": "C0", "--": "C1", ":": "C7"}[style]), (task, style, point)


def test_learning_probes_two_steps(tmp_path):
    out = tmp_path / "probes.json"
    _script("learning_probes.py", "--steps", "2", "--out", str(out))
    results = _load(out)
    for name in ("decoder_1", "decoder_3", "decoder_3_cell_loss"):
        assert len(results[name]["token_cross_entropy"]) == 5
        assert _finite(*results[name]["token_cross_entropy"], results[name]["held_out_acc_at_0.5"])
        # a share of the 200 held-out scenes, as a float32 mean (within 2^-24 of the share)
        hits = results[name]["held_out_acc_at_0.5"] * 200
        assert abs(hits - round(hits)) <= 200 * 2**-24
    for name in ("cells_3", "cells_3_encoder"):
        assert 0 <= results[name]["cell_accuracy"] <= 1
        assert results[name]["chance"] == 1 / 16  # one of the 4 x 4 stride-32 cells of a 128 px scene


def test_outline_cap_tiny(tiny_data_root, tmp_path):
    out = tmp_path / "outline.json"
    _script("outline_cap.py", "--set", f"data.data_root={tiny_data_root}", "--num-rays", "18", "--num-bins", "64",
            "--offsets", "0.5", "--limit", "10", "--out", str(out))
    [row] = _load(out)["miou"]
    assert (row["num_ray"], row["num_bin"]) == (18, 64)
    assert all(_finite(row[k]) and 0 < row[k] <= 100 for k in ("lower_edge", "bin_centres", "offset_0.5"))


def test_readme_picture_on_a_tiny_image(tmp_path):
    """The picture shows the printed box and contour, each in its panel where it lies in the image."""
    scene = np.full((64, 64, 3), 200, dtype=np.uint8)  # uniform grey: every drawn colour over it is known
    cv2.circle(scene, (22, 38), 9, (0, 0, 255), -1)  # a red disc (BGR) left of the middle, below it
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene)
    scene = scene[..., ::-1]
    out = tmp_path / "picture.png"
    stdout = _script("readme_picture.py", "--image", str(image), "--expression", "the red circle", "--out", str(out))
    box = json.loads(re.search(r"^box (\[.*\])$", stdout, re.M).group(1))
    polygon = np.array(json.loads(re.search(r"^mask (\[\[.*\]\])$", stdout, re.M).group(1)))
    x1, y1, x2, y2 = box
    assert x2 - x1 >= 8 and y2 - y1 >= 8, box  # a box around the 18 px disc, with a middle far from its sides
    pixels = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    box_panel, mask_panel = drawn_panels(pixels)
    away = [((x1 + x2) / 2, (y1 + y2) / 2)] + [(x, y) for x in (2.0, 62.0) for y in (2.0, 62.0)
                                               if x <= x1 - 4 or x >= x2 + 4 or y <= y1 - 4 or y >= y2 + 4]
    assert len(away) > 1  # some corner of the scene lies 4 px or more outside the box
    assert_box_drawn(pixels, bounds_locator(box_panel, scene.shape[:2]), box, PRED_COLOR, away)
    assert_contour_drawn(pixels, bounds_locator(mask_panel, scene.shape[:2]), polygon, PRED_COLOR, scene)


def test_scale_views_geometry_by_hand(tiny_data_root):
    """The four views of a 96 px scene and where a target lands in each, computed by hand: strips of 48 px, the
    scene shrunk to 64 px (2/3 exactly), at the top left or centred (16 px in)."""
    import numpy as np

    from seqtr_lib.data.refer import box_corners, decode_mask
    from seqtr_lib.sequence import polygon_to_rle, rle_to_mask

    scale_views = _benchmark_module("scale_views")
    views = {v.name: v for v in scale_views.views_of(96, 96)}
    centred = scale_views.views_of(96, 96, "centre")[3]
    assert [(v.size, v.scene_size, v.offset) for v in views.values()] == [
        ((96, 96), (96, 96), (0, 0)), ((144, 96), (96, 96), (0, 0)), ((96, 144), (96, 96), (0, 0)),
        ((96, 96), (64, 64), (0, 0))]
    assert (centred.scene_size, centred.offset) == ((64, 64), (16, 16))
    bbox = [9, 30, 24, 12]  # x1, y1, x2, y2 = 9, 30, 33, 42
    for name in ("as_generated", "strip_right", "strip_below"):
        assert scale_views.view_box(views[name], bbox).tolist() == [9, 30, 33, 42], name
    assert scale_views.view_box(views["shrunk"], bbox).tolist() == [6, 20, 22, 28]
    assert scale_views.view_box(centred, bbox).tolist() == [22, 36, 38, 44]
    square = [[3, 6, 33, 6, 33, 36, 3, 36]]
    assert scale_views.view_polygons(views["shrunk"], square) == [[2, 4, 22, 4, 22, 24, 2, 24]]
    assert scale_views.view_polygons(centred, square) == [[18, 20, 38, 20, 38, 40, 18, 40]]

    # The pixels: a red block on a dark scene. The strips keep the scene as it is; shrinking by exactly 2/3
    # makes the 48 px block 32 px (INTER_AREA: each output pixel averages 1.5 x 1.5 input pixels of one colour
    # inside the block and outside it, so both colours are exact); the rest of each canvas is the grey.
    red, dark = (220, 40, 40), (50, 60, 70)
    scene = np.full((96, 96, 3), dark, np.uint8)
    scene[:48, :48] = red
    right, below = scale_views.render(views["strip_right"], scene), scale_views.render(views["strip_below"], scene)
    assert right.shape == (96, 144, 3) and below.shape == (144, 96, 3)
    assert (right[:, :96] == scene).all() and (right[:, 96:] == 128).all()
    assert (below[:96] == scene).all() and (below[96:] == 128).all()
    for view in (views["shrunk"], centred):
        canvas, (left, top) = scale_views.render(view, scene), view.offset
        expected = np.full((96, 96, 3), 128, np.uint8)
        expected[top:top + 64, left:left + 64] = dark
        expected[top:top + 32, left:left + 32] = red
        assert (canvas == expected).all(), view.offset

    # A real target of the tiny set: in a strip view its mask is the scene's mask padded with zeros.
    annotation = json.loads((tiny_data_root / "annotations" / "synthetic" / "instances.json").read_text())["val"][0]
    height, width = annotation["height"], annotation["width"]
    mask, _ = decode_mask(annotation["mask"], height, width)
    tiny = {v.name: v for v in scale_views.views_of(width, height)}
    for name, padding in (("strip_right", ((0, 0), (0, width // 2))), ("strip_below", ((0, height // 2), (0, 0)))):
        view = tiny[name]
        moved = rle_to_mask(polygon_to_rle(scale_views.view_polygons(view, annotation["mask"]), view.size[1], view.size[0]))
        assert (moved == np.pad(mask, padding)).all(), name
        assert (scale_views.view_box(view, annotation["bbox"]) == box_corners(annotation["bbox"], height, width)).all()


def test_scale_views_released_weights_tiny(tiny_data_root, tmp_path):
    """The first 6 val expressions of the tiny set: the plain view scores what `Grounder.predict` gives on the image
    file, and the strip views what it gives on the scene padded with grey by numpy, each against the ground truth
    padded likewise (an independent construction of those views)."""
    import numpy as np

    from seqtr_lib.data.refer import box_corners, decode_mask
    from seqtr_lib.images import read_image
    from seqtr_lib.predict import Grounder

    out = tmp_path / "views.json"
    checkpoints = [str(ROOT / "weights" / name) for name in ("synthetic_det.pt", "synthetic_mask.pt")]
    _script("scale_views.py", "--checkpoints", *checkpoints, "--data-root", str(tiny_data_root), "--limit", "6",
            "--threads", "1", "--out", str(out))
    report = _load(out)
    assert report["num_expressions"] == 6 and report["machine"]["cpu"]
    annotations = json.loads((tiny_data_root / "annotations" / "synthetic" / "instances.json").read_text())["val"]
    items = [(a, e) for a in annotations for e in a["expressions"]][:6]
    for checkpoint, result in zip(checkpoints, report["results"]):
        grounder = Grounder.from_checkpoint(checkpoint, device="cpu", execution="fp32")  # the script's default
        (task,) = result["tasks"]
        rows = {row["view"]: row[task] for row in result["views"]}
        assert list(rows) == ["as_generated", "strip_right", "strip_below", "shrunk"]
        pads = {"as_generated": ((0, 0), (0, 0)), "strip_right": ((0, 0), (0, 32)), "strip_below": ((0, 32), (0, 0))}
        for view, pad in pads.items():
            ious = []
            for annotation, expression in items:
                scene = read_image(tiny_data_root / "images" / "synthetic" / f"{annotation['image_id']}.jpg")
                image = np.pad(scene, (*pad, (0, 0)), constant_values=128)
                height, width = image.shape[:2]
                mask = np.pad(decode_mask(annotation["mask"], 64, 64)[0], pad)
                prediction = grounder.predict(image if view != "as_generated" else
                                              tiny_data_root / "images" / "synthetic" / f"{annotation['image_id']}.jpg",
                                              expression, task=task)
                ious.append(prediction.iou(box_corners(annotation["bbox"], height, width), mask))
            assert rows[view]["ious"] == [round(v, 4) for v in ious], (checkpoint, view)
            hits = sum(v >= 0.5 for v in ious)
            assert rows[view]["acc@0.5" if task == "box" else "prec@0.5"] == 100 * hits / 6, (checkpoint, view)
        assert len(rows["shrunk"]["ious"]) == 6 and all(0 <= v <= 1 for v in rows["shrunk"]["ious"])


def test_scale_views_says_how_to_make_a_missing_set(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / "scale_views.py"), "--data-root", str(tmp_path / "none"),
                             "--out", str(tmp_path / "out.json")], env=cli_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and not (tmp_path / "out.json").exists()
    assert f"make-synthetic --out {tmp_path / 'none'}" in result.stderr.strip().splitlines()[-1]


def test_answer_positions_counts_each_objects_tokens():
    """Two samples: 3 boxes (1st exact, 2nd one bin off in one token, 3rd all wrong) and 2 boxes (both exact)."""
    import torch

    positions = _benchmark_module("answer_positions")
    eos = 64
    first = torch.tensor([1, 2, 3, 4, 10, 11, 12, 13, 20, 21, 22, 23, eos])
    first_got = torch.tensor([1, 2, 3, 4, 10, 11, 12, 14, 30, 31, 32, 33, eos])
    second = torch.tensor([5, 6, 7, 8, 9, 9, 9, 9, eos, eos, eos, eos, eos])
    rows = positions.object_accuracies([(first_got, first, 3), (second, second, 2)])
    assert rows == [{"object": 1, "samples": 2, "exact": 100.0, "within_one_bin": 100.0},
                    {"object": 2, "samples": 2, "exact": 87.5, "within_one_bin": 100.0},
                    {"object": 3, "samples": 1, "exact": 0.0, "within_one_bin": 0.0}]
