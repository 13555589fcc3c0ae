"""``detrkit train`` and ``detrkit val``: thin wrappers over :mod:`detrkit.engine`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from detrkit.cli.tables import titled_table


def _print_per_class(console: Console, per_class: list[dict[str, Any]] | None, title: str) -> None:
    if not per_class:
        return
    table = titled_table(title)
    for col in ("class", "gt", "pred", "AP", "AP50", "AP75", "AR100"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in per_class:
        fmt = lambda v: "-" if v is None or v < 0 else f"{v:.3f}"  # noqa: E731
        table.add_row(
            c["name"],
            str(c["num_gt"]),
            str(c["num_pred"]),
            fmt(c["AP"]),
            fmt(c["AP50"]),
            fmt(c["AP75"]),
            fmt(c["AR100"]),
        )
    console.print(table)


def train(
    overrides: list[str] = typer.Argument(
        None, help="key=value overrides with dotted keys, e.g. optim.lr=1e-4 train.epochs=5"
    ),
    config: str = typer.Option(
        None, "--config", "-c", help="YAML config file, or a packaged name (demo, detr_r50_coco10, ...)"
    ),
    resume: Path = typer.Option(
        None, "--resume", help="continue the run in this folder from checkpoints/last.pt"
    ),
    fallback: bool = typer.Option(
        False,
        "--fallback",
        help="with --resume: an unreadable last.pt falls back to the newest intact checkpoint",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="stop after the preflight (one step, one val batch, checkpoint round trip)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the final summary as JSON on stdout"),
    data: Path = typer.Option(
        None,
        "--data",
        help="dataset folder or file: COCO (with --images), Roboflow export, YOLO data.yaml, VOC",
    ),
    images: Path = typer.Option(None, "--images", help="image folder of a plain COCO --data file"),
    model: str = typer.Option(None, "--model", "-m", help="registered model (see `detrkit models`)"),
    epochs: int = typer.Option(None, "--epochs", min=1, help="training epochs (train.epochs)"),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: the best present)"),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="train in a detached background process (output in RUN/train.log); "
        "prints the run folder and PID and returns; see `detrkit runs`",
    ),
) -> None:
    """Train a detector: preflight, then epochs with validation, checkpoints and logs in a run folder.

    One line, no YAML: `detrkit train --data datasets/car-damage --model deformable-detr-r50 --epochs 12`
    (layout and classes from the data, the rest from the model's packaged recipe). Later wins:
    --config, then --data/--model/--epochs/--device, then key=value.

    --detach runs the same training in the background, as with nohup (`detrkit runs` lists runs).
    """
    from detrkit.engine.run import summary_json, train_from_config
    from detrkit.errors import ConfigError

    quick = any(v is not None for v in (data, model, epochs, device))
    if config is None and resume is None and not quick:
        raise ConfigError(
            "detrkit train: give --data PATH --model NAME, --config FILE (or a packaged name such as demo) "
            "or --resume RUN_DIR"
        )
    if resume is not None and (data is not None or model is not None):
        raise ConfigError("detrkit train --resume: the run's data and model are fixed; drop --data/--model")
    if images is not None and data is None:
        raise ConfigError("detrkit train: --images goes with --data FILE.json")
    if detach and dry_run:
        raise ConfigError("detrkit train: --detach with --dry-run; run the dry run in the foreground")
    console = Console(stderr=as_json)
    train_args = _train_args(
        overrides, config=config, resume=resume, fallback=fallback, as_json=as_json, data=data,
        images=images, model=model, epochs=epochs, device=device,
    )  # fmt: skip
    source: Any = config
    if quick and resume is None:
        from detrkit.engine.quickstart import quick_config

        qs = quick_config(
            config=config, overrides=list(overrides or []), data=data, images=images, model=model,
            epochs=epochs, device=device,
        )  # fmt: skip
        for line in qs.lines:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        source, overrides = qs.config, []
    elif resume is not None:
        extra = [f"train.epochs={epochs}"] if epochs is not None else []
        extra += [f"train.device={device}"] if device is not None else []
        overrides = [*extra, *(overrides or [])]
    if detach:
        from detrkit.runs.detach import detach_training

        started = detach_training(source, list(overrides or []), resume=resume, train_args=train_args)
        if as_json:
            typer.echo(json.dumps(started, indent=2))
            return
        console.print(f"run folder: {started['run_dir']}", highlight=False, soft_wrap=True)
        console.print(f"PID: {started['pid']}", highlight=False)
        console.print(
            f"log: {started['log']}  (follow with: tail -f {started['log']})", highlight=False, soft_wrap=True
        )
        console.print("status: detrkit runs", highlight=False)
        return
    from detrkit.runs.detach import detached_child

    with detached_child():  # in a detached child: a failure before the trainer started is recorded too
        summary = train_from_config(
            source, list(overrides or []), resume=resume, fallback=fallback, dry_run=dry_run, console=console
        )
    if as_json:
        typer.echo(summary_json({k: v for k, v in summary.items()}))
        return
    if dry_run:
        console.print(
            f"dry run ok, nothing kept (a run would write {summary['run_dir']}; preflight: {summary['preflight']})"
        )
        return
    _print_per_class(console, summary.get("per_class"), "per-class metrics (last validation)")
    console.print(f"run folder: {summary['run_dir']}")


def _train_args(overrides: list[str] | None, **options: Any) -> list[str]:
    """The ``detrkit train`` arguments that repeat this call (for the detached child)."""
    flags = {"config": "--config", "resume": "--resume", "data": "--data", "images": "--images",
             "model": "--model", "epochs": "--epochs", "device": "--device"}  # fmt: skip
    args = [a for key, flag in flags.items() if options[key] is not None for a in (flag, str(options[key]))]
    args += ["--fallback"] if options["fallback"] else []
    args += ["--json"] if options["as_json"] else []
    return [*args, *(overrides or [])]


def val(
    run: Path = typer.Option(..., "--run", help="run folder"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last, epoch_N or a checkpoint file"),
    data: Path = typer.Option(None, "--data", help="COCO annotation file (default: the run's val set)"),
    images: Path = typer.Option(None, "--images", help="image folder of --data"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="images per batch"),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: GPU when present)"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
) -> None:
    """Re-evaluate a run's checkpoint with COCO metrics (faster-coco-eval), overall and per class."""
    from detrkit.engine.evaluate_run import evaluate_run

    result = evaluate_run(
        run, checkpoint=checkpoint, ann=data, images=images, batch_size=batch_size, device=device
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    console = Console()
    m = result["metrics"]
    table = titled_table(
        f"{result['checkpoint']} on {result['ann']} ({result['num_images']} images)", show_header=False
    )
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        table.add_row(k, f"{m[k]:.4f}")
    console.print(table)
    _print_per_class(console, m.get("per_class"), "per class")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``val`` to the ``detrkit`` app."""
    app.command("train", context_settings={"allow_extra_args": False})(train)
    app.command("val")(val)
