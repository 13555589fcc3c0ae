"""Comparison and ablation tables over run folders (``detrkit compare``).

Runs whose configs are equal once seeds and output keys are removed (:meth:`RunFolder.arm`) form
one *arm*; an arm's value is the mean over its seeds, with the sample standard deviation. The first
arm is the baseline; every other arm gets absolute and relative deltas against it.

Is a difference larger than the seed spread? With at least two seeds in both arms we use **Welch's
t-test** (two-sided, alpha 0.05): it does not assume equal variances (an ablation such as extra
synthetic data may well change how much a run depends on its seed), and it uses the t distribution,
whose heavy tails at 2-5 seeds make it appropriately cautious; a fixed "difference > 2 x pooled
std" rule ignores how few seeds estimate that std. With seeds in only one arm, we fall back to
``|delta| > 2 x std`` of that arm (labelled ``2σ``); with one run per arm the answer is ``unknown``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

from detrkit.errors import ConfigError
from detrkit.runs.folder import RunFolder

OVERALL_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
ALPHA = 0.05


@dataclass(frozen=True)
class Arm:
    """Runs that differ only in seed. ``label``: short name; ``changes``: config keys that differ
    from the baseline arm."""

    label: str
    runs: list[RunFolder]
    changes: dict[str, object]


@dataclass(frozen=True)
class Cell:
    """One metric of one arm, with its delta against the baseline (None for the baseline)."""

    values: list[float]
    mean: float
    std: float
    delta: float | None = None
    rel: float | None = None
    test: str = ""
    p_value: float | None = None
    significant: bool | None = None


@dataclass(frozen=True)
class Comparison:
    arms: list[Arm]
    rows: list[tuple[str, list[Cell]]]  # (metric name, one cell per arm)
    rare: list[str]

    def to_markdown(self) -> str:
        head = ["metric"] + [f"{a.label} (n={len(a.runs)})" for a in self.arms]
        for a in self.arms[1:]:
            head += [f"Δ {a.label}", "rel", "> seed spread?"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, cells in self.rows:
            row = [name] + [_pm(c) for c in cells]
            for c in cells[1:]:
                row += [_signed(c.delta), _pct(c.rel), _verdict(c)]
            lines.append("| " + " | ".join(row) + " |")
        notes = [
            "",
            "AP values in percent (COCO AP x 100); mean ± sample std over seeds.",
            "Seed spread: Welch's t-test (p < 0.05) when both arms have >= 2 seeds, else "
            "|Δ| > 2·std of the arm that has seeds (2σ), else unknown.",
        ]
        if self.rare:
            notes.append(f"Rare classes: {', '.join(self.rare)}.")
        for a in self.arms:
            runs = ", ".join(r.name for r in a.runs)
            change = "; ".join(f"{k}={v}" for k, v in list(a.changes.items())[:6]) or "baseline"
            notes.append(f"- **{a.label}**: {runs} — {change}")
        return "\n".join(lines + notes) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            [
                "metric",
                "arm",
                "runs",
                "n",
                "mean",
                "std",
                "delta_abs",
                "delta_rel",
                "test",
                "p_value",
                "larger_than_seed_spread",
            ]
        )
        for name, cells in self.rows:
            for a, c in zip(self.arms, cells, strict=True):
                w.writerow(
                    [
                        name,
                        a.label,
                        " ".join(r.name for r in a.runs),
                        len(c.values),
                        _r(c.mean),
                        _r(c.std),
                        _r(c.delta),
                        _r(c.rel),
                        c.test,
                        _r(c.p_value),
                        "" if c.significant is None else str(c.significant).lower(),
                    ]
                )
        return buf.getvalue()


def _r(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def _pm(c: Cell) -> str:
    if math.isnan(c.mean):
        return "–"
    return f"{c.mean:.2f}" if len(c.values) < 2 else f"{c.mean:.2f} ± {c.std:.2f}"


def _signed(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:+.2f}"


def _pct(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v * 100:+.1f}%"


def _verdict(c: Cell) -> str:
    if c.significant is None:
        return "unknown (1 run per arm)" if c.test == "" else "–"
    word = "yes" if c.significant else "no"
    return f"{word} (p={c.p_value:.3f})" if c.test == "welch" else f"{word} (2σ)"


def group_arms(runs: Sequence[RunFolder]) -> list[Arm]:
    """Group runs by :meth:`RunFolder.arm_key`, in order of first appearance."""
    groups: dict[str, list[RunFolder]] = {}
    for r in runs:
        groups.setdefault(r.arm_key(), []).append(r)
    base = next(iter(groups.values()))[0].arm() if groups else {}
    arms = []
    for members in groups.values():
        cfg = members[0].arm()
        changes = {k: cfg.get(k) for k in sorted(set(cfg) | set(base)) if cfg.get(k) != base.get(k)}
        label = members[0].name
        if len(members) > 1:
            prefix = os.path.commonprefix([m.name for m in members]).rstrip("_-.0123456789")
            label = f"{prefix}*" if len(prefix) >= 2 else f"{members[0].name}+{len(members) - 1}"
        arms.append(Arm(label=label, runs=list(members), changes=changes))
    return arms


def _cell(values: list[float], base: Cell | None) -> Cell:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    mean = float(arr.mean()) if len(arr) else float("nan")
    std = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
    if base is None:
        return Cell(values=list(arr), mean=mean, std=std)
    delta = mean - base.mean
    rel = delta / base.mean if base.mean and not math.isnan(base.mean) else float("nan")
    test, p, sig = "", None, None
    nb = len(base.values)
    if len(arr) >= 2 and nb >= 2:
        test = "welch"
        if np.ptp(arr) == 0 and np.ptp(base.values) == 0:  # no spread at all: any difference exceeds it
            p = 0.0 if delta != 0 else 1.0
        else:
            p = float(sps.ttest_ind(arr, np.asarray(base.values), equal_var=False).pvalue)
        sig = p < ALPHA
    elif len(arr) >= 2 or nb >= 2:
        spread = std if len(arr) >= 2 else base.std
        test, sig = "2sigma", bool(abs(delta) > 2 * spread)
    return Cell(
        values=list(arr), mean=mean, std=std, delta=delta, rel=rel, test=test, p_value=p, significant=sig
    )


def load_comparable_runs(
    paths: Sequence[str | os.PathLike[str]], *, load: Callable[[Path], RunFolder] = RunFolder.load
) -> tuple[list[RunFolder], list[str]]:
    """The run folders of ``paths`` that can be compared, and one warning line per problem.

    A folder that is not a readable run, or a run that crashed before writing validation metrics,
    is left out with a warning (``detrkit compare runs/*`` over a glob with one failed run); runs
    evaluated on different validation files get a warning too (their numbers do not compare).
    """
    from detrkit.errors import DetrkitError

    runs: list[RunFolder] = []
    warnings: list[str] = []
    for path in paths:
        try:
            run = load(Path(path))
        except DetrkitError as err:
            warnings.append(f"skipping {err}")
            continue
        if not run.final_metrics():
            warnings.append(f"skipping {run.path}: no validation metrics (crashed or still running?)")
            continue
        runs.append(run)
    val_sets: dict[str, list[str]] = {}
    for run in runs:
        ann = run.val_paths()[0]
        if ann is not None:  # predictions of another tool: scored on --gt, no val set recorded
            val_sets.setdefault(str(ann.resolve()), []).append(run.name)
    if len(val_sets) > 1:
        groups = "; ".join(f"{k} ({', '.join(v)})" for k, v in val_sets.items())
        warnings.append(f"the runs were evaluated on different val sets, metrics do not compare: {groups}")
    return runs, warnings


def compare_runs(
    runs: Sequence[RunFolder], *, rare: Sequence[str] | None = None, per_class: bool = True
) -> Comparison:
    """Overall metrics, per-class AP and the mean AP of the rare classes, arm by arm.

    Args:
        runs: run folders; the first run's arm is the baseline.
        rare: rare class names; default the runs' own record (``classes.json`` ``rare`` or config).
        per_class: include one row per class.
    Raises:
        ConfigError: fewer than two runs, a run without metrics, or an unknown rare class name.
    """
    if len(runs) < 2:
        raise ConfigError("compare needs at least two run folders")
    for r in runs:
        if not r.final_metrics():
            raise ConfigError(
                f"{r.path / 'metrics.json'}: no validation metrics (did the run finish an evaluation?)"
            )
    arms = group_arms(runs)
    rare_names = list(rare) if rare else next((r.rare_classes() for r in runs if r.rare_classes()), [])
    class_names: list[str] = []
    for r in runs:
        for n in [*r.class_names(), *r.per_class_ap()]:
            if n not in class_names:
                class_names.append(n)
    unknown = [n for n in rare_names if class_names and n not in class_names]
    if unknown:
        raise ConfigError(
            f"--rare: {', '.join(unknown)} not among the classes of the runs ({', '.join(class_names)})"
        )

    def metric(run: RunFolder, name: str) -> float:
        if name.startswith("AP[") and name.endswith("]"):
            v = run.per_class_ap().get(name[3:-1])
            return float("nan") if v is None else 100 * v
        if name == "rare mAP":
            pc = run.per_class_ap()
            vals = [pc[n] for n in rare_names if n in pc]
            return 100 * float(np.mean(vals)) if vals else float("nan")
        v = run.final_metrics().get(name)
        return float("nan") if v is None or v < 0 else 100 * v

    names = [m for m in OVERALL_METRICS if any(m in r.final_metrics() for r in runs)]
    if rare_names:
        names.append("rare mAP")
    if per_class:
        names += [f"AP[{n}]" for n in class_names if any(n in r.per_class_ap() for r in runs)]
    rows = []
    for name in names:
        cells: list[Cell] = []
        for a in arms:
            cells.append(_cell([metric(r, name) for r in a.runs], cells[0] if cells else None))
        rows.append((name, cells))
    return Comparison(arms=arms, rows=rows, rare=rare_names)
