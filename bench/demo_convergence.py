"""How fast does a demo recipe converge? AP50 on the shapes val set by optimizer step.

Trains the demo config (``configs/demo.yaml``) with ``key=value`` overrides through the engine
(``Trainer(load_config("demo", overrides)).fit()``) for ``--steps`` optimizer steps, evaluating
(COCO on the demo's shapes val set) every ``--steps // --evals`` steps: each engine "epoch" is cut to
that many steps with ``train.max_steps_per_epoch`` (at most one pass over the training set: with
800 images of batch 16, evaluations come at least every 50 steps), so the learning-rate schedule (warm-up, cosine)
spans exactly the ``--steps`` steps of the run, as it would in the demo. Prints one line per
evaluation (step, AP50, AP, train loss) and the training time per step (whose wall-clock depends on
the machine's load: the load average is printed with it), and appends a JSON record to
``--json``.

Example::

    .venv/bin/python bench/demo_convergence.py --steps 300 --evals 3 --tag bn \\
        model.overrides.backbone_norm=bn

Recipes are compared by AP50 per optimizer step (machine-independent); the seconds per step of the
final recipe, measured alone on the 2-core target, convert steps into the demo's 10-minute budget.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def run(steps: int, evals: int, overrides: list[str], tag: str, out_root: str, fresh_model: bool) -> dict:
    from detrkit.config import load_config
    from detrkit.engine.trainer import Trainer
    from detrkit.runs.metrics import read_metrics_csv

    per_eval = max(steps // evals, 1)
    cfg = load_config(
        "demo",
        [
            f"output.root={out_root}",
            f"output.name=conv_{tag}",
            "output.tensorboard=false",
            "output.plots=false",
            f"train.epochs={evals}",
            f"train.max_steps_per_epoch={per_eval}",
            "eval.every=1",
            *overrides,
        ],
    )
    if fresh_model:  # only the model options given on the command line, not the demo's
        given = {o.split("=", 1)[0].removeprefix("model.overrides.") for o in overrides}
        cfg.model.overrides = {k: v for k, v in cfg.model.overrides.items() if k in given}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = Trainer(cfg).fit()
    wall = time.perf_counter() - t0
    rows = read_metrics_csv(Path(summary["run_dir"]) / "metrics.csv")
    curve = [
        {
            "step": int(r["step"]),  # max_steps_per_epoch cannot exceed one pass over the data
            "AP50": float(r.get("val/AP50", float("nan"))),
            "AP": float(r.get("val/AP", float("nan"))),
            "train_loss": float(r.get("train/loss", float("nan"))),
            "epoch_s": float(r.get("time_s", float("nan"))),
        }
        for r in rows
    ]
    train_s = sum(c["epoch_s"] for c in curve)
    return {
        "tag": tag,
        "overrides": overrides,
        "model": cfg.model.name,
        "model_overrides": cfg.model.overrides,
        "steps": curve[-1]["step"] if curve else 0,
        "curve": curve,
        "s_per_step_incl_eval": train_s / max(curve[-1]["step"] if curve else 0, 1),
        "wall_s": wall,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the run")
    parser.add_argument("--evals", type=int, default=3, help="evaluations, evenly spaced")
    parser.add_argument("--tag", required=True, help="name of the recipe (run folder conv_TAG)")
    parser.add_argument("--out", default="runs/bench", help="folder of the run folders")
    parser.add_argument(
        "--json", default="bench/results/demo_convergence.jsonl", help="append the record here"
    )
    parser.add_argument(
        "--fresh-model",
        action="store_true",
        help="drop the demo's model.overrides, keep only the model.overrides.* given here",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    args = parser.parse_args()
    record = run(args.steps, args.evals, args.overrides, args.tag, args.out, args.fresh_model)
    for c in record["curve"]:
        print(
            f"[{record['tag']}] step {c['step']:5d}  AP50 {c['AP50']:.3f}  AP {c['AP']:.3f}  loss {c['train_loss']:.3f}"
        )
    print(
        f"[{record['tag']}] {record['s_per_step_incl_eval']:.2f} s/step (evaluation included), wall "
        f"{record['wall_s']:.0f}s, load average {record['load_avg_1min'][0]:.1f} -> {record['load_avg_1min'][1]:.1f}"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
