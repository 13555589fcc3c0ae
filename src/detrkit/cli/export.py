"""``detrkit export``: TorchScript or ONNX file of a trained detector, checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the root app."""
    app.command("export")(export_cmd)


def export_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder (or a checkpoint .pt file)."),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output file (default: RUN/export/<checkpoint>.onnx|.ts; predict --backend onnxruntime reuses the .onnx).",
    ),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last or epoch_N."),
    height: int | None = typer.Option(
        None, "--height", min=32, help="Tracing height (default: the run's eval size); any size runs."
    ),
    width: int | None = typer.Option(
        None, "--width", min=32, help="Tracing width (default: the run's eval size); any size runs."
    ),
    opset: int = typer.Option(17, "--opset", min=7, help="ONNX opset version."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Export the model (images + pixel_mask -> logits, boxes; dynamic batch, height and width) and
    report the max abs difference between the exported model and PyTorch on random inputs of the
    tracing size and of another size."""
    from detrkit.errors import ConfigError
    from detrkit.inference.export import FORMATS, check_sizes, eval_size, export_model
    from detrkit.inference.onnx_backend import export_path
    from detrkit.inference.predictor import Predictor
    from detrkit.runs.restore import restore

    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    restored = restore(run, which=checkpoint)  # a checkpoint file: which is not used
    predictor = Predictor.from_restored(restored, device="cpu")
    if out is None:  # where the onnxruntime backend of Predictor / predict looks for it
        out = export_path(restored.path)
        out = out if format == "onnx" else out.with_suffix(".ts")
    default_h, default_w = eval_size(predictor.transform, predictor.size_divisibility)
    height, width = height or default_h, width or default_w
    result = export_model(predictor.model, out, format=format, height=height, width=width, opset=opset)  # type: ignore[arg-type]
    summary = {
        "path": str(result.path),
        "format": result.format,
        "input": {"images": ["batch", 3, "height", "width"], "pixel_mask": ["batch", "height", "width"]},
        "traced_at": [height, width],
        "checked_at": [list(hw) for hw in check_sizes(height, width)] if result.checked_with else [],
        "outputs": ["logits", "boxes"],
        "max_abs_diff_logits": result.max_abs_diff_logits,
        "max_abs_diff_boxes": result.max_abs_diff_boxes,
        "checked_with": result.checked_with,
        "classes": predictor.class_names,
    }
    (result.path.parent / f"{result.path.stem}.classes.json").write_text(
        json.dumps({"names": predictor.class_names, "category_ids": predictor.category_ids}, indent=1) + "\n"
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    console.print(
        f"exported {result.format} model to {result.path} (traced at {height}x{width}; any batch, height, width)",
        highlight=False,
    )
    if result.max_abs_diff is None:
        console.print(
            "not checked: install onnxruntime to compare the ONNX file with PyTorch", highlight=False
        )
    else:
        sizes = " and ".join(f"{h}x{w}" for h, w in check_sizes(height, width))
        console.print(
            f"max abs diff vs PyTorch ({result.checked_with}, at {sizes}): logits "
            f"{result.max_abs_diff_logits:.2e}, boxes {result.max_abs_diff_boxes:.2e}",
            highlight=False,
        )
