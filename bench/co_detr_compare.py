"""Plain Deformable DETR vs + hybrid matching (H-DETR) vs Co-Deformable-DETR at an equal budget.

All three arms train the same tiny model on the demo's shapes data (``configs/demo.yaml``: 800 train
/ 100 val images of 128 px, batch 8, AdamW 1e-3, cosine, clip 0.1, trainable BatchNorm) for the
same number of optimizer steps and seeds, from scratch, with learned queries (hybrid matching
needs them; the demo's two-stage and dense-loss options are switched off for all arms):

- ``plain``: ``deformable-detr-tiny`` with box refinement, 3 levels, d_model 64, 50 queries;
- ``hybrid``: the same + a one-to-many group of 100 queries matched to the targets repeated 4x;
- ``co``: ``co-deformable-detr-tiny`` with the same options (ATSS + Faster R-CNN auxiliary heads on
  the encoder, their positives as extra queries; loss weights the builder's defaults).

Each run is evaluated (COCO, the shapes val set) every ``--steps // --evals`` steps; one JSON per run
goes to ``--out`` (resumable: finished runs are skipped) and the summary (mean and standard
deviation over seeds of the final AP and AP50, steps, training seconds) to ``--summary``.

Example (what bench/RESULTS.md reports)::

    nice -n 10 .venv/bin/python bench/co_detr_compare.py --steps 300 --evals 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

COMMON = [
    "model.overrides.backbone_norm=bn",
    "model.overrides.with_box_refine=true",
    "model.overrides.num_feature_levels=3",
    "model.overrides.d_model=64",
    "model.overrides.num_heads=4",
    "model.overrides.dim_feedforward=128",
    "model.overrides.num_queries=50",
    "model.overrides.dropout=0.0",
]
ARMS = {
    "plain": ["model.name=deformable-detr-tiny"],
    "hybrid": ["model.name=deformable-detr-tiny", "model.overrides.one_to_many={k: 4, queries: 100}"],
    "co": ["model.name=co-deformable-detr-tiny"],
}


def run_one(arm: str, seed: int, *, steps: int, evals: int, root: Path) -> dict:
    from detrkit.config import load_config
    from detrkit.engine.trainer import Trainer
    from detrkit.runs.metrics import read_metrics_csv

    per_eval = max(steps // evals, 1)
    cfg = load_config(
        "demo",
        [
            f"output.root={root / 'runs'}",
            f"output.name={arm}_s{seed}",
            "output.tensorboard=false",
            "output.plots=false",
            f"data.shapes.out={root / 'shapes'}",
            f"train.seed={seed}",
            f"train.epochs={evals}",
            f"train.max_steps_per_epoch={per_eval}",
            "eval.every=1",
            *COMMON,
            *ARMS[arm],
        ],
    )
    given = {o.split("=", 1)[0].removeprefix("model.overrides.") for o in COMMON + ARMS[arm]}
    cfg.model.overrides = {k: v for k, v in cfg.model.overrides.items() if k in given}
    t0 = time.perf_counter()
    summary = Trainer(cfg).fit()
    wall = time.perf_counter() - t0
    rows = read_metrics_csv(Path(summary["run_dir"]) / "metrics.csv")
    curve = [
        {
            "step": int(r["step"]),
            "AP": float(r.get("val/AP", "nan")),
            "AP50": float(r.get("val/AP50", "nan")),
            "train_loss": float(r.get("train/loss", "nan")),
            "epoch_s": float(r.get("time_s", "nan")),
        }
        for r in rows
    ]
    return {
        "arm": arm,
        "seed": seed,
        "model": cfg.model.name,
        "model_overrides": cfg.model.overrides,
        "steps": curve[-1]["step"] if curve else 0,
        "curve": curve,
        "train_s": sum(c["epoch_s"] for c in curve),
        "wall_s": wall,
        "load_avg_1min_end": os.getloadavg()[0],
    }


def summarise(records: list[dict]) -> dict:
    out = {}
    for arm in ARMS:
        rs = [r for r in records if r["arm"] == arm]
        if not rs:
            continue
        final = [r["curve"][-1] for r in rs]
        stats = {}
        for key in ("AP", "AP50"):
            vals = [f[key] for f in final]
            stats[key] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "values": vals,
            }
        out[arm] = {
            "seeds": [r["seed"] for r in rs],
            **stats,
            "steps": rs[0]["steps"],
            "train_s_mean": statistics.fmean(r["train_s"] for r in rs),
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in rs),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--evals", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--root", default="/tmp/detrkit_co_detr_compare", help="data and run folders")
    parser.add_argument("--out", default="bench/results/co_detr_compare", help="one JSON per run")
    parser.add_argument("--summary", default="bench/results/co_detr_compare.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seed-major: every arm gets seed 0 before any gets seed 1
        for arm in args.arms:
            path = out / f"{arm}_s{seed}_{args.steps}steps.json"
            if path.is_file():
                continue
            record = run_one(arm, seed, steps=args.steps, evals=args.evals, root=Path(args.root))
            path.write_text(json.dumps(record, indent=1))
            last = record["curve"][-1]
            print(
                f"{arm} seed {seed}: AP {last['AP']:.3f} AP50 {last['AP50']:.3f} in {record['train_s']:.0f} s",
                flush=True,
            )
    records = [json.loads(p.read_text()) for p in sorted(out.glob(f"*_{args.steps}steps.json"))]
    summary = {"steps": args.steps, "command": "bench/co_detr_compare.py", "arms": summarise(records)}
    Path(args.summary).write_text(json.dumps(summary, indent=1))
    for arm, s in summary["arms"].items():
        print(
            f"{arm:7s} AP {s['AP']['mean']:.3f} ± {s['AP']['std']:.3f}  AP50 {s['AP50']['mean']:.3f} ± "
            f"{s['AP50']['std']:.3f}  steps {s['steps']}  train {s['train_s_mean']:.0f} s  (seeds {s['seeds']})"
        )


if __name__ == "__main__":
    main()
