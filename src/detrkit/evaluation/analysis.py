"""One call that runs every analysis on a ground truth and a predictions file.

``run_analysis(gt, predictions)`` loads both once (:mod:`detrkit.evaluation.detections`) and
computes the TIDE decomposition, PR/F1 curves, the confusion matrix at the pooled best-F1
confidence, and (optionally) the standard COCO metrics with AP by object size
(:func:`detrkit.evaluation.coco.evaluate_coco`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detrkit.evaluation.coco import CocoMetrics, evaluate_coco
from detrkit.evaluation.confusion import ConfusionMatrix, confusion_matrix
from detrkit.evaluation.curves import Curves, compute_curves
from detrkit.evaluation.detections import DetectionData, GtSource, PredSource, image_pairs, load_detections
from detrkit.evaluation.errors import ErrorAnalysis, analyze_errors

SIZE_NAMES: tuple[str, ...] = ("small", "medium", "large")


@dataclass(frozen=True)
class AnalysisResult:
    """Everything :func:`run_analysis` computed; ``coco`` is None when it was skipped."""

    data: DetectionData
    errors: ErrorAnalysis
    curves: Curves
    confusion: ConfusionMatrix
    coco: CocoMetrics | None
    timings: dict[str, float] = field(default_factory=dict)

    def size_ap(self) -> dict[str, dict[str, float | None]]:
        """COCO AP (IoU .50:.95) by object size: ``{"all": {size: AP}, class name: {size: AP}}``,
        None where a class has no GT of that size."""
        if self.coco is None:
            return {}
        out = {"all": {s: _undef(self.coco.stats[f"AP{s[0]}"]) for s in SIZE_NAMES}}
        for c in self.coco.per_class:
            out[c.name] = {s: _undef(getattr(c, f"AP{s[0]}")) for s in SIZE_NAMES}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The content of ``errors.json``: every number of the report, machine-readable."""
        return {
            "ground_truth": self.data.gt_source,
            "predictions": self.data.dt_source,
            "num_images": self.data.num_images,
            "num_gt": int((~self.data.gt_crowd).sum()),
            "num_predictions": len(self.data.dt_score),
            "classes": list(self.data.class_names),
            "tide": self.errors.to_dict(),
            "curves": self.curves.to_dict(),
            "confusion": self.confusion.to_dict(),
            "coco": None if self.coco is None else self.coco.to_dict(),
            "ap_by_size": self.size_ap(),
        }


def _undef(v: float) -> float | None:
    return None if v < 0 or not np.isfinite(v) else float(v)


def run_analysis(
    gt: GtSource,
    predictions: PredSource,
    *,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = 100,
    score_thresh: float | None = None,
    with_coco: bool = True,
) -> AnalysisResult:
    """Load ``gt`` and ``predictions`` and run every analysis.

    Args:
        gt: COCO instances file, dict or ``CocoIndex``.
        predictions: COCO results file or list.
        score_thresh: confidence of the confusion matrix; default the pooled best-F1 confidence.
        with_coco: also compute the standard COCO metrics and AP by object size.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = load_detections(gt, predictions)
    timings["load"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs = image_pairs(data)
    timings["iou"] = time.perf_counter() - t
    t = time.perf_counter()
    errors = analyze_errors(data, pos_thresh=pos_thresh, bg_thresh=bg_thresh, max_dets=max_dets, pairs=pairs)
    timings["tide"] = time.perf_counter() - t
    t = time.perf_counter()
    curves = compute_curves(data, iou_thresholds=(pos_thresh, 0.75), max_dets=max_dets, pairs=pairs)
    timings["curves"] = time.perf_counter() - t
    t = time.perf_counter()
    thr = score_thresh if score_thresh is not None else curves.micro_best_threshold
    thr = 0.0 if not np.isfinite(thr) else thr
    confusion = confusion_matrix(
        data, score_thresh=thr, iou_thresh=pos_thresh, max_dets=max_dets, pairs=pairs
    )
    timings["confusion"] = time.perf_counter() - t
    coco = None
    if with_coco:
        t = time.perf_counter()
        coco = evaluate_coco(gt, predictions, max_dets=max_dets)
        timings["coco"] = time.perf_counter() - t
    return AnalysisResult(
        data=data, errors=errors, curves=curves, confusion=confusion, coco=coco, timings=timings
    )
