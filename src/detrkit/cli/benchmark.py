"""``detrkit benchmark``: thin front over :func:`detrkit.workflows.benchmark.run_benchmark`."""

from __future__ import annotations

from pathlib import Path

import typer

from detrkit.errors import ConfigError


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"detrkit benchmark {option} {v!r}: expected NAME=PATH")
        out[name] = path
    return out


def benchmark_cmd(
    overrides: list[str] = typer.Argument(None, help="key=value overrides for every model trained here"),
    data: Path = typer.Option(
        None, "--data", help="dataset to train --models on (as `detrkit train --data`)"
    ),
    images: Path = typer.Option(None, "--images", help="image folder of a plain COCO --data file"),
    models: str = typer.Option("", "--models", help="comma-separated registered models to train, e.g. a,b,c"),
    run: list[str] = typer.Option(None, "--run", help="NAME=RUN_DIR: a trained run folder (repeat)"),
    pred: list[str] = typer.Option(
        None, "--pred", help="NAME=preds.json: COCO results of another tool (repeat)"
    ),
    epochs: int = typer.Option(None, "--epochs", min=1, help="training epochs of --models"),
    val_ann: Path = typer.Option(None, "--val-ann", help="validation annotations (default: those of --data)"),
    val_images: Path = typer.Option(None, "--val-images", help="validation image folder"),
    out: Path = typer.Option(Path("runs/benchmark"), "--out", help="output folder"),
    latency_images: int = typer.Option(10, "--latency-images", min=1, help="images timed per model"),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: the best present)"),
) -> None:
    """Train and/or collect detectors, evaluate all on one val set, write one comparison table.

    Example: `detrkit benchmark --data datasets/car-damage --models co-deformable-detr-r50,fasterrcnn-vgg16
    --pred yolo=yolo_preds.json --epochs 12` -> OUT/benchmark.{md,csv,json}, ap_vs_latency.png, index.html.
    """
    from detrkit.workflows.benchmark import run_benchmark

    rows = run_benchmark(
        out=out, models=[m for m in models.split(",") if m], data=data, images=images, epochs=epochs,
        runs=_pairs(run, "--run"), predictions=_pairs(pred, "--pred"), val_ann=val_ann, val_images=val_images,
        overrides=list(overrides or []), latency_images=latency_images, device=device, log=typer.echo,
    )  # fmt: skip
    typer.echo((out / "benchmark.md").read_text())
    typer.echo(f"report: {out / 'index.html'} ({len(rows)} entries)")


def register(app: typer.Typer) -> None:
    """Add ``benchmark`` to the ``detrkit`` app."""
    app.command("benchmark")(benchmark_cmd)
