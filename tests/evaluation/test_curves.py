"""PR and F1 curves: per-class AP against pycocotools, F1 and best thresholds by hand."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest

from detrkit.evaluation.curves import compute_curves
from detrkit.evaluation.detections import load_detections

pycocotools = pytest.importorskip("pycocotools")


def _pycocotools_precision(gt: dict[str, Any], preds: list[dict[str, Any]]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"]  # [T, R, K, A, M]


@pytest.mark.parametrize("seed", range(4))
def test_ap_matches_pycocotools(make_coco: Any, seed: int) -> None:
    gt, preds = make_coco(seed, n_images=25, crowd=seed % 2 == 0)
    curves = compute_curves(load_detections(gt, preds), iou_thresholds=(0.5, 0.75))
    ref = _pycocotools_precision(gt, preds)
    for i, t_index in enumerate((0, 5)):  # IoU 0.50 and 0.75
        ref_p = ref[t_index, :, :, 0, -1].T  # [K, R]
        has_gt = ref_p[:, 0] > -1
        np.testing.assert_allclose(curves.precision[i][has_gt], ref_p[has_gt], atol=1e-12)
        np.testing.assert_allclose(curves.ap[i][has_gt], ref_p[has_gt].mean(-1), atol=1e-12)
        assert np.isnan(curves.ap[i][~has_gt]).all()


def test_f1_best_threshold_by_hand() -> None:
    # One class, 4 GT in one image; predictions by score: TP, FP, TP, TP, FP.
    gts = [[0, 0, 10, 10], [20, 0, 10, 10], [40, 0, 10, 10], [60, 0, 10, 10]]
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 20}],
        "categories": [{"id": 7, "name": "cat"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 7, "bbox": b, "area": 100, "iscrowd": 0}
            for i, b in enumerate(gts)
        ],
    }
    boxes_scores = [
        ([0, 0, 10, 10], 0.9),
        ([80, 10, 5, 5], 0.8),
        ([20, 0, 10, 10], 0.7),
        ([40, 0, 10, 10], 0.6),
        ([85, 10, 5, 5], 0.5),
    ]
    preds = [{"image_id": 1, "category_id": 7, "bbox": b, "score": s} for b, s in boxes_scores]
    curves = compute_curves(load_detections(gt, preds))
    # thresholds: 0.9 -> P1 R.25 F.4; 0.8 -> P.5 R.25 F1=1/3; 0.7 -> P2/3 R.5 F=4/7; 0.6 -> P.75 R.75 F=.75;
    # 0.5 -> P.6 R.75 F=2/3.  Best: 0.6 with F1 0.75.
    assert curves.best_threshold[0] == pytest.approx(0.6)
    assert curves.best_f1[0] == pytest.approx(0.75)
    assert curves.best_precision[0] == pytest.approx(0.75)
    assert curves.best_recall[0] == pytest.approx(0.75)
    assert curves.micro_best_threshold == pytest.approx(0.6)
    grid_at = {round(float(g), 3): f for g, f in zip(curves.f1_grid, curves.f1[0], strict=True)}
    assert grid_at[0.65] == pytest.approx(4 / 7)
    assert grid_at[0.95] == 0.0
    # AP@0.5 by hand: interpolated precision 1 up to recall .25, 0.75 up to .75, 0 after.
    expected = (26 * 1.0 + 50 * 0.75) / 101
    assert curves.ap[0, 0] == pytest.approx(expected)
