"""``detrkit predict``: run a trained detector on images, write COCO results and drawn images.

Writes ``OUT/predictions.json`` (COCO results format), ``OUT/images/<name>.jpg`` (predictions in
red, ground truth in green with ``--ann``) and, without ``--ann``, ``OUT/image_ids.json`` mapping
the sequential image ids to the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to the root app."""
    app.command("predict")(predict_cmd)


def predict_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder (or a checkpoint .pt file)."),
    source: str = typer.Option(..., "--source", help="Image file, folder or glob pattern ('imgs/*.jpg')."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    threshold: float = typer.Option(0.5, "--threshold", help="Minimum score kept."),
    ann: Path | None = typer.Option(None, "--ann", help="COCO GT: image ids from it, GT drawn in green."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last or epoch_N."),
    device: str | None = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."
    ),
    draw: bool = typer.Option(True, "--draw/--no-draw", help="Write drawn images."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
) -> None:
    """Detect objects in SOURCE with the model of RUN; write predictions.json and drawn images."""
    from rich.progress import Progress

    from detrkit.data.visualize import draw_detections
    from detrkit.errors import ConfigError, DataError
    from detrkit.inference.predictor import Predictor, resolve_images

    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    files = [p for p in resolve_images(source) if isinstance(p, Path)]
    predictor = (
        Predictor.from_checkpoint(run, device=device)
        if run.is_file()
        else Predictor.from_run(run, checkpoint=checkpoint, device=device)
    )
    gt_by_name, gt_index = _load_gt(ann, files) if ann is not None else ({}, None)
    if gt_index is not None and gt_index.category_ids != sorted(predictor.category_ids):
        raise DataError(
            f"{ann}: categories {gt_index.category_ids} differ from the model's {predictor.category_ids}",
            path=ann,
        )
    out.mkdir(parents=True, exist_ok=True)
    if draw:
        (out / "images").mkdir(exist_ok=True)

    results: list[dict[str, Any]] = []
    id_map: list[dict[str, Any]] = []
    per_class = [0] * len(predictor.class_names)
    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("predicting", total=len(files))
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            for path, det in zip(
                chunk, predictor.predict(chunk, threshold=threshold, batch_size=batch_size), strict=True
            ):
                gt = gt_by_name.get(path.name)
                image_id = int(gt["id"]) if gt is not None else len(id_map) + 1
                if gt_index is None:
                    id_map.append({"id": image_id, "file_name": str(path)})
                results.extend(det.to_coco_results(image_id, predictor.category_ids))
                for label in det.labels.tolist():
                    per_class[label] += 1
                if draw:
                    _draw(path, det, gt, gt_index, predictor, out / "images", draw_detections)
            bar.advance(task, len(chunk))

    (out / "predictions.json").write_text(json.dumps(results) + "\n")
    if gt_index is None:
        (out / "image_ids.json").write_text(json.dumps(id_map, indent=1) + "\n")
    summary = {
        "images": len(files),
        "detections": len(results),
        "threshold": threshold,
        "per_class": dict(zip(predictor.class_names, per_class, strict=True)),
        "predictions": str(out / "predictions.json"),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    table = Table(title=f"predict: {len(files)} images, {len(results)} detections (score >= {threshold})")
    table.add_column("class")
    table.add_column("detections", justify="right")
    for name, n in summary["per_class"].items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(
        f"wrote {out / 'predictions.json'}" + (f" and {out / 'images'}/" if draw else ""), highlight=False
    )


def _load_gt(ann: Path, files: list[Path]) -> tuple[dict[str, dict[str, Any]], Any]:
    """GT images by file base name; every source file must be in the annotation file."""
    from detrkit.data.formats.coco import load_coco
    from detrkit.errors import DataError

    index = load_coco(ann)  # a Roboflow placeholder category is not one of the model's classes
    by_name = {
        Path(img.file_name).name: {"id": img.id, "width": img.width, "height": img.height}
        for img in index.images
    }
    missing = [p.name for p in files if p.name not in by_name]
    if missing:
        raise DataError(
            f"{ann}: {len(missing)} source images are not in the annotation file (first: {missing[0]})",
            path=ann,
        )
    return by_name, index


def _draw(
    path: Path, det: Any, gt: dict[str, Any] | None, index: Any, predictor: Any, folder: Path, draw_fn: Any
) -> None:
    from detrkit.data.images import load_image_rgb

    image = load_image_rgb(path)
    gt_boxes = gt_labels = None
    if gt is not None and index is not None:
        anns = [a for a in index.anns_by_image(gt["id"]) if not a.iscrowd]
        gt_boxes = [
            [a.bbox_xywh[0], a.bbox_xywh[1], a.bbox_xywh[0] + a.bbox_xywh[2], a.bbox_xywh[1] + a.bbox_xywh[3]]
            for a in anns
        ]
        gt_labels = [predictor.category_ids.index(a.category_id) for a in anns]
    drawn = draw_fn(
        image,
        gt_boxes_xyxy=gt_boxes,
        gt_labels=gt_labels,
        pred_boxes_xyxy=det.boxes_xyxy,
        pred_labels=det.labels,
        pred_scores=det.scores,
        class_names=predictor.class_names,
    )
    drawn.save(folder / f"{path.stem}.jpg", quality=92, subsampling=0)  # 4:4:4 keeps thin lines coloured
