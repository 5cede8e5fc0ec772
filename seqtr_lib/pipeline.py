"""Run the numbered notebooks headless with papermill: ``make demo`` and the notebook tests.

    python -m seqtr_lib.pipeline --demo     # make demo: 00 -> 04, box then mask, with the demo schedule
    python -m seqtr_lib.pipeline --fast     # a throwaway project under outputs/demo_fast (also DEMO_FAST=1)
    python -m seqtr_lib.pipeline --params params/refcoco-unc_det.yaml --notebooks 00,01,02   # as they are
    python -m seqtr_lib.pipeline --params params/synthetic_mask.yaml --demo --sweep model.num_ray=12,18,24 \
        --seeds 2 --notebooks 00,01,02    # a grid of runs, one folder each (seqtr_lib.sweeps)

``--demo`` trains the params files as they are, with a shorter schedule (the mask fine-tuning the box
run just made), and writes where they point (``data/``, ``outputs/<experiment>/``): the notebooks opened
afterwards with their default parameters show the demo's run. A run already in that folder is moved
aside first, never overwritten.

``--fast`` builds a *project* (a folder with its own ``notebooks/`` and ``params/``, see `make_project`)
whose params files carry a tiny data set and a few steps, then runs the notebooks there: a quick look
that touches nothing of yours. Executed copies go to ``<run_dir>/notebooks/`` next to the figures and
metrics the notebooks write. A failing cell stops the run with `NotebookFailed`, naming the notebook and
the cell. 05_compare_runs runs once at the end: every run under outputs/ in one table and plot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from seqtr_lib.atomic import write_json_atomic
from seqtr_lib.checkpoint import keep_earlier_run
from seqtr_lib.config import ConfigError, Experiment, experiment_to_dict, load_params
from seqtr_lib.notebook import load_experiment, repo_root
from seqtr_lib.sweeps import (MARKER, SweepRun, finished_notebooks, grid, machine, parse_run_name, parse_sweep,
                              run_name, sweep_table)

NOTEBOOKS = {
    "00": "00_prepare_data.ipynb",
    "01": "01_train.ipynb",
    "02": "02_evaluate.ipynb",
    "03": "03_visualize_sequences.ipynb",
    "04": "04_demo.ipynb",
    "05": "05_compare_runs.ipynb",  # not per experiment: once over every run of the project (`run_compare`)
}
COMPARE_DIR = "outputs/compare"  # 05's executed copy, table (CSV, Markdown) and plots
DEMO_PARAMS = ("params/synthetic_det.yaml", "params/synthetic_mask.yaml")

# make demo (issue 37's target: 10 minutes on 2 CPU cores, box val Acc@0.5 >= 90 %, mask val mIoU >= 65 %) trains
# both experiments on the params files' data (so that the notebooks opened afterwards find it), in epochs of 192
# steps (6,144 samples) whatever the set's size, so that the warm-up takes one epoch, with validation of both
# weights on 500 expressions after every epoch (256 chose an earlier best.pt on a tie), and 02 scores the first
# 1,000 val expressions. As the paper starts from a detection-trained DarkNet and freezes all but its last
# two modules, the demo starts from the project's (`seqtr_lib.pretrain`); the images are decoded and those frozen
# modules run once per image (data.precompute_images, `seqtr_lib.precompute`; the val images too), so a step
# computes only what trains, and the loader has no image work left to hide (no worker processes taking the cores). The box trains 12
# such epochs, the last at a tenth of the rate; the mask then starts from the box run just made
# (`train.finetune_from`, as its params start from the released box weights) and trains 8, the last two at a
# tenth (the outlines settle; the raw weights meet the EMA). Schedules chosen on learning runs recorded in
# docs/results.md.
DEMO_OVERRIDES = ("train.warmup_epochs=1", "train.max_steps_per_epoch=192", "train.val_limit=500",
                  "train.log_every=10", "model.darknet_weights=weights/synthetic_darknet.weights",
                  "model.trainable_backbone_modules=2",
                  # That backbone was trained on colour images: the grey-backbone departures stay off here.
                  "model.colour_pathway=0", "model.attribute_prior=0",
                  "data.precompute_images=true", "data.num_workers=0")
DEMO_SCHEDULES = {"box": ("train.epochs=12", "train.decay_epochs=[11]"),
                  "mask": ("train.epochs=8", "train.decay_epochs=[6]")}
DEMO_PARAMETERS: dict[str, Any] = {"splits": ["val"], "limit": 1000}
# The fast project: 40 small images and a few steps; every notebook runs, nothing learns.
FAST_OVERRIDES = ("data.synthetic.num_images=40", "data.synthetic.image_size=128", "data.image_size=128",
                  "data.num_workers=0", "data.batch_size=16", "data.eval_batch_size=32", "train.epochs=2",
                  "train.max_steps_per_epoch=3", "train.val_limit=100", "train.log_every=1",
                  "train.finetune_from=")  # the project has no weights/ folder; nothing learns here anyway
FAST_PROJECT = "outputs/demo_fast"


def ipc_kernel_manager() -> type:
    """A jupyter_client KernelManager whose kernels talk over Unix sockets instead of TCP ports.

    Over TCP, jupyter_client picks free ports and the kernel binds them a moment later; another process
    can take one in between ("Address already in use"), and the kernel never starts (it broke two
    clean-clone test runs, with tests and notebooks running side by side). jupyter_client's own socket
    names have the same race: ``kernel-ipc-1`` ... in the working directory, the first numbers not yet
    taken, so two processes starting a kernel in one folder can pick the same files and each kernel then
    refuses the other's messages ("Invalid Signature"; it hung a clean-clone run). Each kernel here gets
    its sockets in a folder of its own.
    """
    from jupyter_client.manager import KernelManager
    from traitlets import default

    class IPCKernelManager(KernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        socket_folder: str | None = None  # made for this kernel's sockets (removed with them)

        @default("ip")
        def _own_socket_folder(self) -> str:  # an absolute path: the kernel may run in another folder
            self.socket_folder = tempfile.mkdtemp(prefix="seqtr-kernel-")
            return os.path.join(self.socket_folder, "kernel")

        def cleanup_ipc_files(self) -> None:
            super().cleanup_ipc_files()
            if self.socket_folder is not None:
                shutil.rmtree(self.socket_folder, ignore_errors=True)

    return IPCKernelManager


class NotebookFailed(RuntimeError):
    """A cell of a notebook raised; the message names the notebook, the cell and the error (also as the
    attributes ``notebook`` and ``cell``)."""

    def __init__(self, message: str, notebook: str = "", cell: int | None = None) -> None:
        super().__init__(message)
        self.notebook, self.cell = notebook, cell


def execute(notebook: str, output_path: Path, parameters: dict[str, Any], project: Path | None = None) -> Path:
    """Execute one notebook of ``<project>/notebooks/`` with papermill (kernel ``python3``, cwd that folder).

    Only the parameters the notebook declares are injected. Raises NotebookFailed naming the cell.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = (project or repo_root()) / "notebooks"
    source = folder / NOTEBOOKS.get(notebook, notebook)
    declared = papermill.inspect_notebook(str(source))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The kernel's "running over TCP without encryption" warning would repeat for every notebook; its
        # sockets listen on localhost only. Kernel errors still print.
        papermill.execute_notebook(str(source), str(output_path), kernel_name="python3", cwd=str(folder),
                                   parameters={k: v for k, v in parameters.items() if k in declared},
                                   progress_bar=False, extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                   kernel_manager_class=ipc_kernel_manager(),
                                   # papermill waits 60 s for a kernel by default; on a loaded 2-core machine
                                   # a kernel importing torch took longer, and the notebook failed unrun
                                   start_timeout=300)
    except PapermillExecutionError as error:
        first_line = next((line for line in error.source.splitlines() if line.strip()), "")
        raise NotebookFailed(
            f"{source.name} failed in cell {error.cell_index} (execution count {error.exec_count}, starting "
            f"{first_line!r}): {error.ename}: {error.evalue}\nthe executed notebook with the full traceback is "
            f"{output_path}", source.name, error.cell_index) from None
    return output_path


def make_project(folder: str | Path, params_files: Sequence[str] = DEMO_PARAMS,
                 overrides: Sequence[str] = FAST_OVERRIDES) -> Path:
    """A project in ``folder``: the repository's notebooks, and each params file with ``overrides`` written in.

    Notebooks find their project as the first folder above their own holding ``notebooks/`` and ``params/``
    (`notebook.repo_root`), so the copies read these params files and write data/ and outputs/ here.
    """
    folder = Path(folder).resolve()
    root = repo_root()
    (folder / "params").mkdir(parents=True, exist_ok=True)
    (folder / "notebooks").mkdir(exist_ok=True)
    (folder / "outputs").mkdir(exist_ok=True)
    for name in NOTEBOOKS.values():
        shutil.copyfile(root / "notebooks" / name, folder / "notebooks" / name)
    for params_file in params_files:
        experiment = load_params(root / params_file, overrides)
        target = folder / "params" / Path(params_file).name
        header = f"# {params_file} with {' '.join(overrides)}, written by seqtr_lib.pipeline.make_project\n"
        target.write_text(header + yaml.safe_dump(experiment_to_dict(experiment), sort_keys=False))
    return folder


def _project_experiment(root: Path, params_file: str, overrides: Sequence[str], output_dir: str = "",
                        data_root: str = "") -> Experiment:
    """The experiment of a params file as the notebooks of project ``root`` load it: its relative paths
    (the params file, data, weights) are relative to the project."""
    cwd = Path.cwd()
    try:
        os.chdir(root)
        return load_experiment(params_file, overrides, output_dir, data_root)
    finally:
        os.chdir(cwd)


def run_pipeline(params_files: Sequence[str] = DEMO_PARAMS, notebooks: Sequence[str] = ("00", "01", "02", "03"),
                 project: str | Path | None = None, output_root: str | None = None, data_root: str | None = None,
                 overrides: Sequence[str] = (), parameters: dict[str, Any] | None = None) -> list[Path]:
    """Run ``notebooks`` in order for each params file of ``project`` (default: this repository).

    ``output_root``/``data_root`` replace the params files' ``output_dir``/``data.data_root`` when given;
    ``overrides`` and ``parameters`` go to every notebook that declares them. When 01 is to train, an earlier
    run of the same experiment is moved aside before the first notebook (`keep_earlier_run`), so that the
    new run's folder holds only what this pipeline writes. Returns the run directories.
    """
    root = Path(project).resolve() if project else repo_root()
    run_dirs = []
    for params_file in params_files:
        values = {"params_file": params_file, "overrides": list(overrides), "output_dir": output_root or "",
                  "data_root": data_root or "", **(parameters or {})}
        experiment = _project_experiment(root, params_file, overrides, values["output_dir"], values["data_root"])
        run_dir = (root / experiment.run_dir).resolve()
        resume = root / experiment.train.resume if experiment.train.resume else None
        if "01" in notebooks and (line := keep_earlier_run(run_dir, resume)):
            print(f"[{experiment.name}] {line}", flush=True)
        for notebook in notebooks:
            started = time.perf_counter()
            print(f"[{experiment.name}] {NOTEBOOKS[notebook]} ...", flush=True)
            execute(notebook, run_dir / "notebooks" / NOTEBOOKS[notebook], values, root)
            print(f"[{experiment.name}] {NOTEBOOKS[notebook]} done in {time.perf_counter() - started:.0f} s", flush=True)
        run_dirs.append(run_dir)
    return run_dirs


def run_compare(project: str | Path | None = None, runs: str = "outputs/*", export_dir: str = COMPARE_DIR) -> Path:
    """Execute 05_compare_runs once over the runs matching ``runs`` (relative to the project); its executed
    copy, table and plots go to ``export_dir``. Returns the executed notebook."""
    root = Path(project).resolve() if project else repo_root()
    started = time.perf_counter()
    print(f"[compare] {NOTEBOOKS['05']} over {runs} ...", flush=True)
    path = execute("05", root / export_dir / "notebooks" / NOTEBOOKS["05"], {"runs": runs, "export_dir": export_dir}, root)
    print(f"[compare] {NOTEBOOKS['05']} done in {time.perf_counter() - started:.0f} s: {root / export_dir}", flush=True)
    return path


def sweep(params_file: str, sweeps: Sequence[str] | Sequence[tuple[str, Sequence[str]]] = (), seeds: int = 1,
          notebooks: Sequence[str] = ("00", "01", "02"), project: str | Path | None = None,
          overrides: Sequence[str] = (), parameters: dict[str, Any] | None = None, nproc_per_node: int = 1,
          demo: bool = False, output_root: str | None = None, data_root: str | None = None,
          log: Any = print) -> list[SweepRun]:
    """Run ``notebooks`` for every grid point of ``sweeps`` (``"key=V1,V2"`` texts or (key, values) pairs)
    and ``seeds``; returns one SweepRun per point. Finished points (`is_finished`) are skipped; a failing
    point is recorded and the next one starts. ``demo`` applies the demo schedule of the params' task
    (`DEMO_OVERRIDES` and `DEMO_SCHEDULES`) before ``overrides``; ``nproc_per_node`` goes to 01.
    Every point is checked (its params load) before the first one runs."""
    root = Path(project).resolve() if project else repo_root()
    pairs = [parse_sweep(s) if isinstance(s, str) else (s[0], [str(v) for v in s[1]]) for s in sweeps]
    base = _project_experiment(root, params_file, overrides, output_root or "", data_root or "")
    schedule: list[str] = []
    values = {**(parameters or {})}
    if demo:
        schedule = [*DEMO_OVERRIDES, *DEMO_SCHEDULES.get(base.model.task, DEMO_SCHEDULES["box"])]
        values = {**DEMO_PARAMETERS, **values}
    if nproc_per_node != 1:
        values["nproc_per_node"] = nproc_per_node
    runs, plans = [], []
    for point in grid(pairs, seeds, base.train.seed):
        name = run_name(base.name, point)
        everything = [*schedule, *overrides, *point, f"name={name}"]
        try:
            experiment = _project_experiment(root, params_file, everything, output_root or "", data_root or "")
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"grid point {' '.join(point)} of {params_file}: {error}") from None
        runs.append(SweepRun(name, point, (root / experiment.run_dir).resolve()))
        plans.append((everything, experiment))
    log(f"sweep of {params_file}: {len(runs)} runs x notebooks {','.join(notebooks)} in {root / base.output_dir}", flush=True)
    for index, (run, (everything, experiment)) in enumerate(zip(runs, plans), 1):
        prefix = f"[{index}/{len(runs)} {run.name}]"
        done = finished_notebooks(run.run_dir, everything)
        todo = [n for n in notebooks if n not in done]
        if not todo:
            run.status = "skipped"
            log(f"{prefix} finished earlier: skipped ({run.run_dir / MARKER})", flush=True)
            continue
        # A run trained here before goes aside with its marker; a marker left without checkpoints goes: only a
        # complete run keeps one.
        resume = root / experiment.train.resume if experiment.train.resume else None
        if "01" in todo and (line := keep_earlier_run(run.run_dir, resume)):
            log(f"{prefix} {line}", flush=True)
            done = []
        (run.run_dir / MARKER).unlink(missing_ok=True)
        log(f"{prefix} {' '.join(run.swept) or '(no overrides)'}: notebooks {','.join(todo)}", flush=True)
        started = time.perf_counter()
        run.status = "done"
        for notebook in todo:
            try:
                run_pipeline([params_file], (notebook,), root, output_root, data_root, everything, values)
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - a failing run is recorded and the next one starts
                run.status, run.notebook = "failed", NOTEBOOKS.get(notebook, notebook)
                run.cell = getattr(error, "cell", None)
                run.error = str(error) if isinstance(error, NotebookFailed) else \
                    "".join(traceback.format_exception_only(error)).strip()
                log(f"{prefix} FAILED in {run.notebook}" + (f" cell {run.cell}" if run.cell is not None else "")
                    + f": {run.error.splitlines()[0]}", flush=True)
                break
        run.seconds = time.perf_counter() - started
        marker = {"status": run.status, "params_file": params_file, "base_name": base.name, "swept": run.swept,
                  "overrides": everything,
                  "notebooks": [n for n in NOTEBOOKS if n in done or n in todo], "parameters": values,
                  "seconds": round(run.seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "machine": machine(), "config": experiment_to_dict(experiment)}
        if run.status == "failed":
            marker.update(notebook=run.notebook, cell=run.cell, error=run.error)
        write_json_atomic(run.run_dir / MARKER, marker)
        log(f"{prefix} {run.status} in {run.seconds / 60:.1f} min", flush=True)
    return runs


def run_demo(params_files: Sequence[str] = DEMO_PARAMS, notebooks: Sequence[str] = ("00", "01", "02", "03", "04"),
             project: str | Path | None = None, overrides: Sequence[str] = (),
             parameters: dict[str, Any] | None = None) -> list[Path]:
    """`run_pipeline` with the demo schedule of each experiment's task (``DEMO_SCHEDULES``); a mask
    experiment that follows a box one in ``params_files`` fine-tunes that box run's best.pt."""
    run_dirs: list[Path] = []
    box_checkpoint: Path | None = None
    for params_file in params_files:
        root = Path(project).resolve() if project else repo_root()
        task = _project_experiment(root, params_file, [*overrides, "train.finetune_from="]).model.task
        schedule = [*DEMO_OVERRIDES, *DEMO_SCHEDULES.get(task, DEMO_SCHEDULES["box"])]
        if task == "mask" and box_checkpoint is not None:
            if box_checkpoint.is_file():
                schedule.append(f"train.finetune_from={box_checkpoint}")
            else:
                print(f"{box_checkpoint} is missing: the mask starts as its params say", flush=True)
        run_dirs += run_pipeline([params_file], notebooks, project, overrides=[*schedule, *overrides],
                                 parameters={**DEMO_PARAMETERS, **(parameters or {})})
        if task == "box":
            box_checkpoint = run_dirs[-1] / "best.pt"
    return run_dirs


def summary(run_dir: Path) -> str:
    """Where a run's executed notebooks, figures and metrics are."""
    figures = sorted(p.name for p in run_dir.glob("*.png"))
    metrics = run_dir / "metrics.json"
    return "\n".join([f"{run_dir.name}:", f"  notebooks  {run_dir / 'notebooks'}",
                      f"  figures    {run_dir}/{{{', '.join(figures)}}}",
                      f"  metrics    {metrics if metrics.is_file() else '(not evaluated)'}"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seqtr_lib.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="the demo schedule (make demo): "
                        + " ".join(DEMO_OVERRIDES) + "; box " + " ".join(DEMO_SCHEDULES["box"]) + "; mask "
                        + " ".join(DEMO_SCHEDULES["mask"]) + ", fine-tuning the box run; 02 scores the first "
                        f"{DEMO_PARAMETERS['limit']:,} val expressions")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("DEMO_FAST", "") == "1",
                        help=f"tiny data, a few steps, in a throwaway project ({FAST_PROJECT}; default when DEMO_FAST=1)")
    parser.add_argument("--project", default=None,
                        help=f"project folder to run in (default: this repository; {FAST_PROJECT} with --fast)")
    parser.add_argument("--params", nargs="+", default=list(DEMO_PARAMS), help="params files, run in order")
    parser.add_argument("--notebooks", default=None,
                        help="comma-separated notebook numbers (default 00,01,02,03,04,05, with --sweep 00,01,02; "
                        "04 renders the demo screenshot; 05 compares every run of the project, once at the end)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra params override for every notebook (repeatable)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="run every combination of these values (repeatable: a grid), one run folder "
                        "outputs/<name>__KEY=V... each; finished runs are skipped when the grid starts again")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run each grid point with N seeds (train.seed, train.seed + 1, ...)")
    parser.add_argument("--compare-dir", default=COMPARE_DIR, metavar="DIR",
                        help=f"where 05 writes its table and plot (default {COMPARE_DIR}); after a sweep it "
                        "compares the runs of the params' experiment (outputs/<name>__*), else every run")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="processes per node for 01's training cell (above 1 it launches torchrun)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    is_sweep = bool(args.sweep) or args.seeds > 1
    project = args.project
    notebooks = (args.notebooks or ("00,01,02" if is_sweep else "00,01,02,03,04,05")).split(",")
    unknown = [n for n in notebooks if n not in NOTEBOOKS]
    if unknown:
        parser.error(f"--notebooks {','.join(unknown)}: unknown, choose among {','.join(NOTEBOOKS)}")
    compare, notebooks = "05" in notebooks, [n for n in notebooks if n != "05"]
    if args.fast:
        project = make_project(project or repo_root() / FAST_PROJECT, args.params)
        print(f"fast project in {project}: its own notebooks/, params/, data/ and outputs/", flush=True)
    if is_sweep:
        runs = []
        try:
            for params_file in args.params:
                runs += sweep(params_file, args.sweep, seeds=args.seeds, notebooks=notebooks, project=project,
                              overrides=args.overrides, demo=args.demo and not args.fast,
                              nproc_per_node=args.nproc_per_node)
        except (ConfigError, ValueError) as error:
            raise SystemExit(f"error: {error}") from None
        if compare and runs:
            root = Path(project).resolve() if project else repo_root()
            families = sorted({os.path.relpath(run.run_dir.parent / parse_run_name(run.name)[0], root) for run in runs})
            pattern = families[0] + "__*" if len(families) == 1 else "outputs/*"
            try:
                run_compare(project, pattern, args.compare_dir)
            except NotebookFailed as error:
                print(f"error: {error}", flush=True)
        print(f"\nthe sweep took {(time.perf_counter() - started) / 60:.1f} min\n{sweep_table(runs)}")
        if failed := [run for run in runs if run.status == "failed"]:
            raise SystemExit(f"{len(failed)} of {len(runs)} runs failed; each folder's sweep.json and executed "
                             "notebook say why")
        return
    parameters = {"nproc_per_node": args.nproc_per_node} if args.nproc_per_node != 1 else None
    try:
        if args.demo and not args.fast:
            run_dirs = run_demo(args.params, notebooks, project, args.overrides, parameters)
        else:
            run_dirs = run_pipeline(args.params, notebooks, project, overrides=args.overrides, parameters=parameters)
        if compare:
            run_compare(project, export_dir=args.compare_dir)
    except NotebookFailed as error:
        raise SystemExit(f"error: {error}") from None
    print(f"\nall notebooks ran in {(time.perf_counter() - started) / 60:.1f} min")
    for run_dir in run_dirs:
        print(summary(run_dir))


if __name__ == "__main__":
    main()
