"""Ground truth whose ids start at 0 (Roboflow exports) scores right everywhere metrics are made.

COCOeval uses the matched GT annotation id as the "matched" flag, so an annotation with id 0 never
counts as matched unless ids are renumbered. References: GT fed back as predictions must give AP
exactly 1.0, and any predictions must give what pycocotools gives on a copy renumbered from 1.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detrkit.cli.main import app
from detrkit.engine.validate import metrics_from_coco
from detrkit.evaluation.analysis import run_analysis
from detrkit.evaluation.coco import evaluate_coco, make_noisy_predictions


def pycocotools_stats(gt: dict, preds: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' 12 numbers and precision array (the reference)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(preds))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats), ev.eval["precision"]


def from_zero(gt: dict) -> dict:
    """The same GT with image and annotation ids 0..N-1 (as Roboflow writes them)."""
    img_map = {im["id"]: k for k, im in enumerate(gt["images"])}
    images = [{**im, "id": img_map[im["id"]]} for im in gt["images"]]
    anns = [{**a, "id": k, "image_id": img_map[a["image_id"]]} for k, a in enumerate(gt["annotations"])]
    return {**gt, "images": images, "annotations": anns}


def small_gt() -> dict:
    """Three images, two boxes each, image/annotation/category ids all from 0."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(3)]
    anns = [
        {
            "id": 2 * i + j,
            "image_id": i,
            "category_id": j,
            "bbox": [10 + 40 * j, 10, 30, 30],
            "area": 900,
            "iscrowd": 0,
        }
        for i in range(3)
        for j in range(2)
    ]
    cats = [{"id": 0, "name": "dent"}, {"id": 1, "name": "scratch"}]
    return {"images": images, "annotations": anns, "categories": cats}


def test_gt_as_predictions_is_exactly_one_with_ids_from_zero() -> None:
    gt = small_gt()
    m = evaluate_coco(gt, make_noisy_predictions(gt, seed=0))
    assert m.stats["AP"] == 1.0 and m.stats["AP50"] == 1.0 and m.stats["AR100"] == 1.0
    assert [c.AP for c in m.per_class] == [1.0, 1.0]
    # pycocotools itself misses the annotation with id 0 (what the renumbering is about)
    assert pycocotools_stats(gt, make_noisy_predictions(gt, seed=0))[0][0] < 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_ids_from_zero_match_pycocotools_on_renumbered_copy(seed: int, make_coco: Callable) -> None:
    gt, preds = make_coco(seed)  # ids from 1 (pycocotools is right on these)
    img_map = {im["id"]: k for k, im in enumerate(gt["images"])}
    zero_gt = from_zero(gt)
    zero_preds = [{**p, "image_id": img_map[p["image_id"]]} for p in preds]
    assert min(a["id"] for a in zero_gt["annotations"]) == 0
    assert min(im["id"] for im in zero_gt["images"]) == 0
    ours = evaluate_coco(zero_gt, zero_preds)
    ref_stats, ref_precision = pycocotools_stats(gt, preds)
    np.testing.assert_allclose(list(ours.stats.values()), ref_stats, atol=1e-6)
    np.testing.assert_allclose(ours.precision, ref_precision, atol=1e-6)


def test_every_consumer_scores_one(tmp_path: Path) -> None:
    """val/trainer (metrics_from_coco), analyze (run_analysis), eval and analyze commands."""
    gt = small_gt()
    preds = make_noisy_predictions(gt, seed=0)
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(preds))
    assert metrics_from_coco(gt_path, preds)["AP"] == 1.0
    result = run_analysis(gt_path, pred_path)
    assert result.coco is not None and result.coco.stats["AP"] == 1.0
    tide = result.errors.to_dict()  # TIDE matches by index, not id: every GT a true positive
    assert tide["ap"] == 100.0 and tide["num_tp"] == tide["num_gt"] == 6
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--gt", str(gt_path), "--pred", str(pred_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["stats"]["AP"] == 1.0
    res = runner.invoke(
        app,
        ["analyze", "--data", str(gt_path), "--pred", str(pred_path), "--out", str(tmp_path / "a"),
         "--gallery", "0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "a" / "errors.json").read_text())
    assert report["coco"]["stats"]["AP"] == 1.0
