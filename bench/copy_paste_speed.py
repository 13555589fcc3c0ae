"""Copy-paste generation speed at 640x480 on one core (target: at least 50 images/s end to end).

Builds a COCO dataset of ``--images`` 640x480 JPEGs (textured backgrounds, 3-6 polygon objects of
four classes, one of them rare) in a temp folder, then times:

- ``end_to_end``: ``detrkit.synth.generate.synthesize(method="copy-paste")`` -- JPEG decode of the
  background, 1-3 pastes with occlusion updates, RLE annotations, JPEG encode (quality 95), the
  COCO/metadata JSON and the sample grid; the instance bank is built before the clock starts
  (timed separately as ``bank_build_s``);
- ``paste_only``: the same pastes into an in-memory image (scene from annotations, pastes,
  annotations out), no file I/O.

Single-threaded (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``). Writes
``bench/results/copy_paste_speed.json`` and prints a summary.

    OMP_NUM_THREADS=1 .venv/bin/python bench/copy_paste_speed.py [--images 60] [--out-images 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 640, 480
CLASSES = ["person", "car", "dog", "train"]  # 'train' is the rare one


def make_dataset(root: Path, n: int, seed: int) -> Path:
    """``n`` 640x480 JPEGs with polygon annotations; about 1 object in 12 is the rare class."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        base = rng.integers(0, 256, (H // 16, W // 16, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((W, H), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):
            cat = 4 if rng.random() < 1 / 12 else int(rng.integers(1, 4))
            cx, cy = rng.uniform(60, W - 60), rng.uniform(60, H - 60)
            r = rng.uniform(20, 70)
            t = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(6, 14))))
            rad = r * rng.uniform(0.6, 1.0, t.size)
            pts = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1).clip(0, [W - 1, H - 1])
            draw.polygon([tuple(p) for p in pts], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0) * 0.6),
                    "segmentation": [pts.ravel().round(2).tolist()],
                }
            )
        img.save(root / "images" / f"{i:06d}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"{i:06d}.jpg", "width": W, "height": H})
    cats = [{"id": k + 1, "name": n, "supercategory": "thing"} for k, n in enumerate(CLASSES)]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def time_end_to_end(index: Any, images: Path, out: Path, per_class: int, seed: int) -> tuple[float, float]:
    from detrkit.synth import generate
    from detrkit.synth.bank import InstanceBank

    opts = generate.SynthOptions(method="copy-paste", per_class=per_class, seed=seed)
    t0 = time.perf_counter()
    bank = InstanceBank.from_coco(index, images, category_ids=[4], min_area=64, seed=seed)
    bank_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate.synthesize(index, images, out, classes=["train"], options=opts, bank=bank)
    return per_class / (time.perf_counter() - t0), bank_s


def time_paste_only(index: Any, images: Path, n: int, seed: int) -> float:
    from detrkit.synth.bank import InstanceBank, ann_to_dict, load_rgb_array
    from detrkit.synth.copy_paste import PasteParams, paste_instance, scene_from_annotations

    bank = InstanceBank.from_coco(index, images, category_ids=[4], min_area=64, seed=seed)
    rng = np.random.default_rng(seed)
    backgrounds = [(info, load_rgb_array(images, info)) for info in index.images[:20]]
    params = PasteParams()
    t0 = time.perf_counter()
    for k in range(n):
        info, pixels = backgrounds[k % len(backgrounds)]
        image = pixels.copy()
        scene = scene_from_annotations([ann_to_dict(a) for a in index.anns_by_image(info.id)], H, W)
        for _ in range(int(rng.integers(1, 4))):
            paste_instance(image, scene, bank.sample(4, rng), rng, params)
        [obj.annotation() for obj in scene]
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="source images to build")
    parser.add_argument("--out-images", type=int, default=300, help="synthetic images per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--result", type=Path, default=Path(__file__).parent / "results" / "copy_paste_speed.json"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from detrkit.data.coco import CocoIndex

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ann = make_dataset(root / "src", args.images, args.seed)
        index = CocoIndex.load(ann)
        e2e, bank_s, paste = [], [], []
        for r in range(args.repeats):
            ips, bs = time_end_to_end(
                index, root / "src" / "images", root / f"out{r}", args.out_images, args.seed + r
            )
            e2e.append(ips)
            bank_s.append(bs)
            paste.append(time_paste_only(index, root / "src" / "images", args.out_images, args.seed + r))
        rare = sum(a.category_id == 4 for a in index.annotations)
    result = {
        "benchmark": "copy_paste_speed",
        "image_size": [W, H],
        "source_images": args.images,
        "rare_instances_in_bank": rare,
        "synthetic_images_per_run": args.out_images,
        "repeats": args.repeats,
        "end_to_end_images_per_s": {"median": statistics.median(e2e), "runs": [round(v, 1) for v in e2e]},
        "paste_only_images_per_s": {"median": statistics.median(paste), "runs": [round(v, 1) for v in paste]},
        "bank_build_s": {"median": statistics.median(bank_s)},
        "target_images_per_s": 50,
        "meets_target": statistics.median(e2e) >= 50,
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        },
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/copy_paste_speed.py",
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"end to end: {result['end_to_end_images_per_s']['median']:.1f} images/s (runs {result['end_to_end_images_per_s']['runs']})"
    )
    print(
        f"paste only: {result['paste_only_images_per_s']['median']:.1f} images/s (runs {result['paste_only_images_per_s']['runs']})"
    )
    print(f"bank build: {result['bank_build_s']['median']:.2f} s for {rare} instances; wrote {args.result}")


if __name__ == "__main__":
    main()
