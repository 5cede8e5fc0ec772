"""What a notebook's kernel needs: its project, its experiment, training launched from a cell, figures.

Paths in params files and notebook parameters are relative to the repository root, as on the command
line; each notebook starts with ``os.chdir(repo_root())`` so that JupyterLab (cwd ``notebooks/``) and
papermill (any cwd) agree.

- the project and experiment: `repo_root`, `load_experiment` (params file + overrides + the notebooks'
  output_dir/data_root), `parameter_list` (papermill passes lists as text), `default_checkpoint`,
  `optional_grounder`;
- training from a cell: `launch_torchrun` (streams the log, a failing rank fails the cell), `live_curves`
  (the Trainer itself moves an earlier run aside and starts a new log);
- figures: `save_and_show` writes a matplotlib Figure as PNG and displays that PNG in the cell.

What the cells look at lives beside this module: `reports` (a run's log, metrics and predictions),
`samples` (dataset samples, targets, galleries), `dataset_check` (notebook 00), `viz` (drawing).
"""

from __future__ import annotations

import collections
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqtr_lib.checkpoint import resolve_checkpoint
from seqtr_lib.config import Experiment, load_params

if TYPE_CHECKING:
    from seqtr_lib.predict import Grounder


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
                    data_root: str = "", start_files: bool = True) -> Experiment:
    """The Experiment of a params file with the notebook's overrides applied (validated, paths as written).
    ``start_files=False`` (notebooks that read a checkpoint): the backbone's start weights and word vectors
    need not exist (`seqtr_lib.config.load_params`)."""
    return load_params(params_file, notebook_overrides(overrides, output_dir, data_root), start_files)


def default_checkpoint(experiment: Experiment, checkpoint: str = "") -> Path:
    """``checkpoint`` when given, else the run's best.pt, else the released weights; prints which, and its date."""
    path, which = resolve_checkpoint(experiment.run_dir, experiment.name, checkpoint)
    print(which)
    return path


def optional_grounder(experiment: Experiment, checkpoint: str = "") -> Grounder | None:
    """A Grounder as `default_checkpoint` picks it, or None with a note when there is no checkpoint."""
    from seqtr_lib.predict import Grounder

    try:
        path = default_checkpoint(experiment, checkpoint)
    except FileNotFoundError as error:
        print(f"{error}: showing targets only")
        return None
    return Grounder.from_checkpoint(path)


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


@contextmanager
def live_curves(run_dir: str | Path, task: str, every_s: float = 20.0, generalised: bool = False) -> Iterator[None]:
    """Redraw the training curves in the cell every ``every_s`` seconds while the body trains, and at the end;
    ``generalised``: the run's answers hold zero or more objects (its validation has other metrics)."""
    from IPython.display import Image, Markdown, display

    from seqtr_lib.reports import read_log
    from seqtr_lib.metrics import headline_metrics
    from seqtr_lib.viz import figure_png, training_curves

    handle = display(Markdown("*training curves appear after the first logged steps*"), display_id=True)
    stop = threading.Event()

    def refresh() -> None:
        try:
            records = read_log(run_dir)
        except FileNotFoundError:
            return
        if records:
            handle.update(Image(data=figure_png(training_curves(records, headline_metrics(task, generalised)))))

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
