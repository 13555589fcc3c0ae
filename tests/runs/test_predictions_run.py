"""Predictions of other tools compared in one command: ``detrkit compare A B --gt val.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detrkit.cli.main import app
from detrkit.evaluation.coco import evaluate_coco
from detrkit.runs.predictions import predictions_run


def test_compare_yolo_txt_and_coco_results(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"img_{i}.rf.ab.jpg", "width": 100, "height": 80} for i in range(3)]
    anns = [{"id": i, "image_id": i, "category_id": 5, "bbox": [10, 10, 40, 20], "area": 800, "iscrowd": 0}
            for i in range(3)]  # fmt: skip
    gt = {"images": images, "annotations": anns, "categories": [{"id": 5, "name": "dent"}]}
    gt_path = tmp_path / "val.json"
    gt_path.write_text(json.dumps(gt))
    labels = tmp_path / "predict" / "labels"
    labels.mkdir(parents=True)
    for im in images:  # perfect boxes: cx = 30/100, cy = 20/80, w = 0.4, h = 0.25
        (labels / f"{Path(im['file_name']).stem}.txt").write_text("0 0.3 0.25 0.4 0.25 0.9\n")
    shifted = [{"image_id": i, "category_id": 5, "bbox": [16, 10, 40, 20], "score": 0.5} for i in range(3)]
    (tmp_path / "detr.json").write_text(json.dumps(shifted))
    run = predictions_run(labels, gt_path)
    assert run.name == "predict" and run.final_metrics()["AP"] == 1.0
    res = CliRunner().invoke(
        app, ["compare", str(labels), str(tmp_path / "detr.json"), "--gt", str(gt_path), "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = dict((r["metric"], r["cells"]) for r in json.loads(res.stdout)["rows"])
    want = 100 * evaluate_coco(gt, shifted).stats["AP"]
    assert rows["AP"][0]["mean"] == pytest.approx(100.0) and rows["AP"][1]["mean"] == pytest.approx(want)
    assert rows["AP"][1]["delta"] == pytest.approx(want - 100.0)
