"""``detrkit compare``: ablation table of run folders (Markdown and CSV).

Thin front over :func:`detrkit.runs.compare.compare_runs`: runs differing only in seed are
grouped into arms (mean ± std); deltas against the first arm say whether they exceed the seed
spread.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to the root app."""
    app.command("compare")(compare_cmd)


def compare_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders, or predictions of any tool with --gt; the first one is the baseline."
    ),
    gt: Path | None = typer.Option(
        None,
        "--gt",
        help="COCO GT to score the arguments that are predictions (YOLO save_txt folder, "
        "Ultralytics/Roboflow/COCO JSON), not run folders.",
    ),
    pred_format: str = typer.Option(
        "auto", "--pred-format", help="auto, coco, yolo-txt, ultralytics, roboflow."
    ),
    rare: list[str] | None = typer.Option(
        None, "--rare", help="A rare class name (repeat); default: the runs' own record."
    ),
    per_class: bool = typer.Option(True, "--per-class/--no-per-class", help="One row per class AP."),
    out: Path | None = typer.Option(None, "--out", help="Write OUT.md and OUT.csv (e.g. --out ablation)."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV instead of Markdown."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (arms and rows) instead of Markdown."),
) -> None:
    """Compare runs: overall metrics, per-class AP, rare-class mAP, deltas and seed spread."""
    from detrkit.runs.compare import compare_runs, load_comparable_runs
    from detrkit.runs.folder import RunFolder
    from detrkit.runs.predictions import predictions_run

    def load(p: Path) -> RunFolder:
        if gt is not None and not (p / "config.yaml").is_file():
            return predictions_run(p, gt, fmt=pred_format)
        return RunFolder.load(p)

    folders, warnings = load_comparable_runs(runs, load=load)
    for line in warnings:
        typer.secho(f"warning: {line}", err=True, fg=typer.colors.YELLOW)
    comparison = compare_runs(folders, rare=rare or None, per_class=per_class)
    markdown, table_csv = comparison.to_markdown(), comparison.to_csv()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(markdown)
        out.with_suffix(".csv").write_text(table_csv)
    if as_json:
        arms = [
            {"label": a.label, "runs": [str(r.path) for r in a.runs], "changes": a.changes}
            for a in comparison.arms
        ]
        rows = [
            {
                "metric": name,
                "cells": [
                    {
                        "mean": c.mean,
                        "std": c.std,
                        "n": len(c.values),
                        "delta": c.delta,
                        "rel": c.rel,
                        "test": c.test,
                        "p_value": c.p_value,
                        "larger_than_seed_spread": c.significant,
                    }
                    for c in cells
                ],
            }
            for name, cells in comparison.rows
        ]
        typer.echo(json.dumps({"arms": arms, "rows": rows, "rare": comparison.rare}, indent=2, default=str))
        return
    typer.echo(table_csv if csv_out else markdown, nl=False)
    if out is not None:
        typer.echo(f"written: {out.with_suffix('.md')} {out.with_suffix('.csv')}", err=True)
