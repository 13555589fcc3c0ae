"""``detrkit predict``: run a trained detector on images, write COCO results and drawn images.

Thin front over :func:`detrkit.workflows.predict.predict_to_folder`: writes
``OUT/predictions.json`` (COCO results format), ``OUT/images/<name>.jpg`` (predictions in red,
ground truth in green with ``--ann``) and, without ``--ann``, ``OUT/image_ids.json`` mapping the
sequential image ids to the files. ``--backend onnxruntime`` runs the run's ONNX export instead
of PyTorch (same preprocessing and postprocessing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from detrkit.cli.tables import titled_table


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to the root app."""
    app.command("predict")(predict_cmd)


def predict_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder (or a checkpoint .pt file)."),
    source: str = typer.Option(..., "--source", help="Image file, folder or glob pattern ('imgs/*.jpg')."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Minimum score kept."),
    ann: Path | None = typer.Option(None, "--ann", help="COCO GT: image ids from it, GT drawn in green."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last or epoch_N."),
    device: str | None = typer.Option(
        None,
        "--device",
        help="cpu, cuda, cuda:1 ... (default: cuda if available; cpu for --backend onnxruntime).",
    ),
    backend: str = typer.Option(
        "torch",
        "--backend",
        help="torch, or onnxruntime: the run's ONNX export (RUN/export/<checkpoint>.onnx, made on first "
        "use, refreshed when the checkpoint is newer; needs pip install 'detrkit[export]').",
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="fp32, bf16 (autocast: ~3x faster on CPUs with AMX and on recent GPUs; scores differ "
        "slightly) or auto (bf16 where it is fast). The torch backend only.",
    ),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the network: faster per image (bf16 +37% on a CPU) after ~35 s of "
        "compiling per input shape; for many images of one size.",
    ),
    draw: bool = typer.Option(True, "--draw/--no-draw", help="Write drawn images."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when an image could not be read."),
) -> None:
    """Detect objects in SOURCE with the model of RUN; write predictions.json and drawn images."""
    from rich.progress import Progress

    from detrkit.workflows.predict import predict_to_folder

    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("predicting", total=None)
        summary = predict_to_folder(
            run,
            source,
            out,
            threshold=threshold,
            ann=ann,
            batch_size=batch_size,
            checkpoint=checkpoint,
            device=device,
            backend=backend,
            precision=precision,
            compile=compile,
            draw=draw,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_skip=lambda e: err.print(
                f"warning: skipping {e}", highlight=False, markup=False, soft_wrap=True
            ),
        )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, out, draw=draw and summary["images"] > 0, threshold=threshold)
    if summary["skipped"]:
        total = summary["images"] + summary["skipped"]
        err.print(f"{summary['images']} of {total} images predicted, {summary['skipped']} unreadable skipped",
                  highlight=False)  # fmt: skip
        if strict:
            raise typer.Exit(1)


def _print_summary(summary: dict[str, Any], out: Path, *, draw: bool, threshold: float) -> None:
    console = Console()
    table = titled_table(
        f"predict: {summary['images']} images, {summary['detections']} detections (score >= {threshold})"
    )
    table.add_column("class")
    table.add_column("detections", justify="right")
    for name, n in summary["per_class"].items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(
        f"wrote {out / 'predictions.json'}" + (f" and {out / 'images'}/" if draw else ""), highlight=False
    )
