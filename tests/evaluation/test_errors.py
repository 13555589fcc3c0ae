"""TIDE decomposition: randomised comparison with tidecv, and one hand-built case per error type."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detrkit.evaluation.detections import load_detections
from detrkit.evaluation.errors import (
    BKG,
    BOTH,
    CLS,
    DUPE,
    GT_FN_CLS,
    GT_FN_LOC,
    GT_MATCHED,
    GT_MISSED,
    LOC,
    TP,
    analyze_errors,
)

tidecv = pytest.importorskip("tidecv")


def _tide(gt: dict[str, Any], preds: list[dict[str, Any]]) -> tuple[Any, Any]:
    gt_data, dt_data = tidecv.Data("gt"), tidecv.Data("dt")
    for im in gt["images"]:
        gt_data.add_image(im["id"], im["file_name"])
    for c in gt["categories"]:
        gt_data.add_class(c["id"], c["name"])
    for a in gt["annotations"]:
        if a["iscrowd"]:
            gt_data.add_ignore_region(a["image_id"], a["category_id"], list(a["bbox"]))
        else:
            gt_data.add_ground_truth(a["image_id"], a["category_id"], list(a["bbox"]))
    for p in preds:
        dt_data.add_detection(p["image_id"], p["category_id"], p["score"], list(p["bbox"]))
    tide = tidecv.TIDE()
    run = tide.evaluate(gt_data, dt_data, mode=tidecv.TIDE.BOX)
    return tide, run


@pytest.mark.parametrize("seed", range(7))
def test_matches_tidecv_on_random_inputs(make_coco: Any, seed: int) -> None:
    if seed == 6:  # crowded images: more than 100 predictions per image, TIDE keeps the top 100
        gt, preds = make_coco(seed, n_images=8, max_gt=90, empty_images=1)
        assert max(np.unique([p["image_id"] for p in preds], return_counts=True)[1]) > 100
    else:
        gt, preds = make_coco(seed, n_images=30 + 5 * seed, crowd=seed % 2 == 0)
    ours = analyze_errors(load_detections(gt, preds))
    tide, run = _tide(gt, preds)
    main = tide.get_main_errors()["dt"]
    special = tide.get_special_errors()["dt"]

    assert ours.ap == pytest.approx(run.ap, abs=1e-9)
    for name, tide_name in (
        ("cls", "Cls"),
        ("loc", "Loc"),
        ("both", "Both"),
        ("dupe", "Dupe"),
        ("bkg", "Bkg"),
        ("miss", "Miss"),
    ):
        assert ours.dap[name] == pytest.approx(main[tide_name], abs=1e-9), name
    assert ours.special_dap["false_pos"] == pytest.approx(special["FalsePos"], abs=1e-9)
    assert ours.special_dap["false_neg"] == pytest.approx(special["FalseNeg"], abs=1e-9)

    # Counts: TIDE's errors, leaving out predictions it ignores (inside crowd regions).
    counted = [e for e in run.errors if not (hasattr(e, "pred") and e.pred["used"] is None)]
    tide_counts = {
        n: sum(type(e).short_name == n for e in counted) for n in ("Cls", "Loc", "Both", "Dupe", "Bkg")
    }
    assert ours.fp_counts == {
        "cls": tide_counts["Cls"],
        "loc": tide_counts["Loc"],
        "both": tide_counts["Both"],
        "dupe": tide_counts["Dupe"],
        "bkg": tide_counts["Bkg"],
    }
    assert ours.fn_counts["miss"] == sum(type(e).short_name == "Miss" for e in run.errors)
    assert ours.num_ignored == sum(1 for e in run.errors if hasattr(e, "pred") and e.pred["used"] is None)
    # Per-class TIDE AP equals tidecv's per-class AP.
    for k, cat in enumerate(gt["categories"]):
        obj = run.ap_data.objs.get(cat["id"])
        if obj is not None and not obj.is_empty():
            assert ours.ap_per_class[k] == pytest.approx(obj.get_ap(), abs=1e-9)


def _case(gt_boxes: list[tuple[int, list[float]]], preds: list[tuple[int, float, list[float]]]) -> Any:
    """One 200x200 image, classes 1 and 2; gt: (cat, xywh); preds: (cat, score, xywh)."""
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (c, b) in enumerate(gt_boxes)
        ],
    }
    dts = [{"image_id": 1, "category_id": c, "score": s, "bbox": b} for c, s, b in preds]
    return analyze_errors(load_detections(gt, dts))


def test_hand_built_each_error_type() -> None:
    box = [0.0, 0.0, 100.0, 100.0]
    # TP, a duplicate of it, a class error on GT 1, a TP at IoU exactly 0.5, both, background.
    res = _case(
        [(1, box), (2, [100.0, 100.0, 100.0, 100.0]), (1, [0.0, 120.0, 50.0, 50.0])],
        [
            (1, 0.95, box),  # TP on GT 0
            (1, 0.90, [2.0, 2.0, 100.0, 100.0]),  # Dupe: IoU 0.92 with the taken GT 0
            (1, 0.85, [100.0, 100.0, 100.0, 100.0]),  # Cls: perfect box on a class-2 GT
            (1, 0.80, [0.0, 120.0, 100.0, 50.0]),  # IoU exactly 2500/5000 = 0.5 with GT 2: a TP
            (2, 0.70, [40.0, 40.0, 100.0, 100.0]),  # Both: class 2, IoU 0.22 with GT 0 of class 1
            (2, 0.60, [150.0, 0.0, 40.0, 40.0]),  # Bkg: touches nothing
        ],
    )
    kinds = res.dt_kind.tolist()
    assert kinds == [TP, DUPE, CLS, TP, BOTH, BKG]
    assert res.gt_kind.tolist() == [GT_MATCHED, GT_FN_CLS, GT_MATCHED]
    assert res.fp_counts == {"cls": 1, "loc": 0, "both": 1, "dupe": 1, "bkg": 1}
    assert res.fn_counts == {"miss": 0, "loc": 0, "cls": 1}
    # Class 2 has one GT, explained only by the class error: fixing it moves the 0.85 box into
    # class 2 as a TP above the 0.70/0.60 false positives -> class-2 AP goes from 0 to 100.
    assert res.dap_per_class["cls"][1] == pytest.approx(100.0)


def test_hand_built_loc_and_miss() -> None:
    res = _case(
        [(1, [0.0, 0.0, 100.0, 100.0]), (2, [120.0, 120.0, 60.0, 60.0])],
        [(1, 0.9, [30.0, 0.0, 100.0, 100.0]), (1, 0.5, [60.0, 0.0, 100.0, 100.0])],
    )
    # IoUs with GT 0: 7000/13000 = 0.538 (TP), 4000/16000 = 0.25 (Loc); GT 1 is missed.
    assert res.dt_kind.tolist() == [TP, LOC]
    assert res.gt_kind.tolist() == [GT_MATCHED, GT_MISSED]
    # Class 1: TP then an FP -> AP 100; class 2: one GT, no prediction -> AP 0; mAP 50.
    assert res.ap == pytest.approx(50.0)
    # Fixing the missed GT removes class 2's only GT: class 2 becomes empty and leaves the mean.
    assert res.dap["miss"] == pytest.approx(50.0)
    # The Loc error targets a GT already used: an oracle drops it, class 1 stays at 100.
    assert res.dap["loc"] == pytest.approx(0.0)


def test_loc_error_fixes_missed_gt() -> None:
    res = _case(
        [(1, [0.0, 0.0, 100.0, 100.0])],
        [(1, 0.9, [60.0, 0.0, 100.0, 100.0]), (1, 0.8, [65.0, 0.0, 100.0, 100.0])],
    )
    assert res.dt_kind.tolist() == [LOC, LOC]
    assert res.gt_kind.tolist() == [GT_FN_LOC]
    assert res.ap == pytest.approx(0.0)
    # Only the best-scoring Loc error becomes a TP (precision 1 at recall 1); the other is dropped.
    assert res.dap["loc"] == pytest.approx(100.0)
    assert np.isclose(res.dap_per_class["loc"][0], 100.0)
