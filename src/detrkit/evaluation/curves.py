"""Per-class precision-recall curves (COCO matching) and F1-versus-confidence curves.

Matching follows COCO's ``evaluateImg`` for the ``all`` area range: at most ``max_dets``
predictions per image and class, greedy by score, each prediction takes the free GT of its class
with the highest IoU >= threshold; predictions left over that overlap a crowd GT of their class
(intersection over prediction area >= threshold) are ignored. AP is COCO's 101-point interpolated
AP, so ``ap[t, k]`` equals pycocotools' per-class AP at that IoU (tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detrkit.evaluation.detections import DetectionData, Pairs, greedy_match, image_pairs, top_k_mask

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ClassMatches:
    """Scored predictions of one class at one IoU, by descending score (ignored ones removed)."""

    scores: np.ndarray  # float64 [N]
    is_tp: np.ndarray  # bool [N]
    num_gt: int


@dataclass(frozen=True)
class Curves:
    """PR curves at each IoU in ``iou_thresholds`` and F1 curves at the first one.

    ``precision[t, k, r]``: COCO-interpolated precision at recall ``RECALL_POINTS[r]``, -1 where a
    class has no GT. ``ap[t, k]``: mean over ``r``, NaN without GT. ``best_threshold[k]``,
    ``best_f1[k]``: the confidence that maximises F1 for class ``k`` at ``iou_thresholds[0]``;
    ``f1_grid``/``f1[k, s]``: F1 on a grid of confidences, for plots; ``micro_*``: all classes
    pooled.
    """

    class_names: list[str]
    iou_thresholds: tuple[float, ...]
    precision: np.ndarray
    ap: np.ndarray
    f1_grid: np.ndarray
    f1: np.ndarray
    best_threshold: np.ndarray
    best_f1: np.ndarray
    best_precision: np.ndarray
    best_recall: np.ndarray
    micro_f1: np.ndarray
    micro_best_threshold: float
    micro_best_f1: float
    matches: list[list[ClassMatches]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 6)

        return {
            "iou_thresholds": list(self.iou_thresholds),
            "ap": {
                f"{t:.2f}": {n: num(self.ap[i, k]) for k, n in enumerate(self.class_names)}
                for i, t in enumerate(self.iou_thresholds)
            },
            "best_threshold": {n: num(self.best_threshold[k]) for k, n in enumerate(self.class_names)},
            "best_f1": {n: num(self.best_f1[k]) for k, n in enumerate(self.class_names)},
            "micro_best_threshold": num(self.micro_best_threshold),
            "micro_best_f1": num(self.micro_best_f1),
        }


def match_coco(
    data: DetectionData,
    iou_thresh: float,
    *,
    max_dets: int | None = 100,
    class_agnostic: bool = False,
    dt_mask: np.ndarray | None = None,
    gt_allowed: np.ndarray | None = None,
    pairs: Pairs | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO-style greedy matching at one IoU.

    Args:
        dt_mask: bool ``[D]`` predictions that take part (default: the top ``max_dets`` per image
            and class).
        class_agnostic: match regardless of class (used by the confusion matrix).
        gt_allowed: bool ``[G]`` GT that may be matched (default all).
        pairs: :func:`~detrkit.evaluation.detections.image_pairs` of ``data`` if already computed.
    Returns:
        ``(match [D] int64 GT row or -1, ignored [D] bool)``; predictions outside ``dt_mask``
        have match -1 and ignored False.
    """
    if dt_mask is None:
        dt_mask = top_k_mask(data, max_dets, per_class=True)
    pairs = (pairs if pairs is not None else image_pairs(data)).select_dt(dt_mask)
    crowd = data.gt_crowd[pairs.gt]
    same = (
        np.ones(len(pairs.dt), bool)
        if class_agnostic
        else (data.dt_label[pairs.dt] == data.gt_label[pairs.gt])
    )
    hit = same & (pairs.iou >= iou_thresh)
    cand = hit & ~crowd
    if gt_allowed is not None:
        cand &= gt_allowed[pairs.gt]
    match = greedy_match(
        len(data.dt_score), len(data.gt_label), pairs.dt[cand], pairs.gt[cand], pairs.iou[cand]
    )
    ignored = np.zeros(len(data.dt_score), bool)
    ignored[pairs.dt[hit & crowd]] = True
    ignored &= dt_mask & (match < 0)
    return match, ignored


def _class_matches(
    data: DetectionData, match: np.ndarray, ignored: np.ndarray, dt_mask: np.ndarray
) -> list[ClassMatches]:
    k = data.num_classes
    num_gt = np.bincount(data.gt_label[~data.gt_crowd], minlength=k)
    use = np.flatnonzero(dt_mask & ~ignored)
    order = use[np.lexsort((use, -data.dt_score[use], data.dt_label[use]))]
    lab = data.dt_label[order]
    starts = np.searchsorted(lab, np.arange(k), "left")
    ends = np.searchsorted(lab, np.arange(k), "right")
    out = []
    for c in range(k):
        sel = order[starts[c] : ends[c]]
        out.append(ClassMatches(scores=data.dt_score[sel], is_tp=match[sel] >= 0, num_gt=int(num_gt[c])))
    return out


def _interpolated_precision(m: ClassMatches) -> np.ndarray:
    """COCO's 101-point precision of one class: ``[101]`` (zeros past the last recall)."""
    if m.num_gt == 0:
        return np.full(len(RECALL_POINTS), -1.0)
    if len(m.scores) == 0:
        return np.zeros(len(RECALL_POINTS))
    tp = np.cumsum(m.is_tp)
    fp = np.cumsum(~m.is_tp)
    recall = tp / m.num_gt
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)


def _f1_at_scores(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, ...]:
    """F1, precision and recall when keeping predictions with score >= each distinct score."""
    tp = np.cumsum(is_tp)
    n = np.arange(1, len(scores) + 1)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps whole ties
    tp, n, s = tp[last_of_tie], n[last_of_tie], scores[last_of_tie]
    precision = tp / n
    recall = tp / max(num_gt, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    return s, f1, precision, recall


def _f1_on_grid(scores: np.ndarray, is_tp: np.ndarray, num_gt: int, grid: np.ndarray) -> np.ndarray:
    desc = -scores  # ascending
    kept = np.searchsorted(desc, -grid, side="right")  # number of predictions with score >= grid value
    tp = np.r_[0, np.cumsum(is_tp)][kept]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(kept > 0, tp / np.maximum(kept, 1), 0.0)
        r = tp / max(num_gt, 1)
        return np.where(tp > 0, 2 * p * r / (p + r), 0.0)


def compute_curves(
    data: DetectionData,
    *,
    iou_thresholds: tuple[float, ...] = (0.5, 0.75),
    max_dets: int | None = 100,
    grid_size: int = 201,
    pairs: Pairs | None = None,
) -> Curves:
    """PR curves and AP per class at each IoU; F1-versus-confidence at ``iou_thresholds[0]``."""
    k = data.num_classes
    dt_mask = top_k_mask(data, max_dets, per_class=True)
    pairs = (pairs if pairs is not None else image_pairs(data)).select_dt(dt_mask)
    matches = []
    for t in iou_thresholds:
        match, ignored = match_coco(data, t, dt_mask=dt_mask, pairs=pairs)
        matches.append(_class_matches(data, match, ignored, dt_mask))
    precision = np.stack([np.stack([_interpolated_precision(m) for m in per_t]) for per_t in matches])
    with np.errstate(invalid="ignore"):
        ap = np.where(precision[..., 0] >= 0, precision.clip(min=0).mean(-1), np.nan)

    scores = data.dt_score[dt_mask]
    lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
    lo, hi = (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)
    grid = np.linspace(lo, hi, grid_size)
    f1 = np.zeros((k, grid_size))
    best = np.full((4, k), np.nan)  # threshold, f1, precision, recall
    for c, m in enumerate(matches[0]):
        if m.num_gt == 0 or len(m.scores) == 0:
            continue
        f1[c] = _f1_on_grid(m.scores, m.is_tp, m.num_gt, grid)
        s, f, p, r = _f1_at_scores(m.scores, m.is_tp, m.num_gt)
        i = int(np.argmax(f))
        best[:, c] = (s[i], f[i], p[i], r[i])

    pooled_scores = np.concatenate([m.scores for m in matches[0]]) if k else np.zeros(0)
    pooled_tp = np.concatenate([m.is_tp for m in matches[0]]) if k else np.zeros(0, bool)
    order = np.argsort(-pooled_scores, kind="stable")
    pooled_scores, pooled_tp = pooled_scores[order], pooled_tp[order]
    total_gt = sum(m.num_gt for m in matches[0])
    micro_f1 = (
        _f1_on_grid(pooled_scores, pooled_tp, total_gt, grid) if len(pooled_scores) else np.zeros(grid_size)
    )
    if len(pooled_scores) and total_gt:
        s, f, _, _ = _f1_at_scores(pooled_scores, pooled_tp, total_gt)
        i = int(np.argmax(f))
        micro_thr, micro_best = float(s[i]), float(f[i])
    else:
        micro_thr, micro_best = float("nan"), float("nan")
    return Curves(
        class_names=list(data.class_names),
        iou_thresholds=tuple(iou_thresholds),
        precision=precision,
        ap=ap,
        f1_grid=grid,
        f1=f1,
        best_threshold=best[0],
        best_f1=best[1],
        best_precision=best[2],
        best_recall=best[3],
        micro_f1=micro_f1,
        micro_best_threshold=micro_thr,
        micro_best_f1=micro_best,
        matches=matches,
    )
