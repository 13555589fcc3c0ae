"""Time our error analysis against faster-coco-eval's evaluation on the COCO val2017 shape.

Synthetic ground truth and predictions of the val2017 shape (5,000 images, ~36,800 boxes over 80
classes, 100 predictions per image: jittered copies of the GT, class flips and background boxes),
both timed from the same in-memory dict and list. The target: our analysis (loading, IoU pairs,
TIDE decomposition, PR/F1 curves, confusion matrix; not the COCO metrics, which ``detrkit
analyze`` gets from faster-coco-eval itself, nor the drawing of figures) takes less than 2x the COCO
evaluation (loading, evaluate, accumulate, summarize). Best of ``--repeat`` runs each.
Writes ``bench/results/analysis_speed.json``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/analysis_speed.py [--images 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_coco(
    n_images: int, boxes_per_image: float, dets_per_image: int, n_classes: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    n_gt = rng.poisson(boxes_per_image, n_images)
    img_of_gt = np.repeat(np.arange(n_images), n_gt)
    g = len(img_of_gt)
    wh = np.exp(rng.uniform(np.log(6), np.log(400), (g, 2)))
    xy = rng.uniform(0, 1, (g, 2)) * (np.array([640, 480]) - wh).clip(min=1)
    gt_box = np.c_[xy, wh]
    gt_cat = rng.integers(1, n_classes + 1, g)
    images = [
        {"id": int(i) + 1, "file_name": f"{i + 1:012d}.jpg", "width": 640, "height": 480}
        for i in range(n_images)
    ]
    anns = [
        {
            "id": j + 1,
            "image_id": int(img_of_gt[j]) + 1,
            "category_id": int(gt_cat[j]),
            "bbox": gt_box[j].tolist(),
            "area": float(wh[j, 0] * wh[j, 1]),
            "iscrowd": 0,
        }
        for j in range(g)
    ]
    # Predictions: per image, up to 3 jittered copies of each GT, then background boxes to 100.
    copies = np.minimum(rng.integers(1, 4, g), 3)
    src = np.repeat(np.arange(g), copies)
    img_src = img_of_gt[src]
    keep_per_img = np.zeros(n_images, np.int64)
    order = np.argsort(img_src, kind="stable")
    src, img_src = src[order], img_src[order]
    rank = np.arange(len(src)) - np.searchsorted(img_src, img_src)
    ok = rank < dets_per_image
    src, img_src = src[ok], img_src[ok]
    np.add.at(keep_per_img, img_src, 1)
    jit = rng.choice([0.02, 0.1, 0.3], len(src))[:, None] * rng.normal(size=(len(src), 4))
    det_box = gt_box[src] + jit * np.c_[gt_box[src, 2:], gt_box[src, 2:]]
    det_box[:, 2:] = det_box[:, 2:].clip(min=1)
    det_cat = np.where(rng.random(len(src)) < 0.85, gt_cat[src], rng.integers(1, n_classes + 1, len(src)))
    n_bg = dets_per_image - keep_per_img
    bg_img = np.repeat(np.arange(n_images), n_bg)
    bg_wh = np.exp(rng.uniform(np.log(6), np.log(300), (len(bg_img), 2)))
    bg_box = np.c_[rng.uniform(0, 1, (len(bg_img), 2)) * (np.array([640, 480]) - bg_wh).clip(min=1), bg_wh]
    all_img = np.r_[img_src, bg_img]
    all_box = np.r_[det_box, bg_box]
    all_cat = np.r_[det_cat, rng.integers(1, n_classes + 1, len(bg_img))]
    all_score = np.r_[rng.beta(4, 2, len(src)), rng.beta(1, 4, len(bg_img))]
    preds = [
        {
            "image_id": int(all_img[i]) + 1,
            "category_id": int(all_cat[i]),
            "bbox": all_box[i].tolist(),
            "score": float(all_score[i]),
        }
        for i in range(len(all_img))
    ]
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, n_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, preds


def time_coco(gt: dict[str, Any], preds: list[dict[str, Any]]) -> tuple[float, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(preds)
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.perf_counter() - t0, float(ev.stats[1])


def time_analysis(gt: dict[str, Any], preds: list[dict[str, Any]]) -> tuple[float, dict[str, float], float]:
    from detrkit.evaluation.analysis import run_analysis

    t0 = time.perf_counter()
    result = run_analysis(gt, preds, with_coco=False)
    total = time.perf_counter() - t0
    return total, result.timings, result.errors.ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes-per-image", type=float, default=7.3)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "analysis_speed.json")
    args = parser.parse_args()

    gt, preds = synthetic_coco(args.images, args.boxes_per_image, args.dets_per_image, args.classes, seed=0)
    coco_times, ours_times, stages = [], [], []
    for _ in range(args.repeat):
        t_coco, ap50_coco = time_coco(gt, preds)
        t_ours, stage, ap50_tide = time_analysis(gt, preds)
        coco_times.append(t_coco)
        ours_times.append(t_ours)
        stages.append(stage)
    best = int(np.argmin(ours_times))
    result = {
        "shape": {
            "images": len(gt["images"]),
            "gt_boxes": len(gt["annotations"]),
            "predictions": len(preds),
            "classes": args.classes,
        },
        "coco_eval_s": min(coco_times),
        "analysis_s": min(ours_times),
        "ratio": min(ours_times) / min(coco_times),
        "target_ratio": 2.0,
        "analysis_stages_s": stages[best],
        "all_runs": {"coco_eval_s": coco_times, "analysis_s": ours_times},
        "ap50_coco": ap50_coco * 100,
        "ap50_tide": ap50_tide,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("shape", "coco_eval_s", "analysis_s", "ratio")}, indent=2))


if __name__ == "__main__":
    main()
