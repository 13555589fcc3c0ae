"""Peak memory of the streamed tiled prediction on a very wide raster.

    python bench/aerial_memory.py [--width 20000] [--heights 1024 3072] [--model RUN|FILE] [--out bench/aerial_memory.json]

Builds a ``width x height`` GeoTIFF (tiled, deflate) from generated scenes, window by window, then
runs ``AerialPredictor.predict_file`` on it in a fresh process per height and records the peak RSS.
The buffers are ``tile x width``, so the peak must not grow with the height: a 20000 x 20000 raster
takes the same memory as a 20000 x 1024 one (plus its building polygons).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window


def make_raster(path: Path, width: int, height: int) -> None:
    from detrkit.aerial.synth import render_tile

    block = render_tile(np.random.default_rng(0), 1024, 0.4)[0].transpose(2, 0, 1)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "crs": "EPSG:32631",
        "transform": Affine(0.4, 0, 400000, 0, -0.4, 5400000),
        "BIGTIFF": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, height, 1024):
            for c0 in range(0, width, 1024):
                h, w = min(1024, height - r0), min(1024, width - c0)
                dst.write(block[:, :h, :w], window=Window(c0, r0, w, h))


def child(src: str, out: str, model: str | None) -> None:
    from detrkit.aerial.predict import AerialPredictor

    pred = (
        AerialPredictor.from_checkpoint(model, device="cpu")
        if model
        else AerialPredictor.default(device="cpu")
    )
    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    s = pred.predict_file(src, out)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mib": round(peak_mib, 1),
                "rss_after_model_load_mib": round(base_mib, 1),
                "tiles": s["tiles"],
                "buildings": s["building_count"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=20000)
    ap.add_argument("--heights", type=int, nargs="+", default=[1024, 3072])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="bench/aerial_memory.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.model)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for h in args.heights:
            src = Path(tmp) / f"in_{h}.tif"
            make_raster(src, args.width, h)
            cmd = [sys.executable, __file__, "--child", str(src), str(Path(tmp) / f"out_{h}")]
            cmd += ["--model", args.model] if args.model else []
            line = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            results.append({"width": args.width, "height": h, **json.loads(line)})
            print(results[-1], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
