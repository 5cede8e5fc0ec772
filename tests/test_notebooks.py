"""The notebooks and their helpers: stored clean, each executes headless with papermill on a tiny experiment."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pytest

from conftest import ROOT, assert_moved_aside, demo_outputs, run_cli, write_params
from figure_pixels import axes_frames, colour_near, drawn_panels, fitted, frame_locator, rgb255
from seqtr_lib import notebook, reports, viz
from seqtr_lib.config import load_params

NOTEBOOKS = ["00_prepare_data", "01_train", "02_evaluate", "03_visualize_sequences", "04_demo"]
# The tiny_data_root fixture's generator settings, so that 00_prepare_data recognises the set.
TINY_SET = {"synthetic": {"num_images": 24, "image_size": 64, "seed": 3}}
TINY_RUN = {"epochs": 1, "max_steps_per_epoch": 2, "log_every": 1}
TINY_OVERRIDES = ["train.epochs=1", "train.max_steps_per_epoch=2"]


def _annotations(data_root):
    return json.loads((data_root / "annotations" / "synthetic" / "instances.json").read_text())


def _executed(path) -> tuple[str, list]:
    """All stream text of an executed notebook, and its error outputs."""
    outputs = [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    return text, [o for o in outputs if o.output_type == "error"]


def _assert_figure(path, images: int = 0, frames: int = 0, in_every_picture: tuple[str, ...] = (),
                   in_some_picture: tuple[str, ...] = ()) -> np.ndarray:
    """What a reader sees in the PNG at ``path``: ``images`` pictures (a gallery) with the colours given drawn in
    them, or else a chart of ``frames`` Axes; returns its pixels (RGB). A colour counts where it is drawn at
    full strength (boxes and points cover whole pixels, which keep their colour to within the rounding of one
    blend), unlike the synthetic images' own colours (their red shapes come within 37 of the prediction's)."""
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable figure"
    pixels = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if images:
        panels = drawn_panels(pixels)
        assert len(panels) == images, f"{path.name}: {len(panels)} pictures, not {images}"
        drawn = [{colour for colour in {*in_every_picture, *in_some_picture}
                  if (np.abs(pixels[top:bottom, left:right].astype(int) - rgb255(colour)).max(axis=-1) <= 1).any()}
                 for top, bottom, left, right in panels]
        for number, colours in enumerate(drawn, start=1):
            assert set(in_every_picture) <= colours, f"{path.name}: picture {number} shows only {colours}"
        assert set(in_some_picture) <= set().union(*drawn), f"{path.name}: no picture shows {in_some_picture}"
    if frames or not images:  # a chart (a sequence view has pictures and a chart)
        assert len(axes_frames(pixels)) == frames, f"{path.name}: {len(axes_frames(pixels))} Axes, not {frames}"
    return pixels


def _assert_curves_follow_the_log(path, records) -> None:
    """curves.png (loss, learning rate, validation; `viz.training_curves`): the epoch means of the loss drawn in
    orange (C1) and the logged learning rates in blue (C0) where the log's values put them."""
    pixels = _assert_figure(path, frames=3)
    loss_frame, lr_frame, _ = axes_frames(pixels)
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert steps and epochs
    locate = frame_locator(loss_frame, fitted([r["step"] for r in steps + epochs]),
                           fitted([r["loss"] for r in steps + epochs]))
    for record in epochs:
        at = locate(record["step"], record["loss"])
        assert colour_near(pixels, at, "C1"), f"no mean loss at step {record['step']}"
    locate = frame_locator(lr_frame, fitted([r["step"] for r in steps]), fitted([r["lr"] for r in steps]))
    for record in steps:
        at = locate(record["step"], record["lr"])
        assert colour_near(pixels, at, "C0"), f"no learning rate at step {record['step']}"


@pytest.fixture
def tiny_params(tiny_data_root, tmp_path):
    def make(name: str, task: str = "box"):
        path = write_params(tmp_path / f"{name}.yaml", tiny_data_root, tmp_path / "outputs", task=task,
                            data=TINY_SET, train=TINY_RUN)
        path.write_text(path.read_text().replace("name: tiny", f"name: {name}"))
        return path

    return make


# --- the committed notebooks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs_and_one_flat_parameters_cell(name):
    document = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(document)
    assert document.metadata.kernelspec.name == "python3"
    code = [c for c in document.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "strip outputs before committing"
    tagged = [c for c in document.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    statements = ast.parse(tagged[0].source).body
    for statement in statements:
        # papermill injects its values after this cell: typed literals only, none computed from another
        assert isinstance(statement, ast.AnnAssign), ast.unparse(statement)
        ast.literal_eval(statement.value)
    assert [s.target.id for s in statements][:4] == ["params_file", "overrides", "output_dir", "data_root"]
    assert document.cells[0].cell_type == "markdown"
    assert max(len(c.source.splitlines()) for c in code) <= 20


def test_papermill_reads_every_parameter_of_every_notebook():
    import papermill

    for name in NOTEBOOKS:
        document = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        (cell,) = [c for c in document.cells if "parameters" in c.metadata.get("tags", [])]
        declared = [s.target.id for s in ast.parse(cell.source).body]
        # a help comment holding "=" makes papermill drop the line, and then the parameter silently
        assert list(papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))) == declared, name


# --- helpers ------------------------------------------------------------------------------------------


def test_notebook_parameters_become_params_overrides_after_the_users():
    assert notebook.notebook_overrides(["train.lr=1e-4"], "", "") == ["train.lr=1e-4"]
    assert notebook.notebook_overrides([], "/tmp/o", "/d") == ["output_dir=/tmp/o", "data.data_root=/d"]
    experiment = notebook.load_experiment("params/synthetic_det.yaml", ["train.epochs=3"], "/tmp/o", "/d")
    assert (experiment.train.epochs, experiment.output_dir, experiment.data.data_root) == (3, "/tmp/o", "/d")


def test_torchrun_command_is_standalone_on_one_node_and_uses_a_rendezvous_on_several():
    one = notebook.torchrun_command("p.yaml", ["train.lr=1e-4"], 4)
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone", "-m", "seqtr_lib",
                       "train", "--params", "p.yaml", "--set", "train.lr=1e-4"]
    assert one[0] == sys.executable
    many = notebook.torchrun_command("p.yaml", [], 8, nnodes=2, rdzv_endpoint="node0:29500")
    assert many[many.index("--nnodes") + 1] == "2"
    assert many[many.index("--rdzv_endpoint") + 1] == "node0:29500"
    assert "--standalone" not in many
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        notebook.torchrun_command("p.yaml", [], 8, nnodes=2)


def test_launch_streams_the_output_and_fails_like_check_true(monkeypatch, capsys):
    script = "import sys; print('rank 0 says hi'); print('bad rank', file=sys.stderr); sys.exit(3)"
    monkeypatch.setattr(notebook, "torchrun_command", lambda *args: [sys.executable, "-c", script])
    with pytest.raises(subprocess.CalledProcessError) as failure:
        notebook.launch_torchrun("p.yaml", [], 2)
    assert failure.value.returncode == 3
    assert "rank 0 says hi" in failure.value.output and "bad rank" in failure.value.output
    assert "rank 0 says hi\n" in capsys.readouterr().out


def test_notebook_kernels_talk_over_unix_sockets_so_no_port_can_be_taken_first(monkeypatch, tmp_path):
    import papermill
    from nbclient import NotebookClient

    from seqtr_lib import pipeline

    given = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda source, output, **kwargs: given.update(kwargs))
    pipeline.execute("00", tmp_path / "executed.ipynb", {})
    manager = given["kernel_manager_class"](kernel_name="python3")
    assert manager.transport == "ipc"
    # and a kernel started through it runs code
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    NotebookClient(notebook, kernel_name="python3", kernel_manager_class=given["kernel_manager_class"]).execute()
    assert notebook.cells[0].outputs[0]["text"] == "42\n"


def test_read_log_skips_a_torn_last_line_and_names_a_missing_log(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="rank 0 writes it"):
        reports.read_log(run_dir)
    (run_dir / "log.jsonl").write_text('{"type": "step", "step": 1}\n{"type": "epoch", "ep')
    assert reports.read_log(run_dir) == [{"type": "step", "step": 1}]


# --- the notebooks, executed ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.xdist_group("fast_project")
@pytest.mark.parametrize("name", ["synthetic_det", "synthetic_mask"])
def test_the_fast_demo_runs_every_notebook_in_its_own_project(fast_project, name):
    run_dir = demo_outputs(fast_project) / name
    for notebook_name in NOTEBOOKS:
        assert not _executed(run_dir / "notebooks" / f"{notebook_name}.ipynb")[1], notebook_name
    _assert_demo_figures(run_dir, _annotations(fast_project / "data"))
    # The project's params carry the fast settings, so the notebooks opened there with their defaults agree.
    experiment = load_params(fast_project / "params" / f"{name}.yaml")
    assert (experiment.data.synthetic.num_images, experiment.train.max_steps_per_epoch) == (40, 3)
    annotations = _annotations(fast_project / "data")
    assert len({a["image_id"] for split in annotations.values() for a in split}) == 40
    text, _ = _executed(run_dir / "notebooks" / "00_prepare_data.ipynb")
    (val_row,) = [line.split() for line in text.splitlines() if line.startswith("val ")]
    assert val_row[:3] == ["val", str(len(annotations["val"])), str(sum(len(a["expressions"]) for a in annotations["val"]))]
    task = experiment.model.task
    assert task == {"synthetic_det": "box", "synthetic_mask": "mask"}[name]
    text, _ = _executed(run_dir / "notebooks" / "01_train.ipynb")
    assert f"{name}: task {task}, 2 epochs of batch 16" in text
    assert "fine-tuning from" not in text  # the fast project has no weights/: the mask starts afresh, as --fast does
    assert [r["epoch"] for r in reports.read_log(run_dir) if r["type"] == "epoch"] == [0, 1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "testA", "testB"}
    assert set(metrics["splits"]["val"]) == {"raw", "ema", "raw_shuffled", "ema_shuffled"}
    # each expression of the split scored once, with the task's metric
    expressions = sum(len(a["expressions"]) for a in annotations["val"])
    assert metrics["splits"]["val"]["raw"]["num_expressions"] == expressions
    assert {"box": "acc@0.5", "mask": "miou"}[task] in metrics["splits"]["val"]["raw"]
    text, _ = _executed(run_dir / "notebooks" / "03_visualize_sequences.ipynb")
    if task == "box":
        assert "2 points -> 4 tokens" in text
    else:  # up to num_ray contour points in 2 x num_ray tokens, EOS pairs for the missing ones
        points = int(re.search(rf"(\d+) points -> {2 * experiment.model.num_ray} tokens", text).group(1))
        assert 3 <= points <= experiment.model.num_ray
    assert "no checkpoint" not in text
    text, _ = _executed(run_dir / "notebooks" / "04_demo.ipynb")
    assert f"using your own run {Path('outputs') / name / 'best.pt'}" in text


def _assert_demo_figures(run_dir, annotations) -> None:
    """The figures of notebooks 00-04 run with their default parameters."""
    _assert_figure(run_dir / "samples.png", images=12, in_every_picture=(viz.GT_COLOR,))  # 00's num_samples
    _assert_figure(run_dir / "expression_lengths.png", frames=1)
    _assert_curves_follow_the_log(run_dir / "curves.png", reports.read_log(run_dir))
    _assert_figure(run_dir / "ablation.png", frames=1)
    _assert_analysis_figures(run_dir, annotations)
    _assert_sequence_figures(run_dir, num_rays=4)  # 03's num_rays [6, 12, 18, 36]
    _assert_figure(run_dir / "demo.png", images=1)


def _assert_analysis_figures(run_dir, annotations) -> None:
    """02's analysis of the val split: the IoU histogram, the worst objects (02's num_failures 8, one picture
    each, the ground truth drawn in each and the prediction where it has an extent: an untrained model's box may
    have none), the breakdowns by expression length and by expression type."""
    _assert_figure(run_dir / "iou_histogram.png", frames=1)
    _assert_figure(run_dir / "failures.png", images=min(8, len(annotations["val"])),
                   in_every_picture=(viz.GT_COLOR,), in_some_picture=(viz.PRED_COLOR,))
    _assert_figure(run_dir / "breakdown.png", frames=2)


def _assert_sequence_figures(run_dir, num_rays: int) -> None:
    """03's figures with a checkpoint: target and prediction beside their token confidences, a picture per
    quantization_bins value (4), a picture per num_ray value and sampling mode, the order before and after
    shuffling."""
    _assert_figure(run_dir / "sequence_view.png", images=2, frames=1)
    _assert_figure(run_dir / "quantization.png", images=4)
    _assert_figure(run_dir / "num_ray.png", images=2 * num_rays)
    _assert_figure(run_dir / "shuffled_order.png", images=2)


@pytest.mark.slow
def test_evaluation_and_sequence_notebooks_on_a_trained_mask_model(tiny_params, tiny_data_root, tmp_path):
    from seqtr_lib import engine
    from seqtr_lib.pipeline import run_pipeline

    params = tiny_params("tiny_mask", task="mask")
    result = engine.train(load_params(params))
    (run_dir,) = run_pipeline([str(params)], ("02", "03"), output_root=str(tmp_path / "outputs"),
                              data_root=str(tiny_data_root), overrides=TINY_OVERRIDES,
                              parameters={"checkpoint": f"{result['run_dir']}/best.pt", "num_rays": [4, 8],
                                          "splits": ["val"], "shuffle_ablation": False, "weights": "raw"})
    for name in ("02_evaluate", "03_visualize_sequences"):
        assert not _executed(run_dir / "notebooks" / f"{name}.ipynb")[1], name
    text, _ = _executed(run_dir / "notebooks" / "03_visualize_sequences.ipynb")
    points = int(re.search(r"(\d+) points -> 12 tokens", text).group(1))  # num_ray 6: 12 tokens, EOS for missing
    assert 3 <= points <= 6
    _assert_sequence_figures(run_dir, num_rays=2)
    _assert_analysis_figures(run_dir, _annotations(tiny_data_root))

    # 02's analysis scores the saved records: the mean of their IoUs is the evaluation's mIoU.
    metrics = json.loads((run_dir / "metrics.json").read_text())["splits"]["val"]["raw"]
    ious = reports.expression_ious(reports.read_predictions(load_params(params), "val", "raw"), "mask")
    assert len(ious) == metrics["num_expressions"]
    assert 100 * ious.mean() == pytest.approx(metrics["miou"], abs=1e-6)


@pytest.mark.slow
def test_training_notebook_runs_two_gloo_processes_through_torchrun(tiny_params, tiny_data_root, tmp_path):
    from seqtr_lib.pipeline import run_pipeline

    (run_dir,) = run_pipeline([str(tiny_params("tiny_ddp"))], ("01",), output_root=str(tmp_path / "outputs"),
                              data_root=str(tiny_data_root), overrides=TINY_OVERRIDES,
                              parameters={"nproc_per_node": 2})
    text, errors = _executed(run_dir / "notebooks" / "01_train.ipynb")
    assert not errors
    assert "-m torch.distributed.run --nproc_per_node 2 --standalone -m seqtr_lib train" in text
    assert "best validation score" in text  # streamed from the ranks into the cell
    assert (run_dir / "best.pt").is_file()
    assert [r["epoch"] for r in reports.read_log(run_dir) if r["type"] == "epoch"] == [0]
    _assert_curves_follow_the_log(run_dir / "curves.png", reports.read_log(run_dir))


@pytest.mark.slow
def test_a_failing_rank_fails_the_training_notebook_naming_the_cell(tiny_params, tmp_path):
    from seqtr_lib.pipeline import NotebookFailed, run_pipeline

    # Every rank fails to find its annotation file; torchrun exits non-zero and the cell must raise.
    with pytest.raises(NotebookFailed, match=r"01_train.ipynb failed in cell \d+ .*'with notebook.live_curves.*"
                                             r"CalledProcessError: .*returned non-zero exit status"):
        run_pipeline([str(tiny_params("tiny_fail"))], ("01",), output_root=str(tmp_path / "outputs"),
                     data_root=str(tmp_path / "no_such_data"), overrides=TINY_OVERRIDES,
                     parameters={"nproc_per_node": 2})
    text, errors = _executed(tmp_path / "outputs" / "tiny_fail" / "notebooks" / "01_train.ipynb")
    assert errors[0]["ename"] == "CalledProcessError"
    assert "no_such_data/annotations/synthetic/instances.json does not exist" in text  # the rank's own message


# --- projects: where notebooks read params and write data and runs ----------------------------------


def test_a_project_copy_carries_the_notebooks_and_params_with_its_overrides(tmp_path, monkeypatch):
    from seqtr_lib.config import experiment_to_dict
    from seqtr_lib.pipeline import make_project

    project = make_project(tmp_path / "p", ["params/synthetic_det.yaml"], ["train.epochs=1", "data.image_size=96"])
    for name in NOTEBOOKS:
        assert (project / "notebooks" / f"{name}.ipynb").read_bytes() == (ROOT / "notebooks" / f"{name}.ipynb").read_bytes()
    copied = experiment_to_dict(load_params(project / "params" / "synthetic_det.yaml"))
    original = experiment_to_dict(load_params(ROOT / "params" / "synthetic_det.yaml"))
    original["train"]["epochs"], original["data"]["image_size"] = 1, 96
    assert copied == original
    # A kernel started in the copy's notebooks/ finds the copy, not the repository it was installed from.
    monkeypatch.chdir(project / "notebooks")
    assert notebook.repo_root() == project
    monkeypatch.chdir(tmp_path)
    assert notebook.repo_root() == ROOT


# --- a second run of 01 keeps the first (checkpoint.move_aside; tests/test_engine.py has the command line) ---


def _first_best_then_second_run(run_dir: Path, train) -> tuple[Path, str]:
    """``train(overrides)`` twice into ``run_dir``, the second with train.seed=2; returns the folder the
    first run was moved to (checked by `assert_moved_aside`) and the second run's output."""
    train([])
    first = (run_dir / "best.pt").read_bytes()
    output = train(["train.seed=2"])
    moved = assert_moved_aside(run_dir, first, second_seed=2)
    assert f"an earlier run was in {run_dir}: moved it to {moved}, not overwritten" in output
    return moved, output


def _stream_text(document) -> str:
    return "".join(o.get("text", "") for c in document.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")


@pytest.mark.slow
def test_training_notebook_run_twice_in_a_kernel_keeps_the_first_run(tiny_params, tmp_path):
    from nbclient import NotebookClient

    from seqtr_lib.pipeline import ipc_kernel_manager

    params = tiny_params("tiny_kernel")

    def train(overrides):
        # As in JupyterLab: the parameters cell edited, Run All in a kernel started in notebooks/.
        document = nbformat.read(ROOT / "notebooks" / "01_train.ipynb", as_version=4)
        (index,) = [i for i, c in enumerate(document.cells) if "parameters" in c.metadata.get("tags", [])]
        document.cells[index].source += f"\nparams_file = {str(params)!r}\noverrides = {overrides!r}\n"
        NotebookClient(document, kernel_name="python3", kernel_manager_class=ipc_kernel_manager(), timeout=600,
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        return _stream_text(document)

    _first_best_then_second_run(tmp_path / "outputs" / "tiny_kernel", train)


@pytest.mark.slow
def test_training_notebook_run_twice_by_the_papermill_command_keeps_the_first_run(tiny_params, tmp_path):
    params = tiny_params("tiny_papermill")
    runs = []

    def train(overrides):
        executed = tmp_path / f"train{len(runs)}.ipynb"
        runs.append(run_cli("-m", "papermill", str(ROOT / "notebooks" / "01_train.ipynb"), str(executed),
                            "-p", "params_file", str(params), "-p", "overrides", json.dumps(overrides)))
        return _executed(executed)[0]

    _first_best_then_second_run(tmp_path / "outputs" / "tiny_papermill", train)


@pytest.mark.slow
def test_the_pipeline_run_twice_keeps_the_first_run_with_its_own_figures(tiny_params, tiny_data_root, tmp_path, capsys):
    from seqtr_lib.pipeline import run_pipeline

    params = tiny_params("tiny_pipeline")
    run_dir = tmp_path / "outputs" / "tiny_pipeline"

    def train(overrides):
        run_pipeline([str(params)], ("00", "01"), overrides=overrides)
        return capsys.readouterr().out

    moved, _ = _first_best_then_second_run(run_dir, train)
    # Moved before 00 ran again: each folder holds its own run's data figures and executed notebooks.
    for folder, seed in ((moved, 1), (run_dir, 2)):
        _assert_figure(folder / "samples.png", images=12, in_every_picture=(viz.GT_COLOR,))  # 00's num_samples
        executed = nbformat.read(folder / "notebooks" / "01_train.ipynb", as_version=4)
        assert ("train.seed=2" in json.dumps(executed.metadata.papermill.parameters)) == (seed == 2)


# The README and the documents it points to: every command of their bash blocks runs here (papermill) or
# is checked against what it names (the rest, which would train for minutes or need a real dataset).
DOCUMENTS = ["README.md", "docs/results.md", "docs/method.md", "docs/training.md", "docs/notebooks.md",
             "benchmarks/README.md", "docs/data.md", "docs/gpu_recipe.md", "docs/troubleshooting.md"]


def _documented_commands() -> list[str]:
    """Every command line of the documents' bash blocks, continuation lines joined, comments dropped, once each."""
    commands = []
    for document in DOCUMENTS:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / document).read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = re.sub(r"(^|\s+)#.*$", "", line).strip()
                if command and command not in commands:
                    commands.append(command)
    return commands


def test_the_documents_links_lead_to_files_and_headings_that_exist():
    """Relative links and images of the README and its documents: the file exists, and a #fragment names one
    of its headings (as GitHub spells them)."""

    def slug(heading: str) -> str:
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    for document in DOCUMENTS:
        path = ROOT / document
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, fragment = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{document}: {target}"
            if fragment:
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.M)
                assert fragment in {slug(h) for h in headings}, f"{document}: {target}"
        assert "../shared" not in path.read_text()


def _readme_papermill_commands() -> list[str]:
    """Every papermill command line of the documents' bash blocks."""
    return [c for c in _documented_commands() if "papermill " in c]


def test_every_other_documented_command_names_what_exists():
    """make targets, scripts and modules exist, and their options are theirs; `seqtr_lib` commands parse with
    the CLI's own parser and the params files they name exist."""
    import argparse
    import shlex

    from seqtr_lib.cli import build_parser

    makefile = (ROOT / "Makefile").read_text()
    checked = 0
    for command in _documented_commands():
        words = shlex.split(command)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # environment assignments
            words.pop(0)
        if "papermill" in words[0]:
            continue  # run verbatim by the next test
        checked += 1
        if words[0] == "make":
            target, *variables = [w for w in words[1:] if "=" not in w] + [w for w in words[1:] if "=" in w]
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), command
            for variable in variables:  # make PYTHON=...: a variable the Makefile reads
                assert f"$({variable.split('=')[0]})" in makefile, command
            continue
        if words[0] == "bash":
            assert (ROOT / words[1]).is_file(), command
            continue
        assert words[0] in ("python", "python3.11", ".venv/bin/python"), \
            f"a kind of command this test does not check: {command}"
        if words[1].endswith(".py"):
            script, options = ROOT / words[1], [w.split("=")[0] for w in words[2:] if w.startswith("--")]
        else:
            assert words[1] == "-m", command
            module_at = words.index("-m")  # the first: pytest's -m selects markers
            if words[module_at + 1] == "torch.distributed.run" and "-m" in words[module_at + 2:]:
                module_at = words.index("-m", module_at + 2)  # torchrun lines: the module they run
            module, arguments = words[module_at + 1], words[module_at + 2:]
            if module == "seqtr_lib":
                parser = build_parser()
                parser.parse_args(arguments)  # an unknown command or option exits here
                # ... but argparse takes an unambiguous prefix of an option: each must be spelled in full.
                (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
                subparser = commands.choices[next(w for w in arguments if not w.startswith("-"))]
                spelled = {option for action in [*parser._actions, *subparser._actions]  # --debug is the parser's
                           for option in action.option_strings}
                assert {w.split("=")[0] for w in arguments if w.startswith("--")} <= spelled, command
                for flag, value in zip(arguments, arguments[1:]):
                    if flag == "--params":
                        assert (ROOT / value).is_file(), command
                continue
            if module == "torch.distributed.run":
                continue
            if not (ROOT / module.split(".")[0]).is_dir():  # pip, venv, pytest, torch.utils.collect_env
                _check_installed_module_command(module, arguments, command)
                continue
            script = ROOT / (module.replace(".", "/") + ".py")
            options = [w.split("=")[0] for w in arguments if w.startswith("--")]
        assert script.is_file(), command
        source = script.read_text()
        assert all(f'"{option}"' in source for option in options), command
    assert checked >= 10


def _check_installed_module_command(module: str, arguments: list[str], command: str) -> None:
    """A documented `python -m <module>` of another package: the module exists; pip installs the versions
    pyproject pins (from a PyTorch wheel index) and extras it declares; pytest names existing paths and
    declared markers."""
    import importlib.util
    import tomllib

    assert importlib.util.find_spec(module) is not None, command
    if module == "pip":
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert arguments[0] == "install", command
        for word in arguments[1:]:
            if "==" in word:
                assert word in project["dependencies"], f"{command}: pyproject pins another version than {word}"
            if extras := re.fullmatch(r"\.\[(.*)\]", word):
                assert set(extras.group(1).split(",")) <= set(project["optional-dependencies"]), command
        for flag, value in zip(arguments, arguments[1:]):
            if flag == "--index-url":
                assert re.fullmatch(r"https://download\.pytorch\.org/whl/(cpu|cu\d+)", value), command
    if module == "pytest":
        markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
        declared = {marker.split(":")[0] for marker in markers}
        for flag, value in zip(arguments, arguments[1:]):
            if flag == "-m":
                assert set(re.findall(r"\w+", value)) - {"not", "and", "or"} <= declared, command
        assert all((ROOT / word.split("::")[0]).exists() for word in arguments if word.startswith("tests")), command


@pytest.mark.slow
def test_every_papermill_command_of_the_readme_runs_verbatim(tmp_path):
    from seqtr_lib.pipeline import make_project

    commands = _readme_papermill_commands()
    assert len(commands) >= 3 and any(" -y " in c for c in commands) and any("-p overrides '[" in c for c in commands)
    project = make_project(tmp_path / "project", [f"params/{p.name}" for p in (ROOT / "params").glob("synthetic_*.yaml")], ())
    (project / ".venv").symlink_to(ROOT / ".venv")
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    outputs = sorted((project / "outputs").glob("*.ipynb"))
    assert outputs and all(not _executed(path)[1] for path in outputs)



def test_the_demo_fine_tunes_the_mask_from_the_box_run_it_just_made(tmp_path, monkeypatch):
    from seqtr_lib import pipeline

    calls = []

    def fake_run_pipeline(params_files, notebooks, project=None, overrides=(), parameters=None):
        (params_file,) = params_files
        calls.append((params_file, list(overrides), parameters))
        run_dir = tmp_path / Path(params_file).stem
        run_dir.mkdir(exist_ok=True)
        (run_dir / "best.pt").write_bytes(b"weights")
        return [run_dir]

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run_pipeline)
    run_dirs = pipeline.run_demo(pipeline.DEMO_PARAMS, overrides=["train.seed=1"])
    assert run_dirs == [tmp_path / "synthetic_det", tmp_path / "synthetic_mask"]
    (box_file, box, box_parameters), (mask_file, mask, _) = calls
    assert (box_file, mask_file) == pipeline.DEMO_PARAMS
    assert box[-1] == mask[-1] == "train.seed=1"  # the user's own overrides come last and win
    box_run = load_params(ROOT / box_file, box)
    # docs/training.md's schedule: 12 epochs of 192 steps, the last at a tenth of the rate; the mask 8, two at a tenth
    assert (box_run.train.epochs, box_run.train.decay_epochs, box_run.train.max_steps_per_epoch) == (12, (11,), 192)
    # Both start from the project's detection-trained backbone, frozen as the paper freezes DarkNet.
    assert box_run.model.darknet_weights == "weights/synthetic_darknet.weights"
    assert box_run.model.trainable_backbone_modules == 2
    assert box_run.train.finetune_from is None and box_parameters == {"splits": ["val"], "limit": 1000}
    mask_run = load_params(ROOT / mask_file, mask)
    assert (mask_run.train.epochs, mask_run.train.decay_epochs) == (8, (6,))
    # each image decoded, and the frozen modules run, once: no loader processes left to take the cores
    assert all(run.data.precompute_images and run.data.num_workers == 0 for run in (box_run, mask_run))
    assert mask_run.train.finetune_from == str(tmp_path / "synthetic_det" / "best.pt")

    calls.clear()  # the mask alone keeps its params' start (the released box weights)
    pipeline.run_demo(pipeline.DEMO_PARAMS[1:])
    assert not any(o.startswith("train.finetune_from=") for o in calls[0][1])


# --- 05: comparing runs ---------------------------------------------------------------------------


def test_the_comparison_notebook_is_stored_clean_with_flat_parameters():
    document = nbformat.read(ROOT / "notebooks" / "05_compare_runs.ipynb", as_version=4)
    nbformat.validate(document)
    code = [c for c in document.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    (cell,) = [c for c in document.cells if "parameters" in c.metadata.get("tags", [])]
    statements = ast.parse(cell.source).body
    assert all(isinstance(s, ast.AnnAssign) and ast.literal_eval(s.value) is not None for s in statements)
    import papermill

    assert list(papermill.inspect_notebook(str(ROOT / "notebooks" / "05_compare_runs.ipynb"))) == [
        s.target.id for s in statements]
    assert max(len(c.source.splitlines()) for c in code) <= 20


@pytest.mark.slow
@pytest.mark.xdist_group("fast_project")
def test_the_fast_demo_ends_with_05_comparing_its_runs(fast_project):
    compare_dir = demo_outputs(fast_project) / "compare"
    text, errors = _executed(compare_dir / "notebooks" / "05_compare_runs.ipynb")
    assert not errors
    assert "2 runs matching 'outputs/*'" in text and "0 of 41 published cells have a run" in text
    with open(compare_dir / "runs.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(row["name"], row["dataset"], row["task"], row["status"]) for row in rows] == [
        ("synthetic_det", "synthetic", "box", "done"), ("synthetic_mask", "synthetic", "mask", "done")]
    for row, metric in zip(rows, ("acc@0.5", "miou")):
        metrics = json.loads((demo_outputs(fast_project) / row["name"] / "metrics.json").read_text())
        for split in ("val", "testA", "testB"):
            for weights in ("raw", "ema"):
                assert float(row[f"{split} {metric} {weights}"]) == metrics["splits"][split][weights][metric]
        # the fast project trains 2 epochs of 3 steps of 16 samples
        assert int(row["samples"]) == 2 * 3 * 16
    assert (compare_dir / "runs.md").read_text().startswith("| name | status |")
    assert "| SeqTR | detection (Acc@0.5) | 81.23 | 85.00 | 76.08 |" in (compare_dir / "paper_comparison.md").read_text()
    # One panel per swept setting; the box and the mask run share no metric to plot against one: a single panel
    _assert_figure(compare_dir / "metric_plot.png", frames=1)


def test_two_kernels_started_in_one_folder_get_sockets_of_their_own(tmp_path, monkeypatch):
    from seqtr_lib.pipeline import ipc_kernel_manager

    monkeypatch.chdir(tmp_path)  # jupyter_client's default names (kernel-ipc-1 ...) would be the same here
    managers = [ipc_kernel_manager()(kernel_name="python3") for _ in range(2)]
    for manager in managers:
        manager.write_connection_file()
    paths = [{f"{manager.ip}-{port}" for port in manager.ports} for manager in managers]
    assert all(os.path.isabs(manager.ip) for manager in managers) and not paths[0] & paths[1]
    for manager in managers:
        manager.cleanup_connection_file()
        manager.cleanup_ipc_files()
        assert not os.path.exists(manager.socket_folder)
