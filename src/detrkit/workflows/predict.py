"""Predict a folder of images with a run's model: COCO results, drawn images, a summary.

Writes ``OUT/predictions.json`` (COCO results format), ``OUT/images/<name>.jpg`` (predictions in
red, ground truth in green with ``ann``) and, without ``ann``, ``OUT/image_ids.json`` mapping
the sequential image ids to the files. Each image is read once: the predictor yields the image
it loaded with its detections (:meth:`~detrkit.inference.predictor.Predictor.iter_predict`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detrkit.data.visualize import draw_detections
from detrkit.errors import ConfigError, DataError, ImageError
from detrkit.inference.onnx_backend import check_backend
from detrkit.inference.predictor import Predictor, resolve_images


def predict_to_folder(
    run: Path,
    source: str | Path,
    out: Path,
    *,
    threshold: float = 0.5,
    ann: Path | None = None,
    batch_size: int = 8,
    checkpoint: str = "best",
    device: str | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    compile: bool = False,
    draw: bool = True,
    progress: Callable[[int, int], None] | None = None,
    on_skip: Callable[[ImageError], None] | None = None,
) -> dict[str, Any]:
    """Detect objects in ``source`` (file, folder or glob) with the model of ``run`` (a run folder
    or a checkpoint file) and write the files above. ``backend="onnxruntime"`` runs the run's
    ONNX export (made on first use, see :class:`~detrkit.inference.predictor.Predictor`);
    ``precision`` (``fp32``, ``bf16``, ``auto``) and ``compile`` are the torch backend's.

    One bad file does not cost the others: an unreadable image is skipped (``on_skip`` is called
    with its one-line error) and counted; ``images/`` is created only when something is drawn.

    Returns ``{"images" (predicted), "skipped", "skipped_files", "detections", "threshold",
    "backend", "per_class": {name: count}, "predictions"}``.
    Raises:
        ConfigError: a threshold outside [0, 1], a batch size below 1, an unknown backend,
            ``onnxruntime`` without its package or with a model that cannot be exported.
        DataError: no images; ``ann`` lacks a source image or has other categories than the model.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    check_backend(backend)
    files = [p for p in resolve_images(source) if isinstance(p, Path)]
    predictor = (
        Predictor.from_checkpoint(run, device=device, backend=backend, precision=precision, compile=compile)
        if run.is_file()
        else Predictor.from_run(
            run, checkpoint=checkpoint, device=device, backend=backend, precision=precision, compile=compile
        )
    )
    gt_by_name, gt_index = _load_gt(ann, files) if ann is not None else ({}, None)
    if gt_index is not None and gt_index.category_ids != sorted(predictor.category_ids):
        raise DataError(
            f"{ann}: categories {gt_index.category_ids} differ from the model's {predictor.category_ids}",
            path=ann,
        )
    out.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    id_map: list[dict[str, Any]] = []
    per_class = [0] * len(predictor.class_names)
    skipped: list[str] = []
    predicted = predictor.iter_predict(
        files, threshold=threshold, batch_size=batch_size, skip_unreadable=True
    )
    for done, (path, image, det) in enumerate(predicted, start=1):
        assert path is not None  # files only
        if isinstance(det, ImageError):
            skipped.append(str(path))
            if on_skip is not None:
                on_skip(det)
            continue
        gt = gt_by_name.get(path.name)
        image_id = int(gt["id"]) if gt is not None else len(id_map) + 1
        if gt_index is None:
            id_map.append({"id": image_id, "file_name": str(path)})
        results.extend(det.to_coco_results(image_id, predictor.category_ids))
        for label in det.labels.tolist():
            per_class[label] += 1
        if draw:
            (out / "images").mkdir(exist_ok=True)
            _draw(path, image, det, gt, gt_index, predictor, out / "images")
        if progress is not None and (done % batch_size == 0 or done == len(files)):
            progress(done, len(files))

    (out / "predictions.json").write_text(json.dumps(results) + "\n")
    if gt_index is None:
        (out / "image_ids.json").write_text(json.dumps(id_map, indent=1) + "\n")
    return {
        "images": len(files) - len(skipped),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "detections": len(results),
        "threshold": threshold,
        "backend": backend,
        "precision": predictor.precision,
        "per_class": dict(zip(predictor.class_names, per_class, strict=True)),
        "predictions": str(out / "predictions.json"),
    }


def _load_gt(ann: Path, files: list[Path]) -> tuple[dict[str, dict[str, Any]], Any]:
    """GT images by file base name; every source file must be in the annotation file."""
    from detrkit.data.formats.coco import load_coco

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
    path: Path, image: Any, det: Any, gt: dict[str, Any] | None, index: Any, predictor: Any, folder: Path
) -> None:
    gt_boxes = gt_labels = None
    if gt is not None and index is not None:
        anns = [a for a in index.anns_by_image(gt["id"]) if not a.iscrowd]
        gt_boxes = [
            [a.bbox_xywh[0], a.bbox_xywh[1], a.bbox_xywh[0] + a.bbox_xywh[2], a.bbox_xywh[1] + a.bbox_xywh[3]]
            for a in anns
        ]
        gt_labels = [predictor.category_ids.index(a.category_id) for a in anns]
    drawn = draw_detections(
        image,
        gt_boxes_xyxy=gt_boxes,
        gt_labels=gt_labels,
        pred_boxes_xyxy=det.boxes_xyxy,
        pred_labels=det.labels,
        pred_scores=det.scores,
        class_names=predictor.class_names,
    )
    drawn.save(folder / f"{path.stem}.jpg", quality=92, subsampling=0)  # 4:4:4 keeps thin lines coloured
