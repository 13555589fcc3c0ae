"""``detrkit sweep``: thin front over :func:`detrkit.workflows.sweep.run_sweep`."""

from __future__ import annotations

from pathlib import Path

import typer


def sweep_cmd(
    overrides: list[str] = typer.Argument(..., help="key=v1,v2,... to search over (key=value: fixed)"),
    config: str = typer.Option(..., "--config", "-c", help="YAML config or packaged name"),
    seeds: int = typer.Option(
        1, "--seeds", min=1, help="runs per trial (seeds 0..N-1); the value is their mean"
    ),
    sampler: str = typer.Option("grid", "--sampler", help="grid, random or tpe"),
    trials: int = typer.Option(
        None, "--trials", min=1, help="trials of random/tpe (default: the grid's size)"
    ),
    prune: bool = typer.Option(False, "--prune", help="stop unpromising trials early (median pruner)"),
    out: Path = typer.Option(None, "--out", help="sweep folder (default runs/sweep_<config>)"),
) -> None:
    """Hyperparameter search (Optuna): every trial a run folder, resumable, a table sorted by the metric.

    Example: `detrkit sweep --config detr_r50_coco10 optim.lr=1e-5,1e-4,2e-4 optim.weight_decay=1e-4,1e-3 --seeds 2`
    """
    from detrkit.workflows.sweep import run_sweep

    folder = out or Path("runs") / f"sweep_{Path(config).stem}"
    rows = run_sweep(
        config=config, overrides=list(overrides), out=folder, seeds=seeds, sampler=sampler, trials=trials,
        prune=prune, log=typer.echo,
    )  # fmt: skip
    typer.echo((folder / "sweep.md").read_text())
    typer.echo(f"{len(rows)} trials in {folder} (plot: {folder / 'metric_vs_params.png'})")


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the ``detrkit`` app."""
    app.command("sweep")(sweep_cmd)
