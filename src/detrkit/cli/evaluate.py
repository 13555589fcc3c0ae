"""``detrkit eval``: COCO metrics of a predictions file against a ground-truth file.

Thin front over :func:`detrkit.evaluation.coco.evaluate_coco`: a summary table of the 12 COCO
numbers and a per-class table (rich), or JSON with ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from detrkit.cli.tables import titled_table


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the root app."""
    app.command("eval")(eval_cmd)


def _fmt(v: float) -> str:
    return "-" if v < 0 else f"{v:.3f}"


def eval_cmd(
    gt: Path = typer.Option(..., "--gt", help="COCO instances JSON (ground truth)."),
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="COCO results JSON, a folder of YOLO save_txt files, Ultralytics or Roboflow JSON.",
    ),
    pred_format: str = typer.Option(
        "auto", "--pred-format", help="auto, coco, yolo-txt, ultralytics or roboflow."
    ),
    class_base: int = typer.Option(
        1,
        "--class-base",
        min=0,
        max=1,
        help="Ultralytics JSON: category_id minus this is the class index (0: old versions).",
    ),
    iou_type: str = typer.Option("bbox", "--iou-type", help="bbox or segm."),
    max_dets: int = typer.Option(100, "--max-dets", min=10, help="Detections per image for AP and AR100."),
    per_class: bool = typer.Option(True, "--per-class/--no-per-class", help="Also show per-class metrics."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Evaluate PRED against GT with the COCO protocol (AP@[.5:.95], AP50, AP75, by size, AR)."""
    from detrkit.errors import ConfigError
    from detrkit.evaluation.coco import evaluate_coco

    if iou_type not in ("bbox", "segm"):
        raise ConfigError(f"--iou-type must be bbox or segm, got {iou_type!r}")
    out = Console()  # created per call: honours the terminal width (and COLUMNS) at run time
    from detrkit.data.formats import predictions_source
    from detrkit.data.formats.coco import load_coco

    gt_index = load_coco(gt)  # without a Roboflow placeholder category (no row of -1 for it)
    results, used = predictions_source(pred, gt_index, fmt=pred_format, class_base=class_base)
    if used != "coco":
        Console(stderr=True).print(f"{pred}: read as {used} predictions", highlight=False)
    metrics = evaluate_coco(gt_index, results, iou_type=iou_type, max_dets=max_dets)  # type: ignore[arg-type]
    if as_json:
        d = metrics.to_dict()
        if not per_class:
            d.pop("per_class")
        typer.echo(json.dumps(d, indent=2))
        return
    table = titled_table(f"COCO {iou_type} metrics: {pred.name} vs {gt.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.stats.items():
        table.add_row(name, _fmt(value))
    out.print(table)
    if per_class:
        pc = titled_table("per class (- : no ground truth of that kind)")
        for col in ("id", "class", "GT", "pred", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
            pc.add_column(col, justify="left" if col == "class" else "right")
        for c in metrics.per_class:
            pc.add_row(
                str(c.category_id), c.name, str(c.num_gt), str(c.num_pred),
                *(_fmt(v) for v in (c.AP, c.AP50, c.AP75, c.APs, c.APm, c.APl, c.AR100)),
            )  # fmt: skip
        out.print(pc)
    out.print(
        f"{metrics.num_predictions} predictions on {metrics.num_images} images: "
        f"AP {metrics.stats['AP']:.3f}, AP50 {metrics.stats['AP50']:.3f}",
        highlight=False,
    )
