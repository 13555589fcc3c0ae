"""Ground truth and predictions as flat numpy arrays, plus vectorised IoU pairs and greedy matching.

Everything in the analysis modules (``errors``, ``curves``, ``confusion``, ``galleries``) works on
:class:`DetectionData`: one row per box, no per-box Python objects, so the COCO val2017 shape
(5k images, 36k boxes, 500k predictions) is analysed in seconds.

Conventions: boxes are COCO ``xywh`` pixels (as in the files); labels are contiguous ``0..K-1``
in the order of the sorted COCO category ids; ground-truth rows are sorted by image (file order
kept within an image); prediction rows are sorted by image, then by score descending (stable, so
ties keep file order). A lower prediction index therefore means a higher priority within its
image, which the greedy matcher relies on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detrkit.errors import AnnotationError, DataError

GtSource = str | Path | dict[str, Any] | Any
PredSource = str | Path | Sequence[dict[str, Any]]


@dataclass(frozen=True)
class DetectionData:
    """Ground truth and predictions of one dataset, flattened.

    Shapes: ``I`` images, ``K`` classes, ``G`` ground-truth boxes, ``D`` predictions.
    ``gt_image``/``dt_image`` index ``image_ids``; ``gt_label``/``dt_label`` are contiguous labels.
    """

    image_ids: np.ndarray  # int64 [I], COCO image ids in GT file order
    image_files: list[str]  # [I] file names
    image_sizes_hw: np.ndarray  # int64 [I, 2]
    category_ids: np.ndarray  # int64 [K], sorted COCO category ids
    class_names: list[str]  # [K]
    gt_image: np.ndarray  # int64 [G]
    gt_label: np.ndarray  # int64 [G]
    gt_boxes_xywh: np.ndarray  # float64 [G, 4]
    gt_area: np.ndarray  # float64 [G], the annotation's ``area`` (box area when absent)
    gt_crowd: np.ndarray  # bool [G]
    dt_image: np.ndarray  # int64 [D]
    dt_label: np.ndarray  # int64 [D]
    dt_score: np.ndarray  # float64 [D]
    dt_boxes_xywh: np.ndarray  # float64 [D, 4]
    gt_source: str = "<ground truth>"
    dt_source: str = "<predictions>"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def gt_segments(self) -> tuple[np.ndarray, np.ndarray]:
        """``(start [I], end [I])`` of each image's ground-truth rows."""
        return _segments(self.gt_image, self.num_images)

    def dt_segments(self) -> tuple[np.ndarray, np.ndarray]:
        """``(start [I], end [I])`` of each image's prediction rows."""
        return _segments(self.dt_image, self.num_images)


def _segments(sorted_group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    groups = np.arange(n_groups)
    return (
        np.searchsorted(sorted_group, groups, side="left"),
        np.searchsorted(sorted_group, groups, side="right"),
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found", path=path)
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})", path=path) from err


def _gt_dict(gt: GtSource) -> tuple[dict[str, Any], str]:
    if isinstance(gt, str | Path):
        return _read_json(Path(gt)), str(gt)
    if isinstance(gt, dict):
        return gt, "<ground truth>"
    if hasattr(gt, "to_dict"):  # detrkit.data.coco.CocoIndex
        return gt.to_dict(), str(getattr(gt, "source", "<ground truth>"))
    raise TypeError(f"ground truth must be a path, a dict or a CocoIndex, got {type(gt).__name__}")


def _column(rows: Sequence[dict[str, Any]], key: str, source: str, what: str) -> list[Any]:
    try:
        return [row[key] for row in rows]
    except KeyError as err:
        raise AnnotationError(f"{source}: a {what} has no '{key}' field", path=None) from err
    except TypeError as err:
        raise AnnotationError(f"{source}: {what}s must be JSON objects", path=None) from err


def _boxes(values: list[Any], source: str, what: str) -> np.ndarray:
    try:
        boxes = np.asarray(values, dtype=np.float64).reshape(-1, 4)
    except (ValueError, TypeError) as err:
        raise AnnotationError(f"{source}: every {what} 'bbox' must be 4 numbers [x, y, w, h]") from err
    if len(boxes) != len(values):
        raise AnnotationError(f"{source}: every {what} 'bbox' must be 4 numbers [x, y, w, h]")
    if not np.isfinite(boxes).all():
        raise AnnotationError(f"{source}: a {what} 'bbox' holds a non-finite number")
    return boxes


def load_detections(gt: GtSource, predictions: PredSource) -> DetectionData:
    """Load a COCO ground truth and a COCO results list into a :class:`DetectionData`.

    Args:
        gt: path to an instances JSON, its dict, or a ``CocoIndex``.
        predictions: path to a COCO results JSON or a list of ``{"image_id", "category_id",
            "bbox": xywh pixels, "score"}`` dicts.
    Raises:
        AnnotationError: malformed files, or a prediction whose ``image_id`` or ``category_id``
            is not in the ground truth (the predictions were made for another dataset).
    """
    gt_dict, gt_source = _gt_dict(gt)
    if not isinstance(gt_dict, dict) or "images" not in gt_dict or "annotations" not in gt_dict:
        raise AnnotationError(f"{gt_source}: not a COCO instances file (needs 'images' and 'annotations')")
    images = gt_dict["images"]
    cats = sorted(gt_dict.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise AnnotationError(f"{gt_source}: no 'categories'")
    category_ids = np.asarray([c["id"] for c in cats], dtype=np.int64)
    class_names = [str(c.get("name", c["id"])) for c in cats]

    image_ids = np.asarray(_column(images, "id", gt_source, "image"), dtype=np.int64)
    order_img = np.argsort(image_ids, kind="stable")
    sorted_img_ids = image_ids[order_img]
    image_files = [str(im.get("file_name", im["id"])) for im in images]
    sizes = np.asarray([[im.get("height", 0), im.get("width", 0)] for im in images], dtype=np.int64)
    sizes = sizes.reshape(-1, 2)

    if len(np.unique(image_ids)) != len(image_ids):
        raise AnnotationError(f"{gt_source}: duplicate image ids in 'images'")

    def image_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(sorted_img_ids) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.clip(np.searchsorted(sorted_img_ids, ids), 0, len(sorted_img_ids) - 1)
        return order_img[pos], sorted_img_ids[pos] == ids

    def label_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.clip(np.searchsorted(category_ids, ids), 0, len(category_ids) - 1)
        return pos, category_ids[pos] == ids

    anns = gt_dict["annotations"]
    g_img, g_found = image_index(np.asarray(_column(anns, "image_id", gt_source, "annotation"), np.int64))
    if not g_found.all():
        raise AnnotationError(f"{gt_source}: an annotation refers to an image id that is not in 'images'")
    g_lab, l_found = label_index(np.asarray(_column(anns, "category_id", gt_source, "annotation"), np.int64))
    if not l_found.all():
        raise AnnotationError(
            f"{gt_source}: an annotation refers to a category id that is not in 'categories'"
        )
    g_box = _boxes(_column(anns, "bbox", gt_source, "annotation"), gt_source, "annotation")
    g_area = np.asarray([a.get("area", -1.0) for a in anns], dtype=np.float64)
    g_area = np.where(g_area < 0, g_box[:, 2] * g_box[:, 3], g_area)
    g_crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    g_order = np.argsort(g_img, kind="stable")

    if isinstance(predictions, str | Path):
        dt_source = str(predictions)
        preds = _read_json(Path(predictions))
    else:
        dt_source, preds = "<predictions>", predictions
    if not isinstance(preds, list):
        raise AnnotationError(f"{dt_source}: a COCO results file must hold a JSON list of detections")
    d_img_ids = np.asarray(_column(preds, "image_id", dt_source, "detection"), np.int64)
    d_img, d_found = image_index(d_img_ids)
    if not d_found.all():
        bad = int(d_img_ids[~d_found][0])
        raise AnnotationError(f"{dt_source}: detection image_id {bad} is not an image of {gt_source}")
    d_cat = np.asarray(_column(preds, "category_id", dt_source, "detection"), np.int64)
    d_lab, dl_found = label_index(d_cat)
    if not dl_found.all():
        bad = int(d_cat[~dl_found][0])
        raise AnnotationError(f"{dt_source}: detection category_id {bad} is not a category of {gt_source}")
    d_box = _boxes(_column(preds, "bbox", dt_source, "detection"), dt_source, "detection")
    try:
        d_score = np.asarray(_column(preds, "score", dt_source, "detection"), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{dt_source}: every detection 'score' must be a number") from err
    if len(d_score) != len(d_img) or not np.isfinite(d_score).all():
        raise AnnotationError(f"{dt_source}: every detection 'score' must be a finite number")
    d_order = np.lexsort((-d_score, d_img))

    return DetectionData(
        image_ids=image_ids,
        image_files=image_files,
        image_sizes_hw=sizes,
        category_ids=category_ids,
        class_names=class_names,
        gt_image=g_img[g_order],
        gt_label=g_lab[g_order],
        gt_boxes_xywh=g_box[g_order],
        gt_area=g_area[g_order],
        gt_crowd=g_crowd[g_order],
        dt_image=d_img[d_order],
        dt_label=d_lab[d_order],
        dt_score=d_score[d_order],
        dt_boxes_xywh=d_box[d_order],
        gt_source=gt_source,
        dt_source=dt_source,
    )


def rank_within(group: np.ndarray) -> np.ndarray:
    """Rank of each row inside its run of equal ``group`` values (``group`` sorted): ``[N]`` int64."""
    n = len(group)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, lengths)


def top_k_mask(data: DetectionData, max_dets: int | None, *, per_class: bool) -> np.ndarray:
    """``bool [D]``: the ``max_dets`` best predictions per image (``per_class``: per image and class)."""
    if max_dets is None:
        return np.ones(len(data.dt_score), bool)
    if not per_class:
        return rank_within(data.dt_image) < max_dets
    key = data.dt_image * max(data.num_classes, 1) + data.dt_label
    order = np.lexsort((np.arange(len(key)), key))  # stable: score order kept inside each group
    mask = np.zeros(len(key), bool)
    mask[order] = rank_within(key[order]) < max_dets
    return mask


@dataclass(frozen=True)
class Pairs:
    """The overlapping (prediction, ground truth) pairs of each image, sorted by prediction then GT.

    ``dt``/``gt``: int64 ``[P]`` row indices; ``iou``: float64 ``[P]`` > 0, computed exactly as
    pycocotools' ``bbIou`` (for crowd GT the union is the prediction's area). Pairs that do not
    overlap are left out: every consumer treats a missing pair as IoU 0.
    """

    dt: np.ndarray
    gt: np.ndarray
    iou: np.ndarray

    def select(self, keep: np.ndarray) -> Pairs:
        """The pairs where ``keep [P]`` is True."""
        return Pairs(dt=self.dt[keep], gt=self.gt[keep], iou=self.iou[keep])

    def select_dt(self, dt_mask: np.ndarray) -> Pairs:
        """The pairs whose prediction is in ``dt_mask [D]`` (all of them when it is all True)."""
        return self if bool(dt_mask.all()) else self.select(dt_mask[self.dt])


def image_pairs(data: DetectionData, dt_index: np.ndarray | None = None, *, chunk: int = 4_000_000) -> Pairs:
    """Overlapping pairs between the predictions ``dt_index`` (int64, ascending; default all) and
    the GT of their image. Works in chunks of about ``chunk`` candidate pairs to bound memory."""
    if dt_index is None:
        dt_index = np.arange(len(data.dt_score))
    gs, ge = data.gt_segments()
    counts_all = (ge - gs)[data.dt_image[dt_index]]
    cum = np.cumsum(counts_all)
    n_chunks = int(np.ceil(cum[-1] / chunk)) if len(cum) and cum[-1] > 0 else 1
    edges = np.unique(np.r_[0, np.searchsorted(cum, np.arange(1, n_chunks) * chunk), len(dt_index)])
    gx, gy, gw, gh = (np.ascontiguousarray(data.gt_boxes_xywh[:, i]) for i in range(4))
    gx1, gy1, garea = gx + gw, gy + gh, gw * gh
    dxa, dya, dwa, dha = (np.ascontiguousarray(data.dt_boxes_xywh[:, i]) for i in range(4))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        idx, counts = dt_index[lo:hi], counts_all[lo:hi]
        total = int(counts.sum())
        pair_dt = np.repeat(idx, counts)
        offsets = np.repeat(np.cumsum(counts) - counts, counts)
        pair_gt = np.repeat(gs[data.dt_image[idx]], counts) + (np.arange(total) - offsets)
        dx, dy, dw, dh = dxa[pair_dt], dya[pair_dt], dwa[pair_dt], dha[pair_dt]
        w = np.minimum(dw + dx, gx1[pair_gt]) - np.maximum(dx, gx[pair_gt])
        h = np.minimum(dh + dy, gy1[pair_gt]) - np.maximum(dy, gy[pair_gt])
        hit = (w > 0) & (h > 0)
        pair_dt, pair_gt, w, h = pair_dt[hit], pair_gt[hit], w[hit], h[hit]
        inter = w * h
        da = dwa[pair_dt] * dha[pair_dt]
        union = np.where(data.gt_crowd[pair_gt], da, da + garea[pair_gt] - inter)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
        ok = iou > 0
        parts.append((pair_dt[ok], pair_gt[ok], iou[ok]))
    if not parts:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    return Pairs(*(np.concatenate(x) for x in zip(*parts, strict=True)))


def greedy_match(
    num_dt: int, num_gt: int, cand_dt: np.ndarray, cand_gt: np.ndarray, cand_iou: np.ndarray
) -> np.ndarray:
    """Greedy matching in priority order, vectorised over all images at once.

    Equivalent to: for each prediction by ascending index (= descending score within an image),
    take the still-free candidate GT with the highest IoU (ties: lowest GT index). Each round
    commits every prediction that is the highest-priority remaining claimant of its current best
    GT; no earlier prediction can ever want that GT, so the sequential result is reproduced.

    Args:
        cand_dt, cand_gt: int64 ``[C]`` candidate pairs (already filtered: same image, allowed
            class, IoU over the threshold); ``cand_iou``: float64 ``[C]``.
    Returns:
        int64 ``[num_dt]``: the matched GT row of each prediction, or -1.
    """
    match = np.full(num_dt, -1, np.int64)
    if len(cand_dt) == 0:
        return match
    by_dt = np.lexsort((cand_gt, -cand_iou, cand_dt))
    pd, pg = cand_dt[by_dt], cand_gt[by_dt]
    rank_in_gt = np.empty(len(pd), np.int64)  # position of each pair in (gt, dt) order
    by_gt = np.lexsort((pd, pg))
    rank_in_gt[by_gt] = np.arange(len(pd))
    dt_done = np.zeros(num_dt, bool)
    gt_taken = np.zeros(num_gt, bool)
    active = np.arange(len(pd))
    while len(active):
        apd, apg = pd[active], pg[active]
        first = np.r_[True, apd[1:] != apd[:-1]]
        best_dt, best_gt = apd[first], apg[first]
        # earliest claimant of each GT among active pairs
        srt = active[np.argsort(rank_in_gt[active], kind="stable")]
        g_sorted = pg[srt]
        lead = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
        earliest = np.full(num_gt, -1, np.int64)
        earliest[g_sorted[lead]] = pd[srt][lead]
        commit = earliest[best_gt] == best_dt
        match[best_dt[commit]] = best_gt[commit]
        dt_done[best_dt[commit]] = True
        gt_taken[best_gt[commit]] = True
        active = active[~(dt_done[apd] | gt_taken[apg])]
    return match


def segment_max(values: np.ndarray, seg_of: np.ndarray, n_seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Max of ``values`` per segment and the first index reaching it.

    Args:
        values: float64 ``[P]``; ``seg_of``: int64 ``[P]`` segment of each value, ascending.
    Returns:
        ``(max [n_seg], argmax [n_seg])`` with max 0 and argmax -1 for empty segments (values are
        IoUs, so 0 is the neutral element, as in TIDE's masked IoU matrices).
    """
    out_max = np.zeros(n_seg)
    out_arg = np.full(n_seg, -1, np.int64)
    if len(values) == 0:
        return out_max, out_arg
    starts = np.flatnonzero(np.r_[True, seg_of[1:] != seg_of[:-1]])
    segs = seg_of[starts]
    mx = np.maximum.reduceat(values, starts)
    lengths = np.diff(np.r_[starts, len(values)])
    hit = values == np.repeat(mx, lengths)
    pos = np.where(hit, np.arange(len(values)), len(values))
    out_max[segs] = mx
    out_arg[segs] = np.minimum.reduceat(pos, starts)
    return out_max, out_arg
