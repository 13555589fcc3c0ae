"""``detrkit runs``: the run folders under a root with their state (running, finished, failed,
interrupted), epoch, best metric and last update."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

from detrkit.cli.tables import titled_table

STYLE = {"running": "cyan", "finished": "green", "failed": "red", "interrupted": "yellow"}


def runs(
    root: Path = typer.Argument(
        None, help="folder holding run folders, or one run folder (default: runs, train's output.root)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the runs as a JSON list"),
) -> None:
    """List training runs: state, epoch/epochs, best metric and when each was last updated.

    running = its process is alive; finished = final metrics written; failed = an error recorded; interrupted = none of these (killed, Ctrl-C). Detached runs (`detrkit train --detach`) show their PID and log.
    """
    from detrkit.config.schema import OutputConfig
    from detrkit.errors import CheckpointError
    from detrkit.runs.status import list_runs

    root = root if root is not None else Path(OutputConfig().root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such folder of runs")
    states = list_runs(root)
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in states], indent=2))
        return
    console = Console()
    if not states:
        console.print(f"no runs under {root}", highlight=False)
        return
    table = titled_table(f"runs under {root}")
    for col in ("run", "status", "epoch", "best", "updated", "pid / error"):
        table.add_column(col, justify="right" if col in ("epoch", "best") else "left")
    for s in states:
        epoch = f"{s.epoch if s.epoch is not None else '-'}/{s.epochs if s.epochs is not None else '-'}"
        best = f"{s.best_metric} {s.best:.4f}" if s.best is not None else "-"
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.updated)) if s.updated else "-"
        extra = s.error or (f"PID {s.pid}" if s.status == "running" and s.pid else "")
        color = STYLE.get(s.status, "white")
        table.add_row(s.run, f"[{color}]{s.status}[/{color}]", epoch, best, updated, extra)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``runs`` to the ``detrkit`` app."""
    app.command("runs")(runs)
