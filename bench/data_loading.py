"""Data loading throughput: decode + transforms + collate, against Hugging Face ``DetrImageProcessor``.

Generates 640x480 JPEGs (COCO-sized) with COCO boxes in a temp folder, then measures images/s of

- JPEG decode alone, as each side does it (``torchvision.io.decode_image``; PIL ``open().convert``),
  which bounds both pipelines;
- ``transformers.DetrImageProcessor`` (torch backend) preparing the same images and COCO detection
  annotations with the same settings as our ``val`` preset: PIL decode, resize shortest edge 800 /
  longest 1333, rescale + normalise, pad, box conversion to normalised cxcywh; one image per call and
  four per call (padded to one batch, as our collate does);
- detrkit ``CocoDetection`` + ``DetectionCollator`` (batch 4) with the ``val`` preset (the same
  800/1333 resize: the like-for-like comparison) and the ``detr`` train preset (random flip,
  multi-scale 480..800 or resize-crop-resize: smaller images on average), in-process and with 1
  and 2 DataLoader workers. Our batches are uint8 (the model input is normalised on the device by
  ``Batch.normalized()``); the ``+ normalise on the CPU`` rows add that step on the CPU, which is
  the like-for-like row against HF's float32 output when training runs on the CPU;
- loading a COCO val2017-shaped instances file (5k images, 36.8k boxes, 80 classes) into a
  ``CocoIndex`` on top of ``json.load``.

All pipelines are measured in rounds, one pass of each per round, interleaved, and the best round
of each is kept, so that load from other processes hits every pipeline alike. Single-threaded torch
(``OMP_NUM_THREADS=1``; DataLoader workers set one thread themselves) so that in-process images/s is
images/s per core; ``x HF/core`` divides by ``max(1, workers)``. Writes
``bench/results/data_loading.json`` and prints a markdown table.

    OMP_NUM_THREADS=1 .venv/bin/python bench/data_loading.py [--images 120] [--rounds 5]
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


def _timed(fn, n: int) -> float:
    """Images/s of one call of ``fn`` that processes ``n`` images."""
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def detrkit_pass(ann: Path, images: Path, preset: str, workers: int, normalize: bool = False):
    """A callable running one epoch of a persistent DataLoader over the dataset (warmed up).

    Batches are uint8 (normalised on the device by the consumer); ``normalize`` also runs
    ``Batch.normalized()`` on the CPU in the main process, as a CPU-only training run would.
    """
    ds = CocoDetection(ann, images, transforms=build_transforms(preset, train=preset == "detr"))
    loader = DataLoader(
        ds,
        batch_size=4,
        shuffle=False,
        num_workers=workers,
        collate_fn=DetectionCollator(),
        persistent_workers=workers > 0,
    )
    for i, _ in enumerate(loader):  # warm-up: worker start-up, first decodes
        if i == 2:
            break

    def run() -> None:
        n = 0
        for batch in loader:
            n += len(batch)
            if normalize:
                batch.normalized()
        assert n == len(ds)

    return run, len(ds)


def hf_pass(ann: Path, images: Path, per_call: int):
    """A callable preparing every image + annotations with ``DetrImageProcessor``, ``per_call`` at a time."""
    from transformers import DetrImageProcessor

    proc = DetrImageProcessor(
        size={"shortest_edge": 800, "longest_edge": 1333},
        format="coco_detection",
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_pad=True,
    )
    index = CocoIndex.load(ann)
    items = [
        (
            images / im.file_name,
            {
                "image_id": im.id,
                "annotations": [
                    {"bbox": list(a.bbox_xywh), "category_id": a.category_id, "area": a.area, "iscrowd": 0}
                    for a in index.anns_by_image(im.id)
                ],
            },
        )
        for im in index.images
    ]
    chunks = [items[i : i + per_call] for i in range(0, len(items), per_call)]

    def run() -> None:
        for chunk in chunks:
            pil = [Image.open(path).convert("RGB") for path, _ in chunk]
            proc(images=pil, annotations=[t for _, t in chunk], return_tensors="pt")

    run_one = chunks[0]
    proc(
        images=[Image.open(p).convert("RGB") for p, _ in run_one],
        annotations=[t for _, t in run_one],
        return_tensors="pt",
    )
    return run, len(items)


def decode_pass(images: Path, how: str):
    from torchvision.io import ImageReadMode, decode_image

    paths = sorted(images.glob("*.jpg"))

    def run() -> None:
        for p in paths:
            if how == "torchvision":
                decode_image(str(p), mode=ImageReadMode.RGB, apply_exif_orientation=True)
            else:
                np.asarray(Image.open(p).convert("RGB"))

    return run, len(paths)


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


HF_ROW = "transformers DetrImageProcessor, 1 image/call"
HF_BATCH_ROW = "transformers DetrImageProcessor, 4 images/call"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--results-md", type=Path, default=RESULTS.parent.parent / "RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        ann = make_images(tmp, args.images)
        images = tmp / "images"
        cases: dict[tuple[str, int], tuple] = {
            ("decode only: torchvision.io.decode_image", 0): decode_pass(images, "torchvision"),
            ("decode only: PIL open + convert RGB", 0): decode_pass(images, "pil"),
            (HF_ROW, 0): hf_pass(ann, images, 1),
            (HF_BATCH_ROW, 0): hf_pass(ann, images, 4),
        }
        for preset in ("val", "detr"):
            for workers in (0, 1, 2):
                cases[(f"detrkit CocoDetection, preset {preset}", workers)] = detrkit_pass(
                    ann, images, preset, workers
                )
            cases[(f"detrkit CocoDetection, preset {preset}, + normalise on the CPU", 0)] = detrkit_pass(
                ann, images, preset, 0, normalize=True
            )
        best = dict.fromkeys(cases, 0.0)
        for _ in range(args.rounds):
            for key, (fn, n) in cases.items():
                best[key] = max(best[key], _timed(fn, n))
        del cases  # shuts the persistent workers down
        coco = bench_coco_load(tmp)
    load_after = os.getloadavg()
    hf, hf_batch = best[(HF_ROW, 0)], best[(HF_BATCH_ROW, 0)]
    rows = [
        {
            "pipeline": name,
            "workers": workers,
            "images_per_s": ips,
            "vs_hf_per_core": ips / max(1, workers) / hf,
            "vs_hf_batch4_per_core": ips / max(1, workers) / hf_batch,
        }
        for (name, workers), ips in best.items()
    ]
    command = f"OMP_NUM_THREADS=1 .venv/bin/python bench/data_loading.py --images {args.images} --rounds {args.rounds}"
    result = {
        "images": args.images,
        "image_size": [640, 480],
        "batch_size": 4,
        "rounds": args.rounds,
        "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "cpu_count": os.cpu_count(),
        "machine": _cpu_name(),
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "command": command,
        "rows": rows,
        "coco_val2017_shape_load": coco,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    table = _markdown(result)
    print(table)
    if args.results_md:
        _write_section(args.results_md, table)
    print(
        f"wrote {args.out}"
        + (f" and the '## Data loading' section of {args.results_md}" if args.results_md else "")
    )


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores ({platform.machine()})"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _markdown(r: dict) -> str:
    lb, la = r["load_average_1_5_15_before"], r["load_average_1_5_15_after"]
    lines = [
        f"{r['images']} generated {r['image_size'][0]}x{r['image_size'][1]} JPEGs (quality 90, 2-8 boxes each), "
        f"batch {r['batch_size']}, best of {r['rounds']} interleaved rounds. Machine: {r['machine']}; "
        f"torch {r['torch']}, transformers {r['transformers']}; load average (1/5/15 min) "
        f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} before, {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} after. "
        f"`x HF/core` = images/s / max(1, workers) / HF one image per call; `x HF-b4/core` the same "
        "against HF four images per call (padded to one batch, like our collate).",
        "",
        "| pipeline | workers | images/s | x HF/core | x HF-b4/core |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {x['pipeline']} | {x['workers']} | {x['images_per_s']:.1f} | {x['vs_hf_per_core']:.2f} "
        f"| {x['vs_hf_batch4_per_core']:.2f} |"
        for x in r["rows"]
    ]
    c = r["coco_val2017_shape_load"]
    lines += [
        "",
        f"COCO val2017-shaped file ({c['file_mb']:.1f} MB): json.load {c['json_load_s']:.3f} s, "
        f"CocoIndex {c['index_s']:.3f} s, grouping + arrays {c['group_and_arrays_s']:.3f} s.",
        "",
        f"Command: `{r['command']}`",
    ]
    return "\n".join(lines)


MEASURED_BEGIN = "<!-- data_loading.py: measured table -->"
MEASURED_END = "<!-- /data_loading.py -->"


def _write_section(path: Path, table: str) -> None:
    """Replace only the generated table inside ``## Data loading`` (other sections and prose stay)."""
    block = f"{MEASURED_BEGIN}\n{table}\n{MEASURED_END}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if MEASURED_BEGIN in text and MEASURED_END in text:
        a, b = text.index(MEASURED_BEGIN), text.index(MEASURED_END) + len(MEASURED_END)
        text = text[:a] + block + text[b:]
    elif "## Data loading" in text:
        a = text.index("## Data loading")
        nl = text.find("\n", a)
        text = text[: nl + 1] + "\n" + block + "\n" + text[nl + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n## Data loading\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
