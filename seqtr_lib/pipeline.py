"""Run the numbered notebooks headless with papermill: ``make demo`` and the notebook tests.

    python -m seqtr_lib.pipeline            # 00 -> 04 for the box, then the mask synthetic experiment
    python -m seqtr_lib.pipeline --fast     # tiny data and a few steps, for a quick look (also DEMO_FAST=1)

Executed copies go to ``<output_root>/<experiment>/notebooks/`` next to the figures and metrics the
notebooks write. A failing cell stops the run with `NotebookFailed`, naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqtr_lib.notebook import load_experiment, repo_root

NOTEBOOKS = {
    "00": "00_prepare_data.ipynb",
    "01": "01_train.ipynb",
    "02": "02_evaluate.ipynb",
    "03": "03_visualize_sequences.ipynb",
    "04": "04_demo.ipynb",
}
DEMO_PARAMS = ("params/synthetic_det.yaml", "params/synthetic_mask.yaml")

# make demo must finish in about 20 minutes on 2 CPU cores for both experiments: a smaller synthetic set
# and a schedule of its own. The params files train on all 2000 images for 4 epochs. Loading in
# the kernel's own process (num_workers 0) beats starting loader workers for every epoch on 2 cores.
DEMO_OVERRIDES = ("data.synthetic_images=600", "data.synthetic_image_size=128", "data.image_size=128",
                  "data.num_workers=0", "train.epochs=8", "train.warmup_epochs=1", "train.decay_epochs=[6]",
                  "train.log_every=10")
FAST_OVERRIDES = ("data.synthetic_images=60", "data.synthetic_image_size=128", "data.image_size=128",
                  "data.num_workers=0", "train.epochs=2", "train.max_steps_per_epoch=4", "train.log_every=1")
DEMO_DATA_ROOT = {False: "data/demo", True: "data/demo_fast"}


class NotebookFailed(RuntimeError):
    """A cell of a notebook raised; the message names the notebook, the cell and the error."""


def execute(notebook: str, output_path: Path, parameters: dict[str, Any]) -> Path:
    """Execute one notebook of notebooks/ with papermill (kernel ``python3``, cwd notebooks/).

    Only the parameters the notebook declares are injected. Raises NotebookFailed naming the cell.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = repo_root() / "notebooks"
    source = folder / NOTEBOOKS.get(notebook, notebook)
    declared = papermill.inspect_notebook(str(source))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(source), str(output_path), kernel_name="python3", cwd=str(folder),
                                   parameters={k: v for k, v in parameters.items() if k in declared},
                                   progress_bar=False)
    except PapermillExecutionError as error:
        first_line = next((line for line in error.source.splitlines() if line.strip()), "")
        raise NotebookFailed(
            f"{source.name} failed in cell {error.cell_index} (execution count {error.exec_count}, starting "
            f"{first_line!r}): {error.ename}: {error.evalue}\nthe executed notebook with the full traceback is "
            f"{output_path}") from None
    return output_path


def run_pipeline(params_files: Sequence[str] = DEMO_PARAMS, notebooks: Sequence[str] = ("00", "01", "02", "03"),
                 fast: bool = False, output_root: str = "outputs", data_root: str | None = None,
                 overrides: Sequence[str] = (), parameters: dict[str, Any] | None = None) -> list[Path]:
    """Run ``notebooks`` in order for each params file; return the run directories.

    ``fast`` swaps the demo schedule for a few steps on a tiny set (its own data root, experiment names
    suffixed ``_fast``). ``overrides`` come after the demo's; ``parameters`` go to every notebook that
    declares them. Paths are relative to the repository root.
    """
    root = repo_root()
    demo = [*(FAST_OVERRIDES if fast else DEMO_OVERRIDES)]
    data_root = str(root / (data_root or DEMO_DATA_ROOT[fast]))
    output_dir = str(root / output_root)
    run_dirs = []
    for params_file in params_files:
        params_path = str(root / params_file)
        name = load_experiment(params_path).name + ("_fast" if fast else "")
        every = [*demo, f"name={name}", *overrides]
        experiment = load_experiment(params_path, every, output_dir, data_root)
        values = {"params_file": params_path, "overrides": every, "output_dir": output_dir, "data_root": data_root,
                  **(parameters or {})}
        for notebook in notebooks:
            started = time.perf_counter()
            target = experiment.run_dir / "notebooks" / NOTEBOOKS[notebook]
            print(f"[{experiment.name}] {NOTEBOOKS[notebook]} ...", flush=True)
            execute(notebook, target, values)
            print(f"[{experiment.name}] {NOTEBOOKS[notebook]} done in {time.perf_counter() - started:.0f} s", flush=True)
        run_dirs.append(experiment.run_dir)
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
    parser.add_argument("--fast", action="store_true", default=os.environ.get("DEMO_FAST", "") == "1",
                        help="tiny data, a few steps (default when DEMO_FAST=1)")
    parser.add_argument("--params", nargs="+", default=list(DEMO_PARAMS), help="params files, run in order")
    parser.add_argument("--notebooks", default="00,01,02,03,04",
                        help="comma-separated notebook numbers (04 renders the demo screenshot)")
    parser.add_argument("--output-root", default="outputs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra params override for every notebook (repeatable)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        run_dirs = run_pipeline(args.params, args.notebooks.split(","), args.fast, args.output_root,
                                overrides=args.overrides)
    except NotebookFailed as error:
        raise SystemExit(f"error: {error}") from None
    print(f"\nall notebooks ran in {(time.perf_counter() - started) / 60:.1f} min")
    for run_dir in run_dirs:
        print(summary(run_dir))


if __name__ == "__main__":
    main()
