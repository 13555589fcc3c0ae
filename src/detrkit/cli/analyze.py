"""``detrkit analyze``: error analysis and a self-contained HTML report.

From a run folder (ground truth and images from its config, predictions from its best checkpoint
unless ``--pred`` is given) or from any COCO ground truth plus predictions file (so detections of
another tool can be analysed the same way). Writes ``report.html``, ``errors.json`` and, when it
had to predict, ``predictions.json`` into ``--out`` (default: the run folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to the root app."""
    app.command("analyze")(analyze_cmd)


def _predict_run(
    run_dir: Path, gt_path: Path, images_dir: Path, *, device: str | None, batch_size: int, console: Console
) -> list[dict[str, Any]]:
    """COCO results of the run's best checkpoint on every image of ``gt_path``."""
    from rich.progress import Progress

    from detrkit.data.coco import CocoIndex
    from detrkit.inference.predictor import Predictor

    index = CocoIndex.load(gt_path)
    predictor = Predictor.from_run(run_dir, checkpoint="best", device=device)
    results: list[dict[str, Any]] = []
    images = index.images
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"predicting {len(images)} images", total=len(images))
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            dets = predictor.predict(
                [images_dir / im.file_name for im in chunk], threshold=0.001, batch_size=batch_size
            )
            for im, det in zip(chunk, dets, strict=True):
                results.extend(det.to_coco_results(im.id, predictor.category_ids))
            progress.advance(task, len(chunk))
    return results


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
    iou: float = typer.Option(0.5, "--iou", help="Foreground IoU of the error analysis."),
    bg: float = typer.Option(0.1, "--bg", help="Background IoU of the error analysis."),
    conf: float | None = typer.Option(
        None, "--conf", help="Confidence for the confusion matrix and galleries (default: best F1)."
    ),
    gallery: int = typer.Option(3, "--gallery", help="Gallery tiles per class and kind (0: none)."),
    device: str | None = typer.Option(
        None, "--device", help="Device for predicting (default: cuda if available)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass when predicting."),
    as_json: bool = typer.Option(False, "--json", help="Print the errors.json summary instead of tables."),
) -> None:
    """Error analysis (TIDE), PR/F1 curves, confusion matrix, galleries -> report.html + errors.json."""
    from detrkit.errors import ConfigError, DataError
    from detrkit.evaluation.analysis import run_analysis
    from detrkit.evaluation.errors import ERROR_TYPES, TIDE_NAMES
    from detrkit.evaluation.galleries import build_galleries
    from detrkit.evaluation.report import build_report, write_report
    from detrkit.runs.folder import RunFolder, read_run_info

    console = Console(stderr=as_json)
    folder = RunFolder.load(run) if run is not None else None
    if folder is not None:
        val_ann, val_images = folder.val_paths()
        data = data or val_ann
        images = images or val_images
    if data is None:
        raise ConfigError("analyze needs --data ANN.json (or --run DIR whose config has data.val_ann)")
    if not data.is_file():
        raise DataError(f"{data}: ground-truth file not found", path=data)
    if pred is None and folder is None:
        raise ConfigError("analyze needs --pred PRED.json, or --run DIR to predict with its best checkpoint")
    out = out or (folder.path if folder is not None else pred.parent / f"{pred.stem}_analysis")  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)

    predictions: Path | list[dict[str, Any]]
    if pred is not None:
        from detrkit.data.formats import predictions_source

        predictions, used = predictions_source(pred, data, fmt=pred_format)
        if used != "coco":
            console.print(f"{pred}: read as {used} predictions", highlight=False)
    else:
        if images is None or not images.is_dir():
            raise DataError(f"{images}: image folder not found; give --images DIR to predict", path=images)
        predictions = _predict_run(
            folder.path,
            data,
            images,
            device=device,
            batch_size=batch_size,  # type: ignore[union-attr]
            console=console,
        )
        (out / "predictions.json").write_text(json.dumps(predictions))
    with console.status("analysing"):
        result = run_analysis(data, predictions, pos_thresh=iou, bg_thresh=bg, score_thresh=conf)
    thr = result.confusion.score_thresh
    galleries, note = None, None
    if gallery <= 0:
        note = "Galleries disabled (--gallery 0)."
    elif images is None or not images.is_dir():
        note = (
            f"No image folder ({images}); give --images DIR to see galleries."
            if images
            else "No image folder; give --images DIR to see galleries."
        )
    else:
        with console.status("drawing galleries"):
            galleries = build_galleries(
                result.data, result.errors, images, per_class=gallery, score_thresh=thr
            )
    with console.status("writing the report"):
        info = read_run_info(folder.path if folder is not None else None)
        title = f"detrkit analysis: {folder.name if folder is not None else Path(str(result.data.dt_source)).name}"
        report = write_report(
            out / "report.html",
            build_report(result, info=info, galleries=galleries, gallery_note=note, title=title),
        )
        summary = result.to_dict()
        (out / "errors.json").write_text(json.dumps(summary, indent=2) + "\n")

    if as_json:
        typer.echo(
            json.dumps(
                {
                    "report": str(report),
                    "errors_json": str(out / "errors.json"),
                    "tide": summary["tide"] | {"per_class": None},
                    "coco": None if result.coco is None else result.coco.stats,
                },
                indent=2,
            )
        )
        return
    e = result.errors
    table = Table(title=f"TIDE errors at IoU {e.pos_thresh} (AP{round(100 * e.pos_thresh)} {e.ap:.1f})")
    for col in ("error", "dAP", "FP", "FN"):
        table.add_column(col, justify="left" if col == "error" else "right")
    for t in ERROR_TYPES:
        table.add_row(
            TIDE_NAMES[t],
            f"{e.dap[t]:.2f}",
            str(e.fp_counts.get(t, "")) if t != "miss" else "",
            str(e.fn_counts.get(t, "")),
        )
    console.print(table)
    if result.coco is not None:
        s = result.coco.stats
        console.print(
            f"COCO AP {s['AP']:.3f}  AP50 {s['AP50']:.3f}  AP75 {s['AP75']:.3f}  "
            f"(best-F1 confidence {thr:.2f})",
            highlight=False,
        )
    console.print(f"report: {report}\nerrors: {out / 'errors.json'}", highlight=False)
