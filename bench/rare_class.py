"""Does synthetic data lift truly rare classes? The rare-class protocol of issue 18.

A long-tailed shapes variant (``detrkit data shapes --rare star=30,cross=30``: 30 training
instances each of ``star`` and ``cross`` among ~3,000 of the six frequent classes; a val set with
exactly 300 of each rare class) and the demo model, trained by ``detrkit ablate`` with the same
budget in every arm:

- ``baseline`` (uniform sampling);
- ``copy-paste``: offline copy-paste, ``--per-class`` synthetic images per rare class;
- ``copy-paste-online``: online copy-paste with Simple Copy-Paste's scale jitter (0.1-2.0);
- ``rfs``: repeat-factor sampling (t 0.3);
- ``copy-paste-online+rfs``: both.

The script writes the protocol's config (``OUT/config.yaml``), runs ``detrkit ablate`` on it (as a
subprocess, so the ablation's own resume applies: finished runs are kept, a stopped run continues
from its last epoch), then collects every finished run into ``bench/results/rare_class.json``::

    {"protocol": {...}, "runs": [{"arm", "seed", "rare_ap", "rare_ap50", "frequent_ap",
                                  "frequent_ap50", "per_class_ap": {name: AP}}]}

(AP as fractions) and the paired comparison against the baseline across the seeds both have
(``scipy.stats.ttest_rel``), with per-run extras (per-class AP50, overall AP, steps), into
``bench/results/rare_class_tests.json``. Run it again with the same
arguments to continue; ``--collect`` only collects.

Example (screening, one seed; then the strongest arms on 5 seeds)::

    nice -n 10 nohup .venv/bin/python bench/rare_class.py --seeds 0 > rare.log 2>&1 &
    .venv/bin/python bench/rare_class.py --seeds 0,1,2,3,4 --arms baseline,copy-paste-online
    .venv/bin/python bench/rare_class.py --curves    # per-class AP of the kept epoch_N.pt checkpoints
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

RARE = ("star", "cross")
ARMS = "baseline,copy-paste-online,copy-paste,rfs,copy-paste-online+rfs"


def protocol_config(args: argparse.Namespace) -> dict[str, Any]:
    """The base config of every arm: the demo recipe on the long-tailed shapes variant."""
    return {
        "data": {
            "shapes": {
                "out": str(Path(args.out) / "shapes"),
                "train": args.train_images,
                "val": args.val_images,
                "size": args.size,
                "seed": 0,
                "class_counts": {name: args.rare_count for name in RARE},
                "val_class_counts": {name: args.val_rare_count for name in RARE},
            },
        },
        "train": {"epochs": args.epochs, "checkpoint_every": args.checkpoint_every, "preflight": False},
        "eval": {"every": args.eval_every},
        "output": {"tensorboard": False, "plots": False},
    }


def write_config(args: argparse.Namespace) -> Path:
    from detrkit.config import deep_merge, load_config

    demo = load_config("demo").to_dict()
    merged = deep_merge(demo, protocol_config(args))
    path = Path(args.out) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(merged, sort_keys=False)
    if path.is_file() and path.read_text() != text:
        sys.exit(f"{path}: exists with another protocol; use another --out (runs would not be comparable)")
    path.write_text(text)
    return path


def run_ablation(args: argparse.Namespace, config: Path) -> int:
    cmd = [
        str(Path(sys.executable).with_name("detrkit")),
        "ablate",
        "--config",
        str(config),
        "--arms",
        args.arms,
        "--seeds",
        ",".join(str(seed) for seed in _seeds(args)) + ",",  # a list, even of one seed
        "--rare",
        ",".join(RARE),
        "--per-class",
        str(args.per_class),
        "--online-p",
        str(args.online_p),
        "--online-scale",
        args.online_scale,
        "--rfs-threshold",
        str(args.rfs_threshold),
        "--out",
        str(Path(args.out) / "ablation"),
    ]
    if "baseline" not in args.arms.split(","):
        cmd.append("--no-baseline")  # the baseline runs in another process (same --out)
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _seeds(args: argparse.Namespace) -> list[int]:
    return [int(s) for s in args.seeds.split(",") if s.strip()]


def run_record(run_dir: Path) -> dict[str, Any] | None:
    """One finished run (its ``metrics.json`` and ``ablation.json``) in the results schema."""
    metrics, meta = run_dir / "metrics.json", run_dir / "ablation.json"
    if not (metrics.is_file() and meta.is_file()):
        return None
    summary, details = json.loads(metrics.read_text()), json.loads(meta.read_text())
    per_class = {c["name"]: c for c in summary.get("per_class") or []}
    rare = [n for n in per_class if n in details["rare_classes"]]
    frequent = [n for n in per_class if n not in rare]

    def mean(names: list[str], key: str) -> float:
        return statistics.fmean(per_class[n][key] for n in names)

    return {
        "arm": details["arm"],
        "seed": details["seed"],
        "rare_ap": mean(rare, "AP"),
        "rare_ap50": mean(rare, "AP50"),
        "frequent_ap": mean(frequent, "AP"),
        "frequent_ap50": mean(frequent, "AP50"),
        "per_class_ap": {n: c["AP"] for n, c in per_class.items()},
        # not in the results schema: kept for the tests file only (see collect)
        "_extra": {
            "per_class_ap50": {n: c["AP50"] for n, c in per_class.items()},
            "ap": summary["final"].get("val/AP"),
            "steps": _last_step(run_dir),
            "run_dir": str(run_dir),
        },
    }


def _epochs_done(run_dir: Path) -> int:
    """Epochs in ``metrics.csv`` (a row per finished epoch), 0 when none."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return 0
    with open(path) as f:
        return len(list(csv.DictReader(f)))


def _last_step(run_dir: Path) -> int | None:
    import csv

    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["step"]) if rows else None


def paired_tests(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: mean ± std of each metric and the paired t-test against the baseline's seeds."""
    from scipy import stats

    keys = ("rare_ap", "rare_ap50", "frequent_ap", "frequent_ap50")
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    base = by_arm.get("baseline", {})
    out: dict[str, Any] = {}
    for arm, seeds in by_arm.items():
        entry: dict[str, Any] = {"seeds": sorted(seeds)}
        for key in keys:
            values = [seeds[s][key] for s in sorted(seeds)]
            entry[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
            }
            common = sorted(set(seeds) & set(base))
            if arm != "baseline" and common:
                diffs = [seeds[s][key] - base[s][key] for s in common]
                base_values = [base[s][key] for s in sorted(base)]
                spread = statistics.stdev(base_values) if len(base_values) > 1 else None
                gain = statistics.fmean(diffs)
                test = {
                    "paired_seeds": common,
                    "mean_gain": gain,
                    "p": None,
                    # the bar: a gain above twice the baseline's seed standard deviation
                    "gain_over_2sd": None if spread is None else gain > 2 * spread,
                }
                if len(common) >= 2 and any(d != diffs[0] for d in diffs):
                    test["p"] = float(
                        stats.ttest_rel(
                            [seeds[s][key] for s in common], [base[s][key] for s in common]
                        ).pvalue
                    )
                entry[key]["vs_baseline"] = test
        out[arm] = entry
    return out


def _same_protocol(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two protocol configs equal but for where the dataset was written."""

    def strip(cfg: dict[str, Any]) -> dict[str, Any]:
        cfg = json.loads(json.dumps(cfg))
        cfg.get("data", {}).get("shapes", {}).pop("out", None)
        return cfg

    return strip(a) == strip(b)


def _kept_runs(args: argparse.Namespace, have: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """Finished runs already in ``--results`` (and their extras in ``--tests``) of the same protocol
    whose run folders are not here: a run finished on another machine or in another ``--out``
    (two processes on different seeds) is kept, not dropped, when the results are collected again."""
    results, tests = Path(args.results), Path(args.tests)
    if not results.is_file():
        return []
    old = json.loads(results.read_text())
    if not _same_protocol(old.get("protocol", {}).get("config", {}), protocol_config(args)):
        return []
    extras = {}
    if tests.is_file():
        extras = {(e["arm"], e["seed"]): e for e in json.loads(tests.read_text()).get("runs", [])}
    kept = []
    for run in old.get("runs", []):
        key = (run["arm"], run["seed"])
        if key in have:
            continue
        extra = {k: v for k, v in extras.get(key, {}).items() if k not in ("arm", "seed")}
        kept.append({**run, "_extra": extra})
    return kept


def collect(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.out) / "ablation" / "runs"
    runs = [r for d in sorted(root.glob("*-*")) if (r := run_record(d)) is not None]
    runs += _kept_runs(args, {(r["arm"], r["seed"]) for r in runs})
    order = {a: i for i, a in enumerate(args.arms.split(","))}
    runs.sort(key=lambda r: (order.get(r["arm"], 99), r["seed"]))
    protocol = {
        "command": (
            f"python bench/rare_class.py --seeds {args.seeds} --arms {args.arms} --epochs {args.epochs} "
            f"--out {args.out}  (PYTHONPATH=src OMP_NUM_THREADS=1, from the repository root)"
        ),
        "config": protocol_config(args),
        "base_config": "demo (src/detrkit/configs/demo.yaml) with data.sampler=random",
        "rare_classes": list(RARE),
        "arms": args.arms.split(","),
        "per_class": args.per_class,
        "online_p": args.online_p,
        "online_scale": [float(v) for v in args.online_scale.split(",")],
        "rfs_threshold": args.rfs_threshold,
        "steps_per_run": args.epochs * (args.train_images // 8),
        "machine": f"{os.cpu_count()} CPU cores, shared; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "ap": "COCO AP on the val split, fractions; rare/frequent = mean over the classes",
    }
    extras = [{"arm": r["arm"], "seed": r["seed"], **r.pop("_extra")} for r in runs]
    protocol["unfinished"] = [
        {"run": d.name, "epochs_done": _epochs_done(d), "of": args.epochs}
        for d in sorted(root.glob("*-*"))
        if not (d / "metrics.json").is_file()
    ]
    result = {"protocol": protocol, "runs": runs}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    tests = paired_tests(runs)
    Path(args.tests).write_text(json.dumps({"arms": tests, "runs": extras}, indent=1) + "\n")
    print(f"{len(runs)} finished run(s) -> {args.results}; tests -> {args.tests}")
    for arm, entry in tests.items():
        cells = []
        for key in ("rare_ap", "rare_ap50", "frequent_ap50"):
            m, s = entry[key]["mean"], entry[key]["std"]
            vs = entry[key].get("vs_baseline")
            p = f" p={vs['p']:.3f}" if vs and vs["p"] is not None else ""
            cells.append(f"{key} {100 * m:.2f}" + (f" ± {100 * s:.2f}" if s is not None else "") + p)
        print(f"{arm} (seeds {entry['seeds']}): " + "; ".join(cells))
    print(markdown_table(tests))
    return result


def markdown_table(tests: dict[str, Any]) -> str:
    """The per-arm table of bench/RESULTS.md: mean ± std over seeds (AP in points), the paired gain
    over the baseline and its p."""

    def cell(entry: dict[str, Any], key: str) -> str:
        m, s = entry[key]["mean"], entry[key]["std"]
        text = f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")
        vs = entry[key].get("vs_baseline")
        if vs:
            text += (
                f" ({100 * vs['mean_gain']:+.1f}"
                + (f", p = {vs['p']:.3f}" if vs["p"] is not None else "")
                + ")"
            )
        return text

    keys = ("rare_ap", "rare_ap50", "frequent_ap", "frequent_ap50")
    lines = [
        "| arm | seeds | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for arm, entry in tests.items():
        seeds = ",".join(str(s) for s in entry["seeds"])
        lines.append(f"| {arm} | {seeds} | " + " | ".join(cell(entry, k) for k in keys) + " |")
    return "\n".join(lines)


def curves(args: argparse.Namespace) -> dict[str, Any]:
    """Per-class learning curves: every kept ``epoch_N.pt`` of every run, evaluated on the val set
    (``detrkit val --run RUN --checkpoint epoch_N --json``), into ``--curves-out``. Entries already
    there are not evaluated again (resumable)."""
    out_path = Path(args.curves_out)
    result: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    exe = str(Path(sys.executable).with_name("detrkit"))
    for run_dir in sorted((Path(args.out) / "ablation" / "runs").glob("*-*")):
        points = result.setdefault(run_dir.name, {})
        epochs = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("epoch_*.pt"))
        for epoch in epochs:
            if str(epoch) in points:
                continue
            cmd = [exe, "val", "--run", str(run_dir), "--checkpoint", f"epoch_{epoch}", "--json"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(
                    f"{run_dir.name} epoch {epoch}: detrkit val failed: {res.stderr.strip()[-300:]}",
                    flush=True,
                )
                continue
            metrics = json.loads(res.stdout)["metrics"]
            points[str(epoch)] = {
                "step": epoch * (args.train_images // 8),
                "AP": metrics["AP"],
                "AP50": metrics["AP50"],
                "per_class_ap": {c["name"]: c["AP"] for c in metrics["per_class"]},
                "per_class_ap50": {c["name"]: c["AP50"] for c in metrics["per_class"]},
            }
            out_path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"{run_dir.name} epoch {epoch}: AP50 {metrics['AP50']:.3f}", flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/rare_class", help="ablation, dataset and config folder")
    p.add_argument("--arms", default=ARMS)
    p.add_argument("--seeds", default="0", help="seeds, a comma list (0 or 0,1,2,3,4)")
    p.add_argument("--epochs", type=int, default=13, help="epochs of 125 steps (1000 images, batch 8)")
    p.add_argument("--eval-every", type=int, default=13, help="evaluate every N epochs (the end only)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=4,
        help="keep epoch_N.pt every N epochs (per-class learning curves)",
    )
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=1200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rare-count", type=int, default=30, help="train instances per rare class")
    p.add_argument("--val-rare-count", type=int, default=300, help="val instances per rare class")
    p.add_argument("--per-class", type=int, default=100, help="offline copy-paste images per rare class")
    p.add_argument("--online-p", type=float, default=0.5)
    p.add_argument("--online-scale", default="0.1,2.0")
    p.add_argument("--rfs-threshold", type=float, default=0.3)
    p.add_argument("--results", default="bench/results/rare_class.json")
    p.add_argument("--tests", default="bench/results/rare_class_tests.json")
    p.add_argument("--collect", action="store_true", help="only collect the finished runs")
    p.add_argument("--curves", action="store_true", help="only evaluate the kept epoch checkpoints")
    p.add_argument("--curves-out", default="bench/results/rare_class_curves.json")
    args = p.parse_args()
    if args.curves:
        curves(args)
        return
    if not args.collect:
        rc = run_ablation(args, write_config(args))
        if rc != 0:
            print(f"detrkit ablate stopped (exit {rc}); collecting what finished", flush=True)
    collect(args)


if __name__ == "__main__":
    main()
