"""Confusion matrix: a hand-built case and invariants on random data."""

from __future__ import annotations

from typing import Any

import numpy as np

from detrkit.evaluation.confusion import confusion_matrix
from detrkit.evaluation.curves import compute_curves
from detrkit.evaluation.detections import load_detections


def test_hand_built_confusion() -> None:
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 300, "height": 100}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [200, 0, 50, 50], "area": 2500, "iscrowd": 0},
        ],
    }
    preds = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.9},  # cat TP
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 50, 50], "score": 0.8},  # cat duplicate -> bg
        {"image_id": 1, "category_id": 1, "bbox": [100, 0, 50, 50], "score": 0.7},  # dog seen as cat
        {"image_id": 1, "category_id": 2, "bbox": [0, 60, 30, 30], "score": 0.6},  # dog on background
        {"image_id": 1, "category_id": 2, "bbox": [200, 0, 50, 50], "score": 0.1},  # below threshold
    ]
    cm = confusion_matrix(load_detections(gt, preds), score_thresh=0.5)
    # rows: gt cat, gt dog, background; columns: pred cat, pred dog, background
    assert cm.matrix.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert cm.labels == ["cat", "dog", "background"]
    np.testing.assert_allclose(cm.normalized()[1], [0.5, 0.0, 0.5])


def test_invariants_on_random_data(make_coco: Any) -> None:
    gt, preds = make_coco(3, n_images=40)
    data = load_detections(gt, preds)
    thr = 0.4
    cm = confusion_matrix(data, score_thresh=thr)
    m = cm.matrix
    k = data.num_classes
    # every non-crowd GT lands in exactly one cell of its row
    assert m[:k].sum(axis=1).tolist() == np.bincount(data.gt_label[~data.gt_crowd], minlength=k).tolist()
    # the diagonal holds the true positives at that score threshold (COCO matching at IoU 0.5)
    curves = compute_curves(data, iou_thresholds=(0.5,))
    tps = [int(cm_.is_tp[cm_.scores >= thr].sum()) for cm_ in curves.matches[0]]
    assert np.diag(m)[:k].tolist() == tps
    # every counted prediction (non-ignored, above the threshold) lands in one column
    counted = [int((cm_.scores >= thr).sum()) for cm_ in curves.matches[0]]
    assert m[:, :k].sum(axis=0).tolist() == counted
    assert m[k, k] == 0
