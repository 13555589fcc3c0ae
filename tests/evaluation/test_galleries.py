"""Gallery selection (worst false positives, worst misses) and tile rendering."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from detrkit.evaluation.detections import load_detections
from detrkit.evaluation.errors import analyze_errors
from detrkit.evaluation.galleries import build_galleries, render_tile, worst_false_positives, worst_misses


def _data() -> tuple[dict, list[dict]]:
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 100} for i in (1, 2, 3)]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [120, 10, 60, 60], "area": 3600, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [50, 20, 70, 70], "area": 4900, "iscrowd": 0},
    ]
    preds = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.99},  # TP
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.90},  # bkg FP
        {"image_id": 1, "category_id": 1, "bbox": [70, 70, 20, 20], "score": 0.95},  # bkg FP, same image
        {"image_id": 2, "category_id": 1, "bbox": [100, 50, 30, 30], "score": 0.50},  # bkg FP
        {"image_id": 3, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.80},  # dog FP
    ]
    return {"images": images, "annotations": anns, "categories": cats}, preds


def test_selection_rules() -> None:
    gt, preds = _data()
    data = load_detections(gt, preds)
    errors = analyze_errors(data)
    fps = worst_false_positives(data, errors, 0, 5)
    # highest score first, one per image: image 1's 0.95 (not its 0.90), then image 2's 0.50
    assert data.dt_score[fps].tolist() == [0.95, 0.50]
    misses = worst_misses(data, errors, 0, 5)
    # unmatched cat GT by area: 4900 (image 3), 3600 (image 1), 400 (image 2)
    assert data.gt_area[misses].tolist() == [4900.0, 3600.0, 400.0]
    assert worst_misses(data, errors, 0, 1).tolist() == misses[:1].tolist()


def test_tiles_are_drawn_from_images(tmp_path: Path) -> None:
    gt, preds = _data()
    for im in gt["images"]:
        Image.new("RGB", (200, 100), (40, 40, 40)).save(tmp_path / im["file_name"])
    data = load_detections(gt, preds)
    errors = analyze_errors(data)
    png = render_tile(
        Image.open(tmp_path / "1.png").convert("RGB"),
        data,
        0,
        data.gt_boxes_xywh[1],
        focus_dt=None,
        score_thresh=0.5,
        tile_size=320,
    )
    tile = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert max(tile.shape[:2]) == 320
    red = (tile[..., 0] > 150) & (tile[..., 1] < 80)
    green = (tile[..., 1] > 150) & (tile[..., 0] < 100)
    yellow = (tile[..., 0] > 200) & (tile[..., 1] > 160) & (tile[..., 2] < 60)
    assert green.any() and red.any() and yellow.any()
    (tmp_path / "3.png").unlink()  # an unreadable image is skipped and counted, not fatal
    galleries = build_galleries(data, errors, tmp_path, per_class=2, score_thresh=0.5)
    cat = galleries[0]
    assert len(cat.false_positives) == 2 and len(cat.misses) == 1 and cat.skipped == 1
    assert all(t.png.startswith(b"\x89PNG") for t in cat.false_positives + cat.misses)
    assert galleries[1].skipped == 1  # the dog FP lives on image 3
