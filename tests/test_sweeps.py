"""Sweeps (a grid of runs through the notebooks), the collected run table, and the paper's numbers beside them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from conftest import ROOT, assert_moved_aside, write_params
from seqtr_lib import compare, paper_results, pipeline, sweeps
from seqtr_lib.config import ConfigError

# --- the grid and its names -----------------------------------------------------------------------


def test_run_names_are_readable_and_read_back_to_their_overrides():
    assert sweeps.run_name("synthetic_mask", ["model.num_ray=12"]) == "synthetic_mask__model.num_ray=12"
    assert sweeps.run_name("synthetic_mask", []) == "synthetic_mask"
    name = sweeps.run_name("exp", ["train.decay_epochs=[3, 4]", "train.finetune_from=weights/synthetic_det.pt"])
    # "/" would make a subfolder and "_" could fake the separator: both are escaped, brackets and commas kept
    assert name == "exp__train.decay_epochs=[3,%204]__train.finetune_from=weights%2Fsynthetic%5Fdet.pt"
    assert sweeps.parse_run_name(name) == ("exp", ["train.decay_epochs=[3, 4]",
                                                   "train.finetune_from=weights/synthetic_det.pt"])
    assert sweeps.parse_run_name("my__exp__model.num_bin=64") == ("my__exp", ["model.num_bin=64"])
    assert sweeps.parse_run_name("synthetic_det") == ("synthetic_det", [])
    with pytest.raises(ValueError, match="cannot start a sweep"):
        sweeps.run_name("a=b", ["model.num_bin=64"])
    with pytest.raises(ValueError, match="255"):
        sweeps.run_name("exp", [f"model.num_bin={'9' * 300}"])


@given(base=st.from_regex(r"[a-z][a-z0-9_\-]{0,20}", fullmatch=True),
       values=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=8),
                       min_size=1, max_size=3))  # at most 6 bytes a character once escaped: within 255
def test_any_values_read_back_and_distinct_points_get_distinct_names(base, values):
    keys = ["model.num_ray", "train.lr", "data.synthetic.seed"][:len(values)]
    overrides = [f"{k}={v}" for k, v in zip(keys, values)]
    name = sweeps.run_name(base, overrides)
    assert "/" not in name and sweeps.parse_run_name(name) == (base, overrides)
    other = [*overrides[:-1], f"{keys[len(values) - 1]}={values[-1]}x"]
    assert sweeps.run_name(base, other) != name


def test_sweep_specs_split_on_top_level_commas_and_bad_ones_are_named():
    assert sweeps.parse_sweep("model.num_ray=12,18, 24") == ("model.num_ray", ["12", "18", "24"])
    assert sweeps.parse_sweep("train.decay_epochs=[3,4],[5]") == ("train.decay_epochs", ["[3,4]", "[5]"])
    with pytest.raises(ConfigError, match="did you mean 'model.num_ray'"):
        sweeps.parse_sweep("model.num_rays=12")
    with pytest.raises(ConfigError, match="empty value"):
        sweeps.parse_sweep("model.num_ray=12,,18")
    with pytest.raises(ConfigError, match="section.key=V1,V2"):
        sweeps.parse_sweep("model.num_ray")
    with pytest.raises(ConfigError, match="names the run folders"):
        sweeps.parse_sweep("name=a,b")


def test_the_grid_is_every_combination_with_seeds_last():
    points = sweeps.grid([("model.num_ray", ["12", "18"]), ("model.num_bin", ["64", "128"])], seeds=2, base_seed=7)
    assert len(points) == 8
    assert points[0] == ["model.num_ray=12", "model.num_bin=64", "train.seed=7"]
    assert points[1] == ["model.num_ray=12", "model.num_bin=64", "train.seed=8"]
    assert points[-1] == ["model.num_ray=18", "model.num_bin=128", "train.seed=8"]
    assert sweeps.grid([], seeds=1) == [[]]
    with pytest.raises(ConfigError, match="both set the seed"):
        sweeps.grid([("train.seed", ["1", "2"])], seeds=2)


# --- running a grid (the notebooks replaced by a fake that writes what they would) -------------------


@pytest.fixture
def fake_notebooks(monkeypatch):
    """run_pipeline replaced: each notebook call is recorded; a run whose overrides hold model.num_ray=24
    fails in 01's cell 7, as a NotebookFailed from papermill would."""
    calls = []

    def fake(params_files, notebooks, project=None, output_root=None, data_root=None, overrides=(), parameters=None):
        (notebook,) = notebooks
        name = [o.split("=", 1)[1] for o in overrides if o.startswith("name=")][-1]
        output = output_root or [o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")][-1]
        run_dir = Path(output) / name
        calls.append((name, notebook, dict(parameters or {})))
        if notebook == "01" and "model.num_ray=24" in overrides:
            raise pipeline.NotebookFailed("01_train.ipynb failed in cell 7 (...): ValueError: boom", "01_train.ipynb", 7)
        (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
        (run_dir / "notebooks" / f"{notebook}.ipynb").write_text("{}")
        return [run_dir]

    monkeypatch.setattr(pipeline, "run_pipeline", fake)
    return calls


def test_a_failing_run_is_named_and_the_others_go_on_and_finished_runs_are_skipped(fake_notebooks, tmp_path):
    out = str(tmp_path / "outputs")
    runs = pipeline.sweep("params/synthetic_mask.yaml", ["model.num_ray=12,24,36"], notebooks=("01", "02"),
                          project=ROOT, output_root=out, nproc_per_node=2, log=lambda *a, **k: None)
    assert [(r.name, r.status) for r in runs] == [("synthetic_mask__model.num_ray=12", "done"),
                                                  ("synthetic_mask__model.num_ray=24", "failed"),
                                                  ("synthetic_mask__model.num_ray=36", "done")]
    assert (runs[1].notebook, runs[1].cell) == ("01_train.ipynb", 7)
    # the failing run stopped at its failing notebook; the next run ran both
    assert [(n, nb) for n, nb, _ in fake_notebooks] == [
        ("synthetic_mask__model.num_ray=12", "01"), ("synthetic_mask__model.num_ray=12", "02"),
        ("synthetic_mask__model.num_ray=24", "01"),
        ("synthetic_mask__model.num_ray=36", "01"), ("synthetic_mask__model.num_ray=36", "02")]
    assert all(parameters["nproc_per_node"] == 2 for _, _, parameters in fake_notebooks)
    marker = json.loads((tmp_path / "outputs" / "synthetic_mask__model.num_ray=12" / "sweep.json").read_text())
    assert marker["status"] == "done" and marker["swept"] == ["model.num_ray=12"]
    assert marker["notebooks"] == ["01", "02"] and marker["config"]["model"]["num_ray"] == 12
    failed = json.loads((tmp_path / "outputs" / "synthetic_mask__model.num_ray=24" / "sweep.json").read_text())
    assert (failed["status"], failed["notebook"], failed["cell"]) == ("failed", "01_train.ipynb", 7)
    table = sweeps.sweep_table(runs)
    assert "synthetic_mask__model.num_ray=24  failed" in table and "01_train.ipynb cell 7" in table

    # Started again: the two finished runs are skipped, the failed one runs again.
    fake_notebooks.clear()
    again = pipeline.sweep("params/synthetic_mask.yaml", ["model.num_ray=12,24,36"], notebooks=("01", "02"),
                           project=ROOT, output_root=out, nproc_per_node=2, log=lambda *a, **k: None)
    assert [r.status for r in again] == ["skipped", "failed", "skipped"]
    assert {n for n, _, _ in fake_notebooks} == {"synthetic_mask__model.num_ray=24"}
    # Asking for one more notebook runs only that one where the others are done.
    fake_notebooks.clear()
    pipeline.sweep("params/synthetic_mask.yaml", ["model.num_ray=12"], notebooks=("01", "02", "03"), project=ROOT,
                   output_root=out, nproc_per_node=2, log=lambda *a, **k: None)
    assert [(n, nb) for n, nb, _ in fake_notebooks] == [("synthetic_mask__model.num_ray=12", "03")]
    # Other overrides than the finished run's: it runs again.
    fake_notebooks.clear()
    pipeline.sweep("params/synthetic_mask.yaml", ["model.num_ray=12"], notebooks=("01",), project=ROOT,
                   output_root=out, overrides=["train.lr=1e-4"], log=lambda *a, **k: None)
    assert [(n, nb) for n, nb, _ in fake_notebooks] == [("synthetic_mask__model.num_ray=12", "01")]


@pytest.mark.slow
def test_a_grid_point_trained_again_keeps_its_earlier_run_and_marker_aside(tiny_data_root, tmp_path):
    params = write_params(tmp_path / "p.yaml", tiny_data_root, tmp_path / "outputs",
                          train={"epochs": 1, "max_steps_per_epoch": 2, "log_every": 1})
    run_dir = tmp_path / "outputs" / "tiny__train.lr=0.001"
    (first,) = pipeline.sweep(str(params), ["train.lr=0.001"], notebooks=("01",), project=ROOT,
                              log=lambda *a, **k: None)
    assert (first.run_dir, first.status) == (run_dir, "done")
    best = (run_dir / "best.pt").read_bytes()
    lines = []
    # Other overrides than the finished run's: the point trains again in the same folder.
    (second,) = pipeline.sweep(str(params), ["train.lr=0.001"], notebooks=("01",), project=ROOT,
                               overrides=["train.seed=2"], log=lambda *a, **k: lines.append(" ".join(a)))
    assert second.status == "done"
    moved = assert_moved_aside(run_dir, best, second_seed=2)
    assert any(f"an earlier run was in {run_dir}: moved it to {moved}" in line for line in lines)
    marker = json.loads((moved / "sweep.json").read_text())  # the first run's, with it
    assert marker["overrides"] == ["train.lr=0.001", "name=tiny__train.lr=0.001"]
    assert "train.seed=2" in json.loads((run_dir / "sweep.json").read_text())["overrides"]


def test_a_torn_marker_is_not_a_finished_run(tmp_path):
    (tmp_path / "sweep.json").write_text('{"status": "do')
    assert not sweeps.is_finished(tmp_path, ["01"], [])
    (tmp_path / "sweep.json").write_text(json.dumps({"status": "failed", "notebooks": ["01"], "overrides": []}))
    assert not sweeps.is_finished(tmp_path, ["01"], [])
    (tmp_path / "sweep.json").write_text(json.dumps({"status": "done", "notebooks": ["00", "01"], "overrides": []}))
    assert sweeps.is_finished(tmp_path, ["01"], []) and not sweeps.is_finished(tmp_path, ["01", "02"], [])


def test_the_command_line_ends_with_the_table_and_fails_when_a_run_failed(fake_notebooks, tmp_path, capsys):
    argv = ["--params", "params/synthetic_mask.yaml", "--sweep", "model.num_ray=12,24", "--notebooks", "01",
            "--set", f"output_dir={tmp_path}", "--nproc-per-node", "3"]
    with pytest.raises(SystemExit, match="1 of 2 runs failed"):
        pipeline.main(argv)
    out = capsys.readouterr().out
    assert "synthetic_mask__model.num_ray=12  done" in out and "01_train.ipynb cell 7" in out
    assert [p["nproc_per_node"] for _, _, p in fake_notebooks] == [3, 3]
    # a grid point that does not load stops the command before anything runs
    fake_notebooks.clear()
    with pytest.raises(SystemExit, match=r"grid point model.num_ray=0 .*num_ray"):
        pipeline.main(["--params", "params/synthetic_mask.yaml", "--sweep", "model.num_ray=12,0", "--notebooks", "01",
                       "--set", f"output_dir={tmp_path}"])
    assert fake_notebooks == []


# --- the collected table --------------------------------------------------------------------------


def _run_folder(root: Path, name: str, swept: list[str] | None, config: dict, val: dict | None,
                epochs: list[tuple[int, float]] = (), status: str = "done") -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    if swept is not None:
        (run_dir / "sweep.json").write_text(json.dumps({"status": status, "swept": swept, "config": config,
                                                        "seconds": 600.0, "machine": "test box, 2 cores",
                                                        **({"notebook": "01_train.ipynb", "cell": 7}
                                                           if status == "failed" else {})}))
    if val is not None:
        (run_dir / "metrics.json").write_text(json.dumps({"splits": {"val": val}}))
    lines = [json.dumps({"type": "step", "step": 1})] + [
        json.dumps({"type": "epoch", "epoch": i, "samples": s, "train_seconds": t}) for i, (s, t) in enumerate(epochs)]
    (run_dir / "log.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def _mask_config(num_ray: int, num_bin: int = 128, seed: int = 1) -> dict:
    return {"name": "m", "model": {"task": "mask", "num_ray": num_ray, "num_bin": num_bin},
            "data": {"dataset": "synthetic"}, "train": {"seed": seed}}


@pytest.fixture
def hand_made_runs(tmp_path):
    out = tmp_path / "outputs"
    _run_folder(out, "m__model.num_ray=12__train.seed=1", ["model.num_ray=12", "train.seed=1"], _mask_config(12),
                {"raw": {"miou": 50.0}, "ema": {"miou": 52.0}}, [(100, 30.0), (100, 42.0)])
    _run_folder(out, "m__model.num_ray=12__train.seed=2", ["model.num_ray=12", "train.seed=2"], _mask_config(12, seed=2),
                {"raw": {"miou": 54.0}, "ema": {"miou": 58.0}}, [(100, 30.0)])
    _run_folder(out, "m__model.num_ray=18__train.seed=1", ["model.num_ray=18", "train.seed=1"], _mask_config(18),
                {"raw": {"miou": 60.0}, "ema": {"miou": 61.0}})
    _run_folder(out, "m__model.num_bin=64", ["model.num_bin=64"], _mask_config(18, num_bin=64),
                {"raw": {"miou": 40.0}, "ema": {"miou": 41.0}})
    _run_folder(out, "m__model.num_ray=36__train.seed=1", ["model.num_ray=36", "train.seed=1"], _mask_config(36),
                None, status="failed")
    (out / "compare").mkdir()  # not a run
    return out


def test_the_collected_table_from_hand_made_run_folders(hand_made_runs, tmp_path):
    runs = compare.collect_runs("outputs/*", tmp_path)
    rows = compare.table_rows(runs)
    assert [r["name"] for r in rows] == ["m__model.num_bin=64", "m__model.num_ray=12__train.seed=1",
                                         "m__model.num_ray=12__train.seed=2", "m__model.num_ray=18__train.seed=1",
                                         "m__model.num_ray=36__train.seed=1"]
    first_seed = rows[1]
    assert first_seed["status"] == "done" and (first_seed["model.num_ray"], first_seed["model.num_bin"]) == (12, 128)
    assert (first_seed["dataset"], first_seed["task"]) == ("synthetic", "mask")
    assert (first_seed["val miou raw"], first_seed["val miou ema"]) == (50.0, 52.0)
    assert (first_seed["samples"], first_seed["train min"], first_seed["run min"]) == (200, 1.2, 10.0)
    assert first_seed["machine"] == "test box, 2 cores"
    assert rows[0]["model.num_ray"] == 18  # a run that swept another key shows the value it ran with
    failed = rows[4]
    assert (failed["status"], failed["failed in"], failed["val miou ema"]) == ("failed", "01_train.ipynb cell 7", None)

    path = compare.write_csv(rows, tmp_path / "runs.csv")
    with open(path) as file:
        table = list(csv.DictReader(file))
    assert table[1]["val miou ema"] == "52.0" and table[4]["val miou ema"] == ""
    markdown = compare.markdown_table(rows, ["name", "model.num_ray", "val miou ema"])
    assert markdown.splitlines()[:3] == ["| name | model.num_ray | val miou ema |", "|---|---|---|",
                                         "| m__model.num_bin=64 | 18 | 41.00 |"]

    # The plot's points: num_ray on x, one line per num_bin, the two seeds of 12 points as mean and spread.
    series = compare.metric_series(rows, "model.num_ray", "val miou ema")
    assert series == {"model.num_bin=128": [(12.0, 55.0, 52.0, 58.0, 2), (18.0, 61.0, 61.0, 61.0, 1)],
                      "model.num_bin=64": [(18.0, 41.0, 41.0, 41.0, 1)]}
    assert compare.metric_series(rows, "model.num_ray", "val miou ema", where={"model.num_bin": 64}) == {
        "val miou ema": [(18.0, 41.0, 41.0, 41.0, 1)]}
    assert compare.default_axes(rows) == ("model.num_ray", "val miou ema")
    figure = compare.metric_plot(rows, "model.num_ray", "val miou ema")
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["model.num_bin=128 (2 seeds)",
                                                                                "model.num_bin=64"]
    # One panel per swept key, the other held at its most common value (num_bin 128; num_ray 18, the first
    # of the two values that two runs each hold); the failed run has no score and no point.
    panels = compare.ablation_plot(rows, "val miou ema").axes
    assert [axis.get_title() for axis in panels] == ["val miou ema against model.num_ray\n(model.num_bin=128)",
                                                     "val miou ema against model.num_bin\n(model.num_ray=18)"]
    assert [list(line.get_ydata()) for line in panels[0].get_lines()][0] == [55.0, 61.0]
    assert [list(line.get_xdata()) for line in panels[1].get_lines()][0] == [64.0, 128.0]
    assert [list(line.get_ydata()) for line in panels[1].get_lines()][0] == [41.0, 61.0]


# --- the paper's numbers --------------------------------------------------------------------------


def test_the_paper_numbers_are_the_readme_tables():
    cells = {(c["dataset"], c["task"], c["model"], c["split"]): c["value"] for c in paper_results.PAPER}
    assert len(cells) == len(paper_results.PAPER) == 41  # 15 RefCOCO + 15 RefCOCO+ + 11 RefCOCOg
    assert cells["refcoco-unc", "box", "seqtr", "val"] == 81.23
    assert cells["refcoco-unc", "mask", "pretrained", "testB"] == 69.82
    assert cells["refcocoplus-unc", "box", "seqtr_yolov3", "testB"] == 64.88
    assert cells["refcocog-google", "box", "seqtr_yolov3", "val"] == 71.50
    assert cells["refcocog-umd", "mask", "pretrained", "test"] == 65.74
    assert ("refcocog-google", "box", "seqtr", "val") not in cells  # "-" in the README


def test_the_paper_table_lays_runs_beside_the_paper_and_leaves_missing_runs_empty():
    det = {"model": {"task": "box", "darknet_weights": "data/weights/darknet.weights"},
           "data": {"dataset": "refcoco-unc"}, "train": {"finetune_from": None}}
    finetuned = {**det, "train": {"finetune_from": "outputs/mixed_det_pretrain/last.pt"}}
    runs = [{"name": "a", "config": det, "metrics": {"splits": {"val": {"raw": {"acc@0.5": 79.0}, "ema": {"acc@0.5": 80.0}},
                                                                "testA": {"raw": {"acc@0.5": 86.0}}}}},
            {"name": "b", "config": det, "metrics": {"splits": {"val": {"ema": {"acc@0.5": 82.0}}}}},
            {"name": "c", "config": finetuned, "metrics": {"splits": {"testB": {"raw": {"acc@0.5": 84.09}}}}},
            {"name": "synthetic", "config": {"model": {"task": "box"}, "data": {"dataset": "synthetic"}, "train": {}},
             "metrics": {"splits": {"val": {"ema": {"acc@0.5": 99.0}}}}}]
    rows = paper_results.paper_comparison(runs)
    by_cell = {(r["dataset"], r["task"], r["model"], r["split"]): r for r in rows}
    val = by_cell["refcoco-unc", "box", "seqtr", "val"]
    assert (val["yours"], round(val["diff"], 2), val["runs"]) == (81.0, -0.23, ["a", "b"])  # mean of 80 and 82
    assert by_cell["refcoco-unc", "box", "seqtr", "testA"]["yours"] == 86.0  # no EMA kept: the raw weights
    assert by_cell["refcoco-unc", "box", "seqtr", "testB"]["yours"] is None
    assert round(by_cell["refcoco-unc", "box", "pretrained", "testB"]["diff"], 2) == 0.50
    assert sum(r["yours"] is not None for r in rows) == 3
    markdown = paper_results.paper_markdown(rows).splitlines()
    assert markdown[:5] == ["**refcoco-unc**: paper · yours (yours - paper)", "",
                            "| model | task | val | testA | testB |", "|---|---|---:|---:|---:|",
                            "| SeqTR | detection (Acc@0.5) | 81.23 · 81.00 (-0.23) | 85.00 · 86.00 (+1.00) | 76.08 |"]
    assert "| pre-trained + fine-tuned SeqTR | detection (Acc@0.5) | 87.00 | 90.15 | 83.59 · 84.09 (+0.50) |" in markdown
    assert "| SeqTR | detection (Acc@0.5) | - | 71.50 |" not in markdown
    google = markdown.index("**refcocog-google**: paper · yours (yours - paper)")
    assert markdown[google + 2:google + 5] == ["| model | task | val |", "|---|---|---:|",
                                               "| SeqTR* (yolov3.weights) | detection (Acc@0.5) | 71.50 |"]
