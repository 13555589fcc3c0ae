"""Memory over a long run: a tiny detector trained for many epochs on the CPU, memory per epoch.

Trains ``detr-tiny`` (random init) on a small generated shapes dataset for ``--epochs`` epochs of
``--steps`` optimizer steps, validating every ``--eval-every`` epochs, and reads what the engine
records for every epoch in ``metrics.csv``: ``rss_mb`` (resident memory of the process at the end
of the epoch), ``memory_mb`` (peak RSS on the CPU; peak CUDA memory allocated in the epoch on a
GPU). The slope is a least-squares line through ``rss_mb`` after the first ``--warmup`` epochs
(allocator and caches settle there), in MB per epoch; a flat curve has a slope near 0.

Run: ``nice python bench/memory_soak.py [--epochs 60] [--steps 4] [--device cpu]``; resumable (the
run folder is kept in ``--workdir`` and continued with ``--resume``); writes
bench/results/memory_soak.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from detrkit.config import load_config
from detrkit.engine.run import train_from_config
from detrkit.runs.metrics import read_metrics_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per epoch")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=96, help="image side of the generated data")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5, help="epochs left out of the slope")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/memory_soak_run"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = args.workdir / "run"
    overrides = [
        "model.name=detr-tiny",
        "model.overrides={num_queries: 20}",
        f"data.shapes={{out: {args.workdir / 'shapes'}, train: 32, val: 8, size: {args.size}, seed: 0}}",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.train_preset=light",
        f"data.transform_args={{size: {args.size}, max_size: {2 * args.size}}}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps_per_epoch={args.steps}",
        f"train.device={args.device}",
        "train.checkpoint_every=0",
        f"eval.every={args.eval_every}",
        "output.tensorboard=false",
        "output.plots=false",
        f"output.dir={run}",
    ]
    t0 = time.perf_counter()
    if (run / "checkpoints" / "last.pt").is_file():
        train_from_config(None, [f"train.epochs={args.epochs}"], resume=run)
    else:
        train_from_config(load_config(None, overrides), [])
    rows = read_metrics_csv(run / "metrics.csv")
    rss = np.array([float(r["rss_mb"]) for r in rows])
    peak = np.array([float(r["memory_mb"]) for r in rows])
    epochs = np.arange(1, len(rows) + 1)
    tail = slice(args.warmup, None)
    slope, intercept = np.polyfit(epochs[tail], rss[tail], 1)
    result = {
        "benchmark": "memory_soak",
        "what": "detr-tiny (random init) on generated shapes, CPU; rss_mb/memory_mb per epoch from metrics.csv",
        "command": "nice python bench/memory_soak.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "workdir"),
        "epochs": len(rows),
        "steps_per_epoch": args.steps,
        "batch_size": args.batch_size,
        "image_size": args.size,
        "rss_mb_per_epoch": [round(float(v), 1) for v in rss],
        "peak_mb_per_epoch": [round(float(v), 1) for v in peak],
        "slope_mb_per_epoch_after_warmup": round(float(slope), 4),
        "rss_growth_mb_after_warmup": round(float(rss[-1] - rss[args.warmup]), 1),
        "rss_first_last_mb": [round(float(rss[0]), 1), round(float(rss[-1]), 1)],
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": args.device,
        },
    }
    out = Path(__file__).parent / "results" / "memory_soak.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in result.items() if "per_epoch" not in k or k.startswith("slope")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
