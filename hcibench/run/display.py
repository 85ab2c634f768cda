"""``hcibench run`` on a terminal: a rich progress bar over the grid with ETA, and a summary."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hcibench.run.accelerator import resolve_device
from hcibench.run.progress import Progress as SilentProgress
from hcibench.run.progress import RichProgress
from hcibench.run.runner import RunSpec, count_cells, execute, open_run_folder, prepare


def progress_bars(console: Console) -> Progress:
    """A rich display for :class:`RichProgress`: one bar per loop, with counts, time and ETA."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=False)


def run_with_progress(spec: RunSpec, console: Console) -> None:
    run = prepare(spec)
    resolve_device(run.config.get("device"))  # a GPU asked for but absent: before any writing
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 alone reports
        execute(run, SilentProgress(), None)
        return
    open_run_folder(run)  # an unwritable folder is reported before anything is printed
    total, finished = count_cells(run)
    console.print(
        f"[bold]hcibench[/] {len(run.grid.methods)} method(s) × {len(run.grid.sources)} source(s)"
        f" × {len(run.grid.targets)} target(s) × {len(run.grid.seeds)} seed(s) = {total} cells"
        f" on '{spec.dataset}' ({spec.preset} preset); {finished} already done -> {run.out}"
    )
    with progress_bars(console) as display:
        grid_task = display.add_task("grid cells", total=total, completed=finished)

        def on_cell(record):
            display.advance(grid_task)
            metrics = record["metrics"]
            display.console.print(
                f"{record['method']:<11} {record['source']:>4} -> {record['target']:<4} "
                f"seed {record['seed']}: accuracy {metrics.get('accuracy', float('nan')):.3f}"
                f"  f1 {metrics.get('f1', float('nan')):.3f}"
            )

        result = execute(run, RichProgress(display, run.out / "run.log"), on_cell)
    console.print(
        f"{result['computed_cells']} cell(s) computed, {finished} reused. Report: hcibench report {run.out}"
    )
