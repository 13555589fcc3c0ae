"""COCO detection metrics on faster-coco-eval, with per-class results and PR arrays.

``evaluate_coco(gt, predictions)`` validates the predictions (clear one-line errors naming the
file and the first bad entry), runs faster-coco-eval's ``COCOeval_faster`` (the pycocotools
algorithm in C++: greedy matching by score, crowd GT as ignore regions, 101-point interpolated
precision) and summarises the ``precision``/``recall`` arrays itself, exactly as pycocotools'
``summarize`` does. Every metric of detrkit (``eval``, ``val``, the training loop's validation,
``analyze``, the run folders ``compare`` reads) goes through it; it renumbers GT annotation ids
1..N internally, so files whose ids start at 0 (Roboflow exports) score right. Undefined entries follow pycocotools: ``-1`` where no GT exists (e.g. APs
when no GT is small). Empty predictions give 0 wherever GT exists.

Formats: GT is a COCO instances file/dict/:class:`~detrkit.data.coco.CocoIndex`; predictions are
COCO results ``{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}`` (plus
``"segmentation"`` for ``iou_type="segm"``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from detrkit.errors import AnnotationError

STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
AREA_NAMES: tuple[str, ...] = ("all", "small", "medium", "large")
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
PER_CLASS_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")

GtSource = str | Path | Mapping[str, Any] | Any  # Any: a CocoIndex (duck-typed by .to_dict())
PredSource = str | Path | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one category (``-1`` where undefined, as in pycocotools)."""

    category_id: int
    name: str
    num_gt: int
    num_pred: int
    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    AR100: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CocoMetrics:
    """Result of :func:`evaluate_coco`.

    Attributes:
        stats: the 12 COCO numbers by name (:data:`STAT_NAMES`; ``AR100`` is at ``max_dets``).
        per_class: one :class:`ClassMetrics` per GT category, in category-id order.
        ap_by_size: ``{"small": APs, "medium": APm, "large": APl}``.
        precision: ``[T=10, R=101, K, A=4, M=3]`` interpolated precision (``-1``: no GT) over IoU
            thresholds :data:`IOU_THRESHOLDS`, recall thresholds :data:`RECALL_THRESHOLDS`,
            categories ``category_ids``, areas :data:`AREA_NAMES`, ``max_dets``.
        recall: ``[T, K, A, M]`` maximum recall.
        scores: ``[T, R, K, A, M]`` score at each precision point.
    """

    stats: dict[str, float]
    per_class: list[ClassMetrics]
    ap_by_size: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    category_ids: list[int]
    class_names: list[str]
    max_dets: tuple[int, int, int]
    iou_type: str
    num_images: int
    num_predictions: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ap(self) -> float:
        return self.stats["AP"]

    def to_dict(self, *, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready dict; ``arrays=True`` adds precision/recall as nested lists."""
        out: dict[str, Any] = {
            "iou_type": self.iou_type,
            "max_dets": list(self.max_dets),
            "num_images": self.num_images,
            "num_predictions": self.num_predictions,
            "stats": dict(self.stats),
            "ap_by_size": dict(self.ap_by_size),
            "per_class": [c.to_dict() for c in self.per_class],
        }
        if arrays:
            out["precision"] = self.precision.tolist()
            out["recall"] = self.recall.tolist()
        return out


def evaluate_coco(
    gt: GtSource,
    predictions: PredSource,
    *,
    iou_type: Literal["bbox", "segm"] = "bbox",
    max_dets: int = 100,
) -> CocoMetrics:
    """COCO evaluation of ``predictions`` against ``gt``.

    Args:
        gt: COCO instances file path, dict or ``CocoIndex``.
        predictions: COCO results file path or list of result dicts (``bbox`` xywh pixels).
        iou_type: ``"bbox"`` or ``"segm"``.
        max_dets: the largest detection budget per image (the third of ``(1, 10, max_dets)``).
    Raises:
        AnnotationError: unreadable files, unknown image/category ids, malformed boxes or scores.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if max_dets < 10:
        raise ValueError(f"max_dets must be >= 10, got {max_dets}")
    gt_dict, gt_source = _load_gt(gt)
    preds, pred_source = _load_predictions(predictions)
    validate_predictions(preds, gt_dict, iou_type=iou_type, source=pred_source)

    cats = sorted(gt_dict["categories"], key=lambda c: c["id"])
    cat_ids = [int(c["id"]) for c in cats]
    names = [str(c["name"]) for c in cats]
    quiet = logging.getLogger("faster_coco_eval").debug
    coco_gt = COCO(_gt_for_eval(gt_dict), print_function=quiet)
    dts = [dict(p) for p in preds]
    coco_dt = coco_gt.loadRes(dts) if dts else _empty_results(COCO, gt_dict, quiet)
    ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=quiet)
    ev.params.maxDets = [1, 10, max_dets]
    ev.params.catIds = cat_ids
    ev.params.imgIds = sorted(int(i["id"]) for i in gt_dict["images"])
    ev.evaluate()
    ev.accumulate()
    precision = np.asarray(ev.eval["precision"], dtype=np.float64)
    recall = np.asarray(ev.eval["recall"], dtype=np.float64)
    scores = np.asarray(ev.eval["scores"], dtype=np.float64)

    stats = dict(zip(STAT_NAMES, summarize(precision, recall), strict=True))
    gt_counts = _count(gt_dict["annotations"], crowd=False)
    pred_counts = _count(preds, crowd=None)
    per_class = []
    for k, (cid, name) in enumerate(zip(cat_ids, names, strict=True)):
        s = summarize(precision[:, :, k : k + 1], recall[:, k : k + 1])
        per_class.append(
            ClassMetrics(
                category_id=cid,
                name=name,
                num_gt=gt_counts.get(cid, 0),
                num_pred=pred_counts.get(cid, 0),
                AP=s[0], AP50=s[1], AP75=s[2], APs=s[3], APm=s[4], APl=s[5], AR100=s[8],
            )
        )  # fmt: skip
    return CocoMetrics(
        stats=stats,
        per_class=per_class,
        ap_by_size={"small": stats["APs"], "medium": stats["APm"], "large": stats["APl"]},
        precision=precision,
        recall=recall,
        scores=scores,
        category_ids=cat_ids,
        class_names=names,
        max_dets=(1, 10, max_dets),
        iou_type=iou_type,
        num_images=len(gt_dict["images"]),
        num_predictions=len(preds),
        extra={"gt_source": None if gt_source is None else str(gt_source)},
    )


def summarize(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """The 12 COCO numbers from ``precision [T,R,K,A,M]`` and ``recall [T,K,A,M]``.

    Mirrors pycocotools ``COCOeval.summarize``: the mean over entries > -1 (``-1`` if none),
    AP at the largest detection budget, AR at each budget; area index 0..3 = all/small/medium/large.
    """

    def ap(iou: float | None = None, area: int = 0) -> float:
        p = precision[:, :, :, area, -1]
        if iou is not None:
            p = p[np.isclose(IOU_THRESHOLDS, iou)]
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else -1.0

    def ar(area: int = 0, m: int = -1) -> float:
        r = recall[:, :, area, m]
        valid = r[r > -1]
        return float(valid.mean()) if valid.size else -1.0

    return [
        ap(), ap(0.5), ap(0.75), ap(area=1), ap(area=2), ap(area=3),
        ar(m=0), ar(m=1), ar(m=2), ar(area=1), ar(area=2), ar(area=3),
    ]  # fmt: skip


def validate_predictions(
    preds: Sequence[Mapping[str, Any]],
    gt: Mapping[str, Any],
    *,
    iou_type: str = "bbox",
    source: str | Path | None = None,
) -> None:
    """Raise :class:`AnnotationError` naming the first bad prediction (index and problem)."""
    image_ids = {int(i["id"]) for i in gt["images"]}
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    where = "predictions" if source is None else str(source)
    for i, p in enumerate(preds):

        def fail(msg: str, i: int = i) -> AnnotationError:
            return AnnotationError(f"{where}: prediction #{i}: {msg}", path=source)

        if not isinstance(p, Mapping):
            raise fail(f"expected an object, got {type(p).__name__}")
        for key in ("image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation"):
            if key not in p:
                raise fail(f"missing {key!r}")
        if not _is_int(p["image_id"]) or int(p["image_id"]) not in image_ids:
            raise fail(f"unknown image_id {p['image_id']!r} (not in the ground truth)")
        if not _is_int(p["category_id"]) or int(p["category_id"]) not in cat_ids:
            raise fail(f"unknown category_id {p['category_id']!r} (GT has {sorted(cat_ids)})")
        score = p["score"]
        if not _is_num(score) or not math.isfinite(float(score)):
            raise fail(f"score must be a finite number, got {score!r}")
        if iou_type == "bbox" or "bbox" in p:
            b = p["bbox"]
            if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_is_num(v) for v in b):
                raise fail(f"bbox must be 4 numbers [x, y, w, h], got {b!r}")
            if not all(math.isfinite(float(v)) for v in b):
                raise fail(f"bbox has a non-finite value: {list(b)!r}")
            if b[2] < 0 or b[3] < 0:
                raise fail(f"bbox has a negative width or height: {list(b)!r}")


def make_noisy_predictions(
    gt: GtSource,
    *,
    seed: int,
    jitter: float = 0.0,
    drop: float = 0.0,
    false_positives: float = 0.0,
    score_noise: float = 0.0,
) -> list[dict[str, Any]]:
    """COCO results made from the GT boxes, for demos and tests.

    Every non-crowd GT box becomes a prediction of its class with score ``1 - score_noise * u``
    (``u`` uniform in [0, 1)), unless dropped (probability ``drop``); each corner moves by a normal
    offset of ``jitter`` times the box size; ``false_positives`` extra boxes per GT box (in
    expectation) are added at random places with random classes and lower scores. With all knobs
    at 0 the predictions are perfect (AP = 1 wherever there is GT).
    """
    gt_dict, _ = _load_gt(gt)
    rng = np.random.default_rng(seed)
    cat_ids = sorted(int(c["id"]) for c in gt_dict["categories"])
    sizes = {
        int(i["id"]): (float(i.get("width", 640)), float(i.get("height", 480))) for i in gt_dict["images"]
    }
    out: list[dict[str, Any]] = []
    for a in gt_dict["annotations"]:
        if a.get("iscrowd", 0) or rng.random() < drop:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        if jitter > 0:
            dx0, dy0, dx1, dy1 = rng.normal(0.0, jitter, size=4) * np.array([w, h, w, h])
            x0, y0, x1, y1 = x + dx0, y + dy0, x + w + dx1, y + h + dy1
            x, y, w, h = min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0)
        score = 1.0 - score_noise * float(rng.random())
        out.append(
            {
                "image_id": int(a["image_id"]),
                "category_id": int(a["category_id"]),
                "bbox": [x, y, w, h],
                "score": score,
            }
        )
    n_fp = int(rng.poisson(false_positives * max(len(out), 1))) if false_positives > 0 and sizes else 0
    image_ids = sorted(sizes)
    for _ in range(n_fp):
        img = image_ids[int(rng.integers(len(image_ids)))]
        width, height = sizes[img]
        w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        cid = cat_ids[int(rng.integers(len(cat_ids)))]
        out.append(
            {"image_id": img, "category_id": cid, "bbox": [x, y, w, h], "score": float(rng.uniform(0.0, 0.7))}
        )
    return out


# ---------------------------------------------------------------------------------------- helpers


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _load_gt(gt: GtSource) -> tuple[dict[str, Any], Path | None]:
    if isinstance(gt, (str, Path)):
        from detrkit.data.coco import CocoIndex

        return CocoIndex.load(gt).to_dict(), Path(gt)
    if isinstance(gt, Mapping):
        for key in ("images", "annotations", "categories"):
            if key not in gt:
                raise AnnotationError(f"ground truth has no {key!r} list")
        return dict(gt), None
    if hasattr(gt, "to_dict"):
        return gt.to_dict(), getattr(gt, "source", None)
    raise TypeError(f"gt must be a path, a COCO dict or a CocoIndex, got {type(gt).__name__}")


def _load_predictions(predictions: PredSource) -> tuple[list[Mapping[str, Any]], Path | None]:
    if isinstance(predictions, (str, Path)):
        path = Path(predictions)
        if not path.is_file():
            raise AnnotationError("prediction file not found", path=path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise AnnotationError(f"not a readable JSON file ({err})", path=path) from err
        if isinstance(data, Mapping) and "annotations" in data:
            data = data["annotations"]
        if not isinstance(data, list):
            raise AnnotationError(f"expected a JSON list of results, got {type(data).__name__}", path=path)
        return data, path
    return list(predictions), None


def _gt_for_eval(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy faster-coco-eval may mutate; fills ``iscrowd`` (0) and ``area`` (box area) if absent.

    Annotation ids are renumbered 1..N in file order: COCOeval (pycocotools and faster-coco-eval
    alike) stores the matched GT *id* as the "matched" flag of a detection, so a GT with id 0 (as in
    Roboflow exports, which count from 0) would never count as matched. No result refers to GT
    annotation ids, so nothing needs mapping back.
    """
    anns = []
    for new_id, a in enumerate(gt["annotations"], start=1):
        a = dict(a)
        a["id"] = new_id
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        anns.append(a)
    return {
        "images": [dict(i) for i in gt["images"]],
        "annotations": anns,
        "categories": [dict(c) for c in gt["categories"]],
    }


def _empty_results(coco_cls: Any, gt: Mapping[str, Any], quiet: Any) -> Any:
    """A results COCO object with no detections (``loadRes([])`` refuses an empty list)."""
    dt = coco_cls(print_function=quiet)
    dt.dataset = {
        "images": [dict(i) for i in gt["images"]],
        "annotations": [],
        "categories": [dict(c) for c in gt["categories"]],
    }
    dt.createIndex()
    return dt


def _count(anns: Sequence[Mapping[str, Any]], *, crowd: bool | None) -> dict[int, int]:
    counts: dict[int, int] = {}
    for a in anns:
        if crowd is not None and bool(a.get("iscrowd", 0)) != crowd:
            continue
        cid = int(a["category_id"])
        counts[cid] = counts.get(cid, 0) + 1
    return counts
