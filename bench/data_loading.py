"""Data loading throughput: decode + transforms + collate, against Hugging Face ``DetrImageProcessor``.

Generates ~200 640x480 JPEGs with COCO boxes in a temp folder, then measures images/s of

- detrkit ``CocoDetection`` + ``DetectionCollator`` with the ``detr`` train preset and the ``val``
  preset (shorter side 800, longer at most 1333), in-process and with 1 and 2 DataLoader workers;
- ``transformers.DetrImageProcessor`` preparing the same images and COCO detection annotations
  (PIL decode, resize shortest edge 800 / longest 1333, rescale, normalise, pad, box conversion),
  one image per call, in-process;
- loading a COCO val2017-shaped instances file (5k images, 36.8k boxes, 80 classes) into a
  ``CocoIndex`` on top of ``json.load``.

Writes ``bench/results/data_loading.json`` and prints a table. Single-threaded torch
(``OMP_NUM_THREADS=1``) so that images/s per worker is images/s per core.

    OMP_NUM_THREADS=1 .venv/bin/python bench/data_loading.py [--images 200] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from detrkit.data.coco import CocoIndex  # noqa: E402
from detrkit.data.collate import DetectionCollator  # noqa: E402
from detrkit.data.dataset import CocoDetection  # noqa: E402
from detrkit.data.transforms import build_transforms  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "data_loading.json"


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` photo-like 640x480 JPEGs (smooth noise, quality 90) and a COCO file with 2-8 boxes each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(1, n + 1):
        small = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
        img.save(root / "images" / f"{i:06d}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480})
        for _ in range(int(rng.integers(2, 9))):
            w, h = rng.uniform(16, 300), rng.uniform(16, 240)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(rng.integers(1, 11)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, 11)]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann


def bench_detrkit(ann: Path, images: Path, preset: str, workers: int, repeats: int) -> float:
    ds = CocoDetection(ann, images, transforms=build_transforms(preset, train=preset == "detr"))
    loader = DataLoader(
        ds,
        batch_size=4,
        shuffle=False,
        num_workers=workers,
        collate_fn=DetectionCollator(),
        persistent_workers=workers > 0,
    )
    for i, _ in enumerate(loader):  # warm-up epoch start-up (worker spawn, first decodes)
        if i == 2:
            break
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        for batch in loader:
            n += len(batch)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def bench_hf(ann: Path, images: Path, repeats: int) -> float:
    from transformers import DetrImageProcessor

    proc = DetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333}, format="coco_detection")
    index = CocoIndex.load(ann)
    items = [
        (
            images / im.file_name,
            {
                "image_id": im.id,
                "annotations": [
                    {
                        "bbox": list(a.bbox_xywh),
                        "category_id": a.category_id,
                        "area": a.area,
                        "iscrowd": a.iscrowd,
                    }
                    for a in index.anns_by_image(im.id)
                ],
            },
        )
        for im in index.images
    ]
    for path, target in items[:3]:
        proc(images=Image.open(path).convert("RGB"), annotations=target, return_tensors="pt")
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for path, target in items:
            proc(images=Image.open(path).convert("RGB"), annotations=target, return_tensors="pt")
        best = max(best, len(items) / (time.perf_counter() - t0))
    return best


def bench_coco_load(tmp: Path) -> dict[str, float]:
    """val2017 shape: 5000 images, 36781 boxes with one 14-point polygon each, 80 classes."""
    rng = random.Random(0)
    imgs = [
        {
            "id": i,
            "file_name": f"{i:012d}.jpg",
            "width": 640,
            "height": 480,
            "license": 1,
            "coco_url": "http://x",
            "date_captured": "2013-11-14 11:18:45",
            "flickr_url": "http://y",
        }
        for i in range(1, 5001)
    ]
    anns = [
        {
            "id": j,
            "image_id": rng.randint(1, 5000),
            "category_id": rng.randint(1, 80),
            "bbox": [rng.uniform(0, 500), rng.uniform(0, 400), rng.uniform(1, 100), rng.uniform(1, 70)],
            "area": rng.uniform(1, 7000),
            "iscrowd": 0,
            "segmentation": [[round(rng.uniform(0, 600), 2) for _ in range(28)]],
        }
        for j in range(1, 36782)
    ]
    cats = [{"id": i, "name": f"c{i}", "supercategory": "s"} for i in range(1, 81)]
    path = tmp / "val2017_shape.json"
    path.write_text(
        json.dumps({"info": {}, "licenses": [], "images": imgs, "annotations": anns, "categories": cats})
    )
    best = {"json_load_s": 1e9, "index_s": 1e9, "group_and_arrays_s": 1e9}
    for _ in range(3):
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            d = json.load(f)
        t1 = time.perf_counter()
        index = CocoIndex.from_dict(d, source=path)
        t2 = time.perf_counter()
        index.anns_by_image(1)
        index.ann_arrays()
        t3 = time.perf_counter()
        for k, v in (("json_load_s", t1 - t0), ("index_s", t2 - t1), ("group_and_arrays_s", t3 - t2)):
            best[k] = min(best[k], v)
    best["file_mb"] = path.stat().st_size / 1e6
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        ann = make_images(tmp, args.images)
        images = tmp / "images"
        hf = bench_hf(ann, images, args.repeats)
        rows.append(
            {"pipeline": "transformers DetrImageProcessor (800/1333)", "workers": 0, "images_per_s": hf}
        )
        for preset in ("val", "detr"):
            for workers in (0, 1, 2):
                ips = bench_detrkit(ann, images, preset, workers, args.repeats)
                rows.append(
                    {
                        "pipeline": f"detrkit CocoDetection, preset {preset}",
                        "workers": workers,
                        "images_per_s": ips,
                    }
                )
        coco = bench_coco_load(tmp)
    for r in rows:
        r["vs_hf_per_core"] = r["images_per_s"] / max(1, r["workers"]) / hf
    result = {
        "images": args.images,
        "image_size": [640, 480],
        "batch_size": 4,
        "omp_threads": 1,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
        "coco_val2017_shape_load": coco,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'pipeline':<48} {'workers':>7} {'img/s':>8} {'x HF/core':>10}")
    for r in rows:
        print(f"{r['pipeline']:<48} {r['workers']:>7} {r['images_per_s']:>8.1f} {r['vs_hf_per_core']:>10.2f}")
    print(
        f"COCO val2017-shaped file ({coco['file_mb']:.1f} MB): json.load {coco['json_load_s']:.3f} s, "
        f"CocoIndex {coco['index_s']:.3f} s, grouping + arrays {coco['group_and_arrays_s']:.3f} s"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
