"""Predictions of any tool as a comparable "run": ``detrkit compare RUN yolo_labels/ --gt val.json``.

:func:`predictions_run` scores a predictions file or folder (:mod:`detrkit.data.formats`
formats: COCO results, YOLO ``save_txt``, Ultralytics or Roboflow JSON) against a COCO ground
truth with the same metric as a run's validation (:func:`detrkit.evaluation.coco.evaluate_coco`)
and wraps the result in a :class:`~detrkit.runs.folder.RunFolder` whose ``errors.json``-style
``analysis`` holds the metrics, so :func:`detrkit.runs.compare.compare_runs` compares it with run
folders in one table.
"""

from __future__ import annotations

from pathlib import Path

from detrkit.runs.folder import RunFolder


def predictions_run(pred: str | Path, gt: str | Path, *, fmt: str = "auto", class_base: int = 1) -> RunFolder:
    """A :class:`RunFolder` of ``pred`` scored on ``gt`` (named after ``pred``; a YOLO ``labels``
    folder is named after its parent, e.g. ``runs/detect/predict``)."""
    from detrkit.data.formats import read_predictions
    from detrkit.data.formats.coco import load_coco
    from detrkit.evaluation.coco import evaluate_coco

    pred, gt = Path(pred), Path(gt)
    index = load_coco(gt)
    results, used = read_predictions(pred, index, fmt=fmt, class_base=class_base)
    metrics = evaluate_coco(index, results)
    path = pred.parent if pred.name == "labels" else pred
    return RunFolder(
        path=path,
        config={"predictions": {"source": str(pred), "format": used}, "data": {"val_ann": str(gt)}},
        classes={"names": list(metrics.class_names), "category_ids": list(metrics.category_ids)},
        summary=None,
        rows=[],
        env=None,
        analysis={"coco": metrics.to_dict()},
    )
