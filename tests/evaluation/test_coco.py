"""COCO evaluation against pycocotools (the reference), validation errors, noisy predictions."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrkit.errors import AnnotationError
from detrkit.evaluation.coco import STAT_NAMES, evaluate_coco, make_noisy_predictions

CAT_IDS = [3, 7, 11, 42]  # non-contiguous on purpose


def random_gt(seed: int, *, n_images: int = 12) -> dict:
    """Random GT: crowd regions, an image without annotations, tiny and huge boxes."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for img_id in range(1, n_images + 1):
        w, h = int(rng.integers(64, 900)), int(rng.integers(64, 900))
        images.append({"id": img_id * 10, "file_name": f"{img_id}.jpg", "width": w, "height": h})
        n = 0 if img_id == 2 else int(rng.integers(1, 12))
        for _ in range(n):
            kind = rng.random()
            if kind < 0.15:  # tiny
                bw, bh = rng.uniform(1, 6, size=2)
            elif kind < 0.25:  # huge
                bw, bh = rng.uniform(0.7, 1.0) * w, rng.uniform(0.7, 1.0) * h
            else:
                bw, bh = rng.uniform(4, 0.6 * w), rng.uniform(4, 0.6 * h)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id * 10,
                    "category_id": int(rng.choice(CAT_IDS[:3])),  # category 42 has no GT
                    "bbox": [float(x), float(y), float(bw), float(bh)],
                    "area": float(bw * bh * rng.uniform(0.5, 1.0)),
                    "iscrowd": int(rng.random() < 0.08),
                }
            )
    cats = [{"id": c, "name": f"class{c}", "supercategory": "x"} for c in CAT_IDS]
    return {"images": images, "annotations": anns, "categories": cats}


def random_predictions(gt: dict, seed: int) -> list[dict]:
    """Jittered GT boxes, random boxes, an image with > 100 predictions, one with none."""
    rng = np.random.default_rng(seed + 1000)
    sizes = {i["id"]: (i["width"], i["height"]) for i in gt["images"]}
    preds = []
    for a in gt["annotations"]:
        for _ in range(int(rng.integers(0, 3))):
            x, y, w, h = a["bbox"]
            d = rng.normal(0, 0.15, size=4) * [w, h, w, h]
            cid = a["category_id"] if rng.random() < 0.8 else int(rng.choice(CAT_IDS))
            box = [x + d[0], y + d[1], max(w + d[2], 0.5), max(h + d[3], 0.5)]
            preds.append(
                {"image_id": a["image_id"], "category_id": cid, "bbox": box, "score": float(rng.random())}
            )
    ids = sorted(sizes)
    for img in ids[3:]:  # the first three images get no random boxes
        n = 150 if img == ids[4] else int(rng.integers(0, 20))
        w, h = sizes[img]
        for _ in range(n):
            bw, bh = rng.uniform(1, w), rng.uniform(1, h)
            box = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]
            preds.append(
                {
                    "image_id": img,
                    "category_id": int(rng.choice(CAT_IDS)),
                    "bbox": box,
                    "score": float(rng.random()),
                }
            )
    preds = [p for p in preds if p["image_id"] != ids[0]]  # an image with GT but no predictions
    return [{**p, "bbox": [float(v) for v in p["bbox"]]} for p in preds]


def pycocotools_eval(gt: dict, preds: list[dict], cat_ids: list[int] | None = None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(preds)))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_pycocotools(seed: int) -> None:
    gt = random_gt(seed)
    preds = random_predictions(gt, seed)
    assert any(a["iscrowd"] for a in gt["annotations"])
    ours = evaluate_coco(gt, preds)
    ref = pycocotools_eval(gt, preds)
    assert list(ours.stats) == list(STAT_NAMES)
    np.testing.assert_allclose(list(ours.stats.values()), ref.stats, atol=1e-6)
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], atol=1e-6)
    np.testing.assert_allclose(ours.recall, ref.eval["recall"], atol=1e-6)
    assert ours.precision.shape == (10, 101, len(CAT_IDS), 4, 3)
    assert ours.ap_by_size == {
        "small": ours.stats["APs"],
        "medium": ours.stats["APm"],
        "large": ours.stats["APl"],
    }
    # per class: pycocotools restricted to that category
    for cm in ours.per_class:
        ref_c = pycocotools_eval(gt, preds, cat_ids=[cm.category_id])
        got = [cm.AP, cm.AP50, cm.AP75, cm.APs, cm.APm, cm.APl, cm.AR100]
        np.testing.assert_allclose(got, [ref_c.stats[i] for i in (0, 1, 2, 3, 4, 5, 8)], atol=1e-6)
    by_id = {c.category_id: c for c in ours.per_class}
    assert [c.category_id for c in ours.per_class] == CAT_IDS
    assert by_id[42].AP == -1.0 and by_id[42].num_gt == 0  # no GT: undefined, as in pycocotools
    assert by_id[3].name == "class3"
    n_gt_3 = sum(1 for a in gt["annotations"] if a["category_id"] == 3 and not a["iscrowd"])
    assert by_id[3].num_gt == n_gt_3
    assert by_id[3].num_pred == sum(1 for p in preds if p["category_id"] == 3)


def test_max_dets_matches_pycocotools() -> None:
    gt, seed = random_gt(5), 5
    preds = random_predictions(gt, seed)
    ours = evaluate_coco(gt, preds, max_dets=20)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(preds))), "bbox")
        ev.params.maxDets = [1, 10, 20]
        ev.evaluate()
        ev.accumulate()
    np.testing.assert_allclose(ours.precision, ev.eval["precision"], atol=1e-6)
    assert ours.max_dets == (1, 10, 20)


def test_perfect_and_empty_predictions() -> None:
    gt = random_gt(7)
    perfect = evaluate_coco(gt, make_noisy_predictions(gt, seed=0))
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert perfect.stats[name] == pytest.approx(1.0)
    assert all(pytest.approx(1.0) == c.AP for c in perfect.per_class if c.num_gt)
    empty = evaluate_coco(gt, [])
    assert all(v in (0.0, -1.0) for v in empty.stats.values())
    assert empty.stats["AP"] == 0.0 and empty.stats["AR100"] == 0.0
    assert empty.num_predictions == 0


def test_noisy_predictions_lower_ap_and_match_reference() -> None:
    gt = random_gt(8)
    preds = make_noisy_predictions(gt, seed=1, jitter=0.1, drop=0.2, false_positives=0.5, score_noise=0.8)
    assert all(p["bbox"][2] >= 0 and p["bbox"][3] >= 0 for p in preds)
    ours = evaluate_coco(gt, preds)
    assert 0.05 < ours.stats["AP"] < 0.9
    np.testing.assert_allclose(list(ours.stats.values()), pycocotools_eval(gt, preds).stats, atol=1e-6)
    assert make_noisy_predictions(gt, seed=1, jitter=0.1) == make_noisy_predictions(gt, seed=1, jitter=0.1)


def test_accepts_paths_and_to_dict(tmp_path: Path) -> None:
    gt = random_gt(9)
    preds = random_predictions(gt, 9)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    a = evaluate_coco(tmp_path / "gt.json", tmp_path / "pred.json")
    b = evaluate_coco(gt, preds)
    assert a.stats == b.stats
    d = a.to_dict()
    json.dumps(d)
    assert d["stats"]["AP"] == a.stats["AP"] and len(d["per_class"]) == len(CAT_IDS)


BAD = [
    ({"image_id": 999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown image_id 999"),
    ({"image_id": 10, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown category_id 5"),
    ({"image_id": 10, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}, "4 numbers"),
    ({"image_id": 10, "category_id": 3, "bbox": [0, 0, -1, 1], "score": 0.5}, "negative width"),
    ({"image_id": 10, "category_id": 3, "bbox": [0, math.nan, 1, 1], "score": 0.5}, "non-finite"),
    ({"image_id": 10, "category_id": 3, "bbox": [0, 0, 1, 1]}, "missing 'score'"),
    ({"image_id": 10, "category_id": 3, "bbox": [0, 0, 1, 1], "score": "high"}, "score must be"),
]


@pytest.mark.parametrize(("bad", "message"), BAD)
def test_invalid_predictions_name_file_and_entry(tmp_path: Path, bad: dict, message: str) -> None:
    gt = random_gt(0)
    good = {"image_id": 10, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.9}
    path = tmp_path / "pred.json"
    path.write_text(json.dumps([good, good, bad, bad]))  # NaN is written as a bare NaN
    with pytest.raises(AnnotationError) as info:
        evaluate_coco(gt, path)
    text = str(info.value)
    assert str(path) in text and "prediction #2" in text and message in text
    assert "\n" not in text
    with pytest.raises(AnnotationError, match="prediction #0"):
        evaluate_coco(gt, [bad])


def test_unreadable_prediction_files(tmp_path: Path) -> None:
    gt = random_gt(0)
    with pytest.raises(AnnotationError, match="not found"):
        evaluate_coco(gt, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json"):
        evaluate_coco(gt, tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(AnnotationError, match="JSON list"):
        evaluate_coco(gt, tmp_path / "obj.json")


def test_cli_eval_json_and_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from detrkit.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")
    gt = random_gt(3)
    preds = random_predictions(gt, 3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    args = ["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json")]
    with pytest.raises(SystemExit) as info:
        main([*args, "--json"])
    assert info.value.code == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(
        [out["stats"][k] for k in STAT_NAMES], pycocotools_eval(gt, preds).stats, atol=1e-6
    )
    assert [c["category_id"] for c in out["per_class"]] == CAT_IDS

    with pytest.raises(SystemExit) as info:
        main([*args, "--no-per-class"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and "AP50" in text and "class11" not in text
    with pytest.raises(SystemExit):
        main(args)
    assert "class11" in capsys.readouterr().out


def test_cli_eval_bad_prediction_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from detrkit.cli.main import main

    gt = random_gt(3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(
        json.dumps([{"image_id": 12345, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}])
    )
    with pytest.raises(SystemExit) as info:
        main(["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "pred.json" in err and "unknown image_id 12345" in err
    assert len(err.splitlines()) == 1
