"""Prediction time and memory of the aerial architectures on a 1000 x 1000 image, and their weight size.

    python bench/aerial_speed.py [--models unet-tiny unet-r18-aspp] [--threads 2] [--size 1000]
        [--out bench/aerial_speed.json]

Random weights (time does not depend on them); the image goes through the same tiled prediction
as ``aerial predict`` (tile 256, overlap 64, batch 8, Hann blending). Weight size is the fp16
state dict as shipped. Peak RSS is the whole process (Python, torch and every model built so far).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from detrkit.aerial.model import build_aerial_model
from detrkit.aerial.tiling import predict_array


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["unet-tiny", "unet-r18-aspp"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--out", default="bench/aerial_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 255, (3, args.size, args.size), dtype=np.uint8)
    rows = []
    for name in args.models:
        model = build_aerial_model(name).eval()
        buf = io.BytesIO()
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buf)
        t0 = time.perf_counter()
        _, _, tiles = predict_array(model, image, tile=256, overlap=64, batch_size=8)
        rows.append(
            {
                "model": name,
                "parameters": sum(p.numel() for p in model.parameters()),
                "weights_fp16_mb": buf.tell() / 1e6,
                "tiles": tiles,
                "predict_s": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        print(json.dumps(rows[-1]))
    report = {"size": args.size, "threads": args.threads, "load_average": os.getloadavg(), "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
