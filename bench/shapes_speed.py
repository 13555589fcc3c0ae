"""Speed of the built-in shapes dataset generator (images per second, one process).

Run: ``python bench/shapes_speed.py [--images N] [--size S]``; writes bench/results/shapes_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from detrkit.data.shapes import generate_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates = []
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate_shapes(tmp, train=args.images, val=0, size=args.size, seed=rep, workers=1)
            rates.append(args.images / (time.perf_counter() - start))
    result = {
        "benchmark": "shapes_speed",
        "what": "generate_shapes(train=N, val=0, workers=1): draw + JPEG encode + write + JSON",
        "images": args.images,
        "size": args.size,
        "repeats": args.repeats,
        "images_per_s_best": round(max(rates), 1),
        "images_per_s_median": round(sorted(rates)[len(rates) // 2], 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    out = Path(__file__).parent / "results" / "shapes_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
