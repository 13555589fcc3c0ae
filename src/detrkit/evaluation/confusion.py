"""Confusion matrix with a background row and column.

Rows are the ground-truth class, columns the predicted class; index ``K`` is background. Only
predictions with ``score >= score_thresh`` count (the report uses the pooled best-F1 threshold).

1. Predictions and GT of the same class are matched first, COCO style (greedy by score, IoU >=
   ``iou_thresh``): those land on the diagonal, so the diagonal equals the true positives.
2. The predictions and GT left over are then matched regardless of class: each such pair is a
   confusion ``[gt class, predicted class]``.
3. Predictions still unmatched (duplicates and detections on background) go to
   ``[background, predicted class]``, unless they lie on a crowd region of their class (ignored);
   GT still unmatched go to ``[gt class, background]`` (missed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detrkit.evaluation.curves import match_coco
from detrkit.evaluation.detections import DetectionData, Pairs, image_pairs, top_k_mask


@dataclass(frozen=True)
class ConfusionMatrix:
    """``matrix [K+1, K+1]`` int64: rows GT class, columns predicted class, last index background."""

    class_names: list[str]
    matrix: np.ndarray
    iou_thresh: float
    score_thresh: float

    @property
    def labels(self) -> list[str]:
        return [*self.class_names, "background"]

    def normalized(self) -> np.ndarray:
        """Rows divided by their sum (fraction of each GT class); the background row by its sum."""
        sums = self.matrix.sum(axis=1, keepdims=True)
        return np.divide(self.matrix, sums, out=np.zeros(self.matrix.shape), where=sums > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "rows": "ground truth",
            "columns": "prediction",
            "iou_thresh": self.iou_thresh,
            "score_thresh": self.score_thresh,
            "matrix": self.matrix.tolist(),
        }


def confusion_matrix(
    data: DetectionData,
    *,
    score_thresh: float,
    iou_thresh: float = 0.5,
    max_dets: int | None = 100,
    pairs: Pairs | None = None,
) -> ConfusionMatrix:
    """Build the confusion matrix (see the module docstring for the rules)."""
    k = data.num_classes
    dt_mask = top_k_mask(data, max_dets, per_class=True) & (data.dt_score >= score_thresh)
    pairs = (pairs if pairs is not None else image_pairs(data)).select_dt(dt_mask)
    match, ignored = match_coco(data, iou_thresh, dt_mask=dt_mask, pairs=pairs)
    gt_taken = np.zeros(len(data.gt_label), bool)
    gt_taken[match[match >= 0]] = True

    # Second pass: leftovers of both sides, any class (GT taken in the first pass are hidden).
    left = dt_mask & (match < 0) & ~ignored
    match2, _ = match_coco(
        data, iou_thresh, class_agnostic=True, dt_mask=left, gt_allowed=~gt_taken, pairs=pairs
    )

    m = np.zeros((k + 1, k + 1), np.int64)
    tp = match >= 0
    np.add.at(m, (data.gt_label[match[tp]], data.dt_label[tp]), 1)
    conf = match2 >= 0
    np.add.at(m, (data.gt_label[match2[conf]], data.dt_label[conf]), 1)
    gt_taken[match2[conf]] = True
    bg_dt = left & ~conf
    np.add.at(m, (np.full(int(bg_dt.sum()), k), data.dt_label[bg_dt]), 1)
    missed = ~gt_taken & ~data.gt_crowd
    np.add.at(m, (data.gt_label[missed], np.full(int(missed.sum()), k)), 1)
    return ConfusionMatrix(
        class_names=list(data.class_names), matrix=m, iou_thresh=iou_thresh, score_thresh=float(score_thresh)
    )
