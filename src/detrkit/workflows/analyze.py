"""Analyse a run (or any COCO ground truth + predictions): TIDE errors, curves, galleries, report.

From a run folder (ground truth and images from its config, predictions from its best checkpoint
unless ``pred`` is given) or from any COCO ground truth plus predictions file (so detections of
another tool can be analysed the same way). Writes ``report.html``, ``errors.json`` and, when it
had to predict, ``predictions.json`` into ``out`` (default: the run folder).
``detrkit analyze`` and the demo call :func:`analyze_run`, then :func:`print_analysis`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrkit.errors import ConfigError, DataError

#: ``status(message)`` -> a context manager shown while a phase runs (e.g. ``Console.status``).
Status = Callable[[str], contextlib.AbstractContextManager[Any]]
#: ``progress(done, total)`` after each predicted batch.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AnalyzeOutcome:
    """What :func:`analyze_run` wrote and found.

    Attributes:
        result: the :class:`~detrkit.evaluation.analysis.AnalysisResult` (errors, curves, COCO).
        summary: the ``errors.json`` content.
        report: ``report.html``; errors_json: ``errors.json``.
        threshold: the confidence of the confusion matrix and galleries (best F1 unless given).
    """

    result: Any
    summary: dict[str, Any]
    report: Path
    errors_json: Path
    threshold: float
    skipped: list[str] = field(default_factory=list)  # unreadable val images left out


def _no_status(message: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


def predict_run(
    run_dir: Path,
    gt_path: Path,
    images_dir: Path,
    *,
    device: str | None,
    batch_size: int,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """COCO results (``{"image_id", "category_id", "bbox": xywh pixels, "score"}``) of the run's
    best checkpoint on every readable image of ``gt_path``, scores down to 0.001.

    Returns ``(results, gt, skipped)``: an unreadable image is skipped (``say`` gets one line) and
    ``gt`` is the ground truth without it (``None`` when every image was read), so that its objects
    do not count as missed.
    """
    from detrkit.data.coco import CocoIndex
    from detrkit.errors import ImageError
    from detrkit.inference.predictor import Predictor

    index = CocoIndex.load(gt_path)
    predictor = Predictor.from_run(run_dir, checkpoint="best", device=device)
    paths = [images_dir / im.file_name for im in index.images]
    predicted = predictor.iter_predict(paths, threshold=0.001, batch_size=batch_size, skip_unreadable=True)
    results: list[dict[str, Any]] = []
    skipped: dict[int, str] = {}
    for done, (im, (path, _, det)) in enumerate(zip(index.images, predicted, strict=True), start=1):
        if isinstance(det, ImageError):
            skipped[im.id] = str(path)
            if say is not None:
                say(f"warning: skipping {det}")
        else:
            results.extend(det.to_coco_results(im.id, predictor.category_ids))
        if progress is not None and (done % batch_size == 0 or done == len(paths)):
            progress(done, len(paths))
    if not skipped:
        return results, None, []
    gt = index.to_dict()
    gt["images"] = [g for g in gt["images"] if g["id"] not in skipped]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] not in skipped]
    return results, gt, list(skipped.values())


def analyze_run(
    *,
    run: Path | None = None,
    data: Path | None = None,
    images: Path | None = None,
    pred: Path | None = None,
    out: Path | None = None,
    iou: float = 0.5,
    bg: float = 0.1,
    conf: float | None = None,
    gallery: int = 3,
    device: str | None = None,
    batch_size: int = 8,
    pred_format: str = "auto",
    status: Status = _no_status,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> AnalyzeOutcome:
    """Error analysis (TIDE), PR/F1 curves, confusion matrix, galleries -> ``report.html`` +
    ``errors.json`` (see the module docstring). ``pred`` may also be a YOLO ``save_txt`` folder,
    Ultralytics or Roboflow JSON (``pred_format``: ``auto``, ``coco``, ``yolo-txt``,
    ``ultralytics``, ``roboflow``); ``say`` gets the one-line notes (e.g. how ``pred`` was read).

    Raises:
        ConfigError: neither ``data`` nor a run with ``data.val_ann``; neither ``pred`` nor ``run``.
        DataError: the ground truth or the image folder to predict on is missing.
    """
    from detrkit.evaluation.analysis import run_analysis
    from detrkit.evaluation.galleries import build_galleries
    from detrkit.evaluation.report import build_report, write_report
    from detrkit.runs.folder import RunFolder, read_run_info

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
    gt_source: Any = data
    skipped: list[str] = []
    if pred is not None:
        from detrkit.data.formats import predictions_source

        predictions, used = predictions_source(pred, data, fmt=pred_format)
        if used != "coco" and say is not None:
            say(f"{pred}: read as {used} predictions")
    else:
        if images is None or not images.is_dir():
            raise DataError(f"{images}: image folder not found; give --images DIR to predict", path=images)
        predictions, readable_gt, skipped = predict_run(
            folder.path,  # type: ignore[union-attr]
            data,
            images,
            device=device,
            batch_size=batch_size,
            progress=progress,
            say=say,
        )
        (out / "predictions.json").write_text(json.dumps(predictions))
        if skipped:
            gt_source = readable_gt
            if say is not None:
                say(f"{len(skipped)} unreadable image(s) of {data} left out of the analysis")
    with status("analysing"):
        result = run_analysis(gt_source, predictions, pos_thresh=iou, bg_thresh=bg, score_thresh=conf)
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
        with status("drawing galleries"):
            galleries = build_galleries(
                result.data, result.errors, images, per_class=gallery, score_thresh=thr
            )
    with status("writing the report"):
        info = read_run_info(folder.path if folder is not None else None)
        title = f"detrkit analysis: {folder.name if folder is not None else Path(str(result.data.dt_source)).name}"
        report = write_report(
            out / "report.html",
            build_report(result, info=info, galleries=galleries, gallery_note=note, title=title),
        )
        summary = result.to_dict()
        (out / "errors.json").write_text(json.dumps(summary, indent=2) + "\n")
    return AnalyzeOutcome(result, summary, report, out / "errors.json", thr, skipped)


def print_analysis(outcome: AnalyzeOutcome, console: Any) -> None:
    """The TIDE table, the COCO line and where the files went, on a rich ``Console``."""
    from rich.table import Table

    from detrkit.evaluation.errors import ERROR_TYPES, TIDE_NAMES

    result = outcome.result
    e = result.errors
    # one unit in this output: AP points (0-100), TIDE's convention; `eval`/`val` print fractions
    title = f"TIDE errors at IoU {e.pos_thresh} (AP{round(100 * e.pos_thresh)} {e.ap:.1f}; AP points, 0-100)"
    table = Table(title=title, min_width=len(title) + 2)
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
            f"COCO AP {100 * s['AP']:.1f}  AP50 {100 * s['AP50']:.1f}  AP75 {100 * s['AP75']:.1f}  "
            f"(AP points; best-F1 confidence {outcome.threshold:.2f})",
            highlight=False,
        )
    console.print(f"report: {outcome.report}\nerrors: {outcome.errors_json}", highlight=False)
