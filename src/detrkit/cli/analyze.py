"""``detrkit analyze``: error analysis and a self-contained HTML report.

Thin front over :func:`detrkit.workflows.analyze.analyze_run` (from a run folder, or from any COCO
ground truth plus predictions file): writes ``report.html``, ``errors.json`` and, when it had to
predict, ``predictions.json`` into ``--out`` (default: the run folder), then prints the TIDE table.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to the root app."""
    app.command("analyze")(analyze_cmd)


def analyze_cmd(
    run: Path | None = typer.Option(
        None, "--run", help="Run folder (config.yaml, checkpoints/, metrics.csv)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="COCO ground truth (default: the run's data.val_ann)."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Image folder for galleries (default: data.val_images)."
    ),
    pred: Path | None = typer.Option(
        None,
        "--pred",
        help="COCO results JSON, YOLO save_txt folder, Ultralytics or Roboflow JSON "
        "(default: predict with the run's best checkpoint).",
    ),
    pred_format: str = typer.Option(
        "auto", "--pred-format", help="auto, coco, yolo-txt, ultralytics or roboflow."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: the run folder, else next to --pred)."
    ),
    iou: float = typer.Option(0.5, "--iou", min=0.05, max=1.0, help="Foreground IoU of the error analysis."),
    bg: float = typer.Option(0.1, "--bg", min=0.0, max=1.0, help="Background IoU of the error analysis."),
    conf: float | None = typer.Option(
        None,
        "--conf",
        min=0.0,
        max=1.0,
        help="Confidence for the confusion matrix and galleries (default: best F1).",
    ),
    gallery: int = typer.Option(3, "--gallery", min=0, help="Gallery tiles per class and kind (0: none)."),
    device: str | None = typer.Option(
        None, "--device", help="Device for predicting (default: cuda if available)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass when predicting."),
    as_json: bool = typer.Option(False, "--json", help="Print the errors.json summary instead of tables."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when a val image cannot be read."),
) -> None:
    """Error analysis (TIDE), PR/F1 curves, confusion matrix, galleries -> report.html + errors.json."""
    from rich.progress import Progress

    from detrkit.workflows.analyze import analyze_run, print_analysis

    console = Console(stderr=as_json)
    bar = Progress(console=console, transient=True)
    task = bar.add_task("predicting", total=None)

    def progress(done: int, total: int) -> None:  # a live bar while predicting, gone afterwards
        if done <= min(batch_size, total):
            bar.start()
        bar.update(task, completed=done, total=total, description=f"predicting {total} images")
        if done >= total:
            bar.stop()

    outcome = analyze_run(
        run=run,
        data=data,
        images=images,
        pred=pred,
        out=out,
        iou=iou,
        bg=bg,
        conf=conf,
        gallery=gallery,
        device=device,
        batch_size=batch_size,
        pred_format=pred_format,
        status=console.status,
        progress=progress,
        say=lambda message: console.print(message, highlight=False, markup=False, soft_wrap=True),
    )
    if as_json:
        result = outcome.result
        typer.echo(
            json.dumps(
                {
                    "report": str(outcome.report),
                    "errors_json": str(outcome.errors_json),
                    "tide": outcome.summary["tide"] | {"per_class": None},
                    "coco": None if result.coco is None else result.coco.stats,
                },
                indent=2,
            )
        )
    else:
        print_analysis(outcome, console)
    if strict and outcome.skipped:
        raise typer.Exit(1)
