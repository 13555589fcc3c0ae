"""TIDE-style decomposition of detection errors (Bolya et al., ECCV 2020), vectorised.

Every prediction that is not a true positive at IoU ``pos_thresh`` (foreground, 0.5) gets exactly
one error type, tested in this order (the reference implementation's order):

- ``loc``  (Loc): IoU with a GT of its own class in ``[bg_thresh, pos_thresh]``;
- ``cls``  (Cls): IoU >= ``pos_thresh`` with a GT of another class;
- ``dupe`` (Dupe): IoU >= ``pos_thresh`` with a GT of its class already taken by a higher score;
- ``bkg``  (Bkg): IoU <= ``bg_thresh`` with every GT (or the image has no GT);
- ``both`` (Both): everything else (wrong class and poorly localised).

A GT left unmatched is ``miss`` unless a ``loc``/``cls`` error points at it. The dAP of a type is
the AP gained when an oracle fixes all errors of that type: a ``loc``/``cls`` error becomes a true
positive if it is the highest-scoring error on a free GT (others are dropped), other false
positives are dropped, fixing misses removes them from the GT count. AP is TIDE's own: 101-point
COCO-style interpolation at one IoU, mean over classes that have GT or predictions, maximum
``max_dets`` predictions per image across classes, crowd GT as ignore regions. The definitions
match ``tidecv`` 1.0.1 exactly (tests compare on randomised inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detrkit.evaluation.detections import (
    DetectionData,
    Pairs,
    greedy_match,
    image_pairs,
    segment_max,
    top_k_mask,
)

ERROR_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupe", "bkg", "miss")
FP_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupe", "bkg")
TIDE_NAMES: dict[str, str] = {
    "cls": "Cls",
    "loc": "Loc",
    "both": "Both",
    "dupe": "Dupe",
    "bkg": "Bkg",
    "miss": "Miss",
    "false_pos": "FalsePos",
    "false_neg": "FalseNeg",
}
DESCRIPTIONS: dict[str, str] = {
    "cls": "right box, wrong class (IoU >= fg with a GT of another class)",
    "loc": "right class, poor box (fg > IoU >= bg with a GT of its class)",
    "both": "wrong class and poor box",
    "dupe": "duplicate of a GT already matched by a higher score",
    "bkg": "fired on background (IoU <= bg with every GT)",
    "miss": "GT that no prediction explains",
}

# Codes in ErrorAnalysis.dt_kind / gt_kind.
NOT_EVALUATED, TP, CLS, LOC, BOTH, DUPE, BKG = -1, 0, 1, 2, 3, 4, 5
DT_KIND_NAMES: dict[int, str] = {TP: "tp", CLS: "cls", LOC: "loc", BOTH: "both", DUPE: "dupe", BKG: "bkg"}
GT_CROWD, GT_MATCHED, GT_MISSED, GT_FN_LOC, GT_FN_CLS = -1, 0, 1, 2, 3

_X101 = np.array([x / 100 for x in range(101)])


@dataclass(frozen=True)
class ErrorAnalysis:
    """Result of :func:`analyze_errors`. APs and dAPs are in percent (0-100), like TIDE.

    Per-class arrays have shape ``[K]`` and hold NaN for classes with neither GT nor predictions.
    ``dt_kind [D]``/``gt_kind [G]`` use the module's codes; ``dt_target_gt [D]`` is the GT a
    prediction is matched to (TP) or blamed on (cls/loc/dupe), else -1.
    """

    class_names: list[str]
    pos_thresh: float
    bg_thresh: float
    max_dets: int | None
    ap: float
    ap_per_class: np.ndarray
    dap: dict[str, float]
    dap_per_class: dict[str, np.ndarray]
    special_dap: dict[str, float]
    fp_counts: dict[str, int]
    fp_counts_per_class: dict[str, np.ndarray]
    fn_counts: dict[str, int]
    fn_counts_per_class: dict[str, np.ndarray]
    num_ignored: int
    num_tp: int
    num_gt: int
    dt_kind: np.ndarray = field(repr=False)
    dt_ignored: np.ndarray = field(repr=False)
    dt_target_gt: np.ndarray = field(repr=False)
    gt_kind: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the content of ``errors.json``)."""

        def per_class(arr: np.ndarray) -> dict[str, float | None]:
            return {
                n: (None if np.isnan(v) else round(float(v), 4))
                for n, v in zip(self.class_names, arr, strict=True)
            }

        return {
            "definition": "TIDE (tidecv 1.0.1) at one IoU threshold; AP and dAP in percent",
            "pos_thresh": self.pos_thresh,
            "bg_thresh": self.bg_thresh,
            "max_dets": self.max_dets,
            "ap": round(self.ap, 4),
            "dap": {k: round(v, 4) for k, v in self.dap.items()},
            "special_dap": {k: round(v, 4) for k, v in self.special_dap.items()},
            "fp_counts": dict(self.fp_counts),
            "fn_counts": dict(self.fn_counts),
            "num_tp": self.num_tp,
            "num_gt": self.num_gt,
            "num_ignored": self.num_ignored,
            "descriptions": DESCRIPTIONS,
            "per_class": {
                name: {
                    "ap": None if np.isnan(self.ap_per_class[k]) else round(float(self.ap_per_class[k]), 4),
                    "dap": {t: _num(self.dap_per_class[t][k]) for t in ERROR_TYPES},
                    "fp_counts": {t: int(self.fp_counts_per_class[t][k]) for t in FP_TYPES},
                    "fn_counts": {t: int(self.fn_counts_per_class[t][k]) for t in ("miss", "loc", "cls")},
                }
                for k, name in enumerate(self.class_names)
            },
            "ap_per_class": per_class(self.ap_per_class),
        }


def _num(v: float) -> float | None:
    return None if np.isnan(v) else round(float(v), 4)


def tide_ap_per_class(
    labels: np.ndarray, priority: np.ndarray, is_tp: np.ndarray, num_gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """TIDE's AP (101-point, percent) of each class from ranked true/false positives.

    Args:
        labels: int64 ``[N]``; priority: int64 ``[N]`` position in descending-score order (ties
            broken by file order), unique; is_tp: bool ``[N]``; num_gt: int64 ``[K]``.
    Returns:
        ``(ap [K], non_empty [K])``: a class counts in the mean when it has GT or predictions;
        a class with predictions but no GT has AP 0 (TIDE's rule, unlike COCO's).
    """
    k = len(num_gt)
    ap = np.zeros(k)
    order = np.argsort(labels * (int(priority.max(initial=0)) + 1) + priority, kind="stable")
    lab, tp = labels[order], is_tp[order]
    starts = np.searchsorted(lab, np.arange(k), side="left")
    ends = np.searchsorted(lab, np.arange(k), side="right")
    non_empty = (ends > starts) | (num_gt != 0)
    for c in np.flatnonzero((ends > starts) & (num_gt > 0)):
        t = tp[starts[c] : ends[c]]
        cum_tp = np.cumsum(t)
        precision = cum_tp / np.arange(1, len(t) + 1)
        recall = cum_tp / num_gt[c]
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, _X101, side="left")
        y = np.where(idx < len(t), precision[np.minimum(idx, len(t) - 1)], 0.0)
        ap[c] = sum(y.tolist()) / len(y) * 100
    return ap, non_empty


def _mean(ap: np.ndarray, non_empty: np.ndarray) -> float:
    vals = ap[non_empty].tolist()
    return sum(vals) / len(vals) if vals else 0.0


def analyze_errors(
    data: DetectionData,
    *,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int | None = 100,
    pairs: Pairs | None = None,
) -> ErrorAnalysis:
    """Classify every error and measure the dAP of each error type, overall and per class.

    Args:
        data: flattened GT and predictions (:func:`detrkit.evaluation.detections.load_detections`).
        pos_thresh: foreground IoU (a true positive needs IoU >= it).
        bg_thresh: background IoU (below it, a prediction is on background).
        max_dets: predictions kept per image (highest scores, across classes), None for all.
        pairs: :func:`~detrkit.evaluation.detections.image_pairs` of ``data`` if already computed.
    Raises:
        ValueError: unless ``0 < bg_thresh < pos_thresh <= 1``.
    """
    if not 0 < bg_thresh < pos_thresh <= 1:
        raise ValueError(f"need 0 < bg_thresh < pos_thresh <= 1, got bg {bg_thresh} and fg {pos_thresh}")
    n_dt, n_gt, k = len(data.dt_score), len(data.gt_label), data.num_classes
    kept = top_k_mask(data, max_dets, per_class=False)
    pairs = (pairs if pairs is not None else image_pairs(data)).select_dt(kept)
    crowd_pair = data.gt_crowd[pairs.gt]
    same = data.dt_label[pairs.dt] == data.gt_label[pairs.gt]

    cand = ~crowd_pair & same & (pairs.iou >= pos_thresh)
    match = greedy_match(n_dt, n_gt, pairs.dt[cand], pairs.gt[cand], pairs.iou[cand])
    gt_used = np.zeros(n_gt, bool)
    gt_used[match[match >= 0]] = True
    unmatched = kept & (match < 0)
    ignored = np.zeros(n_dt, bool)
    ignored[pairs.dt[crowd_pair & same & (pairs.iou > pos_thresh)]] = True
    ignored &= unmatched

    # Per-prediction maxima over the image's non-crowd GT (TIDE's masked IoU matrices).
    nc = ~crowd_pair
    p_dt, p_gt, p_iou, p_same = pairs.dt[nc], pairs.gt[nc], pairs.iou[nc], same[nc]
    cls_max, cls_arg = segment_max(np.where(p_same, p_iou, 0.0), p_dt, n_dt)
    oth_max, oth_arg = segment_max(np.where(~p_same, p_iou, 0.0), p_dt, n_dt)
    dup_max, dup_arg = segment_max(np.where(p_same & gt_used[p_gt], p_iou, 0.0), p_dt, n_dt)
    all_max, _ = segment_max(p_iou, p_dt, n_dt)
    gt_count = np.bincount(data.gt_image[~data.gt_crowd], minlength=data.num_images)
    has_gt = gt_count[data.dt_image] > 0 if n_dt else np.zeros(0, bool)

    kind = np.full(n_dt, NOT_EVALUATED, np.int8)
    target = np.full(n_dt, -1, np.int64)
    kind[kept & (match >= 0)] = TP
    target[match >= 0] = match[match >= 0]
    rest = unmatched.copy()
    for code, cond, arg in (
        (BKG, ~has_gt, None),
        (LOC, (cls_max >= bg_thresh) & (cls_max <= pos_thresh), cls_arg),
        (CLS, oth_max >= pos_thresh, oth_arg),
        (DUPE, dup_max >= pos_thresh, dup_arg),
        (BKG, all_max <= bg_thresh, None),
        (BOTH, np.ones(n_dt, bool), None),
    ):
        sel = rest & cond
        kind[sel] = code
        if arg is not None:
            target[sel] = p_gt[arg[sel]]
        rest &= ~sel

    # An oracle can turn a loc/cls error into a TP only for a free GT, and only the best one.
    fixable = np.flatnonzero(((kind == LOC) | (kind == CLS)) & (target >= 0))
    fixable = fixable[~gt_used[target[fixable]]]
    by_gt = fixable[np.lexsort((fixable, target[fixable]))]
    lead = np.r_[True, target[by_gt][1:] != target[by_gt][:-1]] if len(by_gt) else np.zeros(0, bool)
    best = by_gt[lead]
    is_best = np.zeros(n_dt, bool)
    is_best[best] = True

    gt_kind = np.full(n_gt, GT_MISSED, np.int8)
    gt_kind[gt_used] = GT_MATCHED
    gt_kind[target[best]] = np.where(kind[best] == LOC, GT_FN_LOC, GT_FN_CLS)
    gt_kind[data.gt_crowd] = GT_CROWD

    num_gt = np.bincount(data.gt_label[~data.gt_crowd], minlength=k)
    in_ap = kept & ~ignored
    priority = np.lexsort((np.arange(n_dt), -data.dt_score))  # descending score, then file order
    rank = np.empty(n_dt, np.int64)
    rank[priority] = np.arange(n_dt)
    base_lab, base_rank = data.dt_label[in_ap], rank[in_ap]
    base_tp = kind[in_ap] == TP
    ap_base, ne_base = tide_ap_per_class(base_lab, base_rank, base_tp, num_gt)
    map_base = _mean(ap_base, ne_base)

    def scenario(
        drop_kind: int | None = None,
        fix_kind: int | None = None,
        num_gt_fixed: np.ndarray = num_gt,
        tp_first: bool = False,
    ) -> tuple[np.ndarray, float]:
        keep = np.ones(len(base_lab), bool) if drop_kind is None else kind[in_ap] != drop_kind
        lab, rk, tp = base_lab[keep], base_rank[keep], base_tp[keep]
        if fix_kind is not None:
            fixed = np.flatnonzero((kind == fix_kind) & is_best)
            new_lab = data.gt_label[target[fixed]] if fix_kind == CLS else data.dt_label[fixed]
            lab, rk = np.r_[lab, new_lab], np.r_[rk, rank[fixed]]
            tp = np.r_[tp, np.ones(len(fixed), bool)]
        if tp_first:  # TIDE's FalsePos oracle: every TP scored 1, every FP 0
            rk = rk + np.where(tp, 0, n_dt)
        ap_c, ne = tide_ap_per_class(lab, rk, tp, num_gt_fixed)
        return np.where(ne, ap_c, 0.0), _mean(ap_c, ne)

    ap_base_masked = np.where(ne_base, ap_base, np.nan)
    dap: dict[str, float] = {}
    dap_pc: dict[str, np.ndarray] = {}
    miss_count = np.bincount(data.gt_label[gt_kind == GT_MISSED], minlength=k)
    for name, code in (("cls", CLS), ("loc", LOC), ("both", BOTH), ("dupe", DUPE), ("bkg", BKG)):
        ap_c, m = scenario(drop_kind=code, fix_kind=code if code in (CLS, LOC) else None)
        dap[name] = max(m - map_base, 0.0)
        dap_pc[name] = np.maximum(ap_c - ap_base_masked, 0.0)
    ap_c, m = scenario(num_gt_fixed=num_gt - miss_count)
    dap["miss"] = max(m - map_base, 0.0)
    dap_pc["miss"] = np.maximum(ap_c - ap_base_masked, 0.0)

    fn_all = np.bincount(data.gt_label[(gt_kind != GT_MATCHED) & (gt_kind != GT_CROWD)], minlength=k)
    special = {
        "false_pos": scenario(tp_first=True)[1] - map_base,
        "false_neg": scenario(num_gt_fixed=num_gt - fn_all)[1] - map_base,
    }

    fp_mask = ~ignored
    fp_pc = {
        name: np.bincount(data.dt_label[(kind == code) & fp_mask], minlength=k)
        for name, code in (("cls", CLS), ("loc", LOC), ("both", BOTH), ("dupe", DUPE), ("bkg", BKG))
    }
    fn_pc = {
        name: np.bincount(data.gt_label[gt_kind == code], minlength=k)
        for name, code in (("miss", GT_MISSED), ("loc", GT_FN_LOC), ("cls", GT_FN_CLS))
    }
    return ErrorAnalysis(
        class_names=list(data.class_names),
        pos_thresh=pos_thresh,
        bg_thresh=bg_thresh,
        max_dets=max_dets,
        ap=map_base,
        ap_per_class=ap_base_masked,
        dap=dap,
        dap_per_class=dap_pc,
        special_dap=special,
        fp_counts={t: int(v.sum()) for t, v in fp_pc.items()},
        fp_counts_per_class=fp_pc,
        fn_counts={t: int(v.sum()) for t, v in fn_pc.items()},
        fn_counts_per_class=fn_pc,
        num_ignored=int(ignored.sum()),
        num_tp=int((kind == TP).sum()),
        num_gt=int(num_gt.sum()),
        dt_kind=kind,
        dt_ignored=ignored,
        dt_target_gt=target,
        gt_kind=gt_kind,
    )
