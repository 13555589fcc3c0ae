"""``detrkit sweep``: hyperparameter search where every trial is a normal run folder.

``key=v1,v2,...`` overrides span the search space (values parsed as YAML; a key with one value is a
fixed override). The search runs with Optuna (an optional extra: ``pip install 'detrkit[sweep]'``):
``grid`` (every combination, :class:`optuna.samplers.GridSampler`), ``random`` or ``tpe`` (``trials``
draws from the same categorical space). A trial trains ``seeds`` runs
(``OUT/trial_NNN_sM``), its value is their mean best ``eval.best_metric``; with ``prune`` a trial's
first seed reports its validation metric each epoch and Optuna's median pruner stops unpromising
ones early (the trainer's ``on_epoch_end`` hook). The study lives in ``OUT/study.db`` (SQLite):
running the same command again continues it, finished trials are kept and a trial interrupted
by a crash or Ctrl-C is marked failed and run again. The end: ``OUT/sweep.{md,csv,json}`` sorted by
the metric and ``OUT/metric_vs_params.png`` (the metric against each hyperparameter).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from detrkit.errors import ConfigError

__all__ = ["parse_space", "run_sweep"]


def _value(text: str) -> Any:
    """YAML, with numbers in exponent form (``1e-4``, which YAML 1.1 reads as text) as numbers."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def parse_space(overrides: Sequence[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """``["optim.lr=1e-5,1e-4", "train.epochs=3"]`` -> ``({"optim.lr": [1e-5, 1e-4]}, ["train.epochs=3"])``.

    A value holding brackets or braces (a YAML list or mapping) is never split.
    """
    space, fixed = {}, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"detrkit sweep: {item!r} is not key=value")
        if "," in value and not any(c in value for c in "[]{}"):
            values = [_value(v.strip()) for v in value.split(",")]
            if len(set(map(str, values))) != len(values):
                raise ConfigError(f"detrkit sweep: {key} lists a value twice ({value})")
            space[key] = values
        else:
            fixed.append(item)
    if not space:
        raise ConfigError("detrkit sweep: give at least one key=v1,v2,... to search over")
    return space, fixed


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "detrkit sweep needs Optuna: pip install 'detrkit[sweep]' (or pip install optuna)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def run_sweep(
    *,
    config: str,
    overrides: Sequence[str],
    out: str | Path,
    seeds: int = 1,
    sampler: str = "grid",
    trials: int | None = None,
    prune: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or continue) the search; returns the trial rows, best first (see the module docstring)."""
    from detrkit.config import load_config
    from detrkit.engine.trainer import Trainer

    optuna = _optuna()
    space, fixed = parse_space(overrides)
    if sampler not in ("grid", "random", "tpe"):
        raise ConfigError(f"detrkit sweep --sampler {sampler!r}: choose grid, random or tpe")
    if seeds < 1:
        raise ConfigError(f"detrkit sweep --seeds must be >= 1, got {seeds}")
    keys = sorted(space)
    choices = {k: [str(v) for v in space[k]] for k in keys}  # Optuna categoricals of strings: YAML text
    metric = load_config(config, fixed).eval.best_metric
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samplers = {
        "grid": lambda: optuna.samplers.GridSampler(choices, seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
    }
    study = optuna.create_study(
        study_name="sweep",
        storage=f"sqlite:///{out / 'study.db'}",
        load_if_exists=True,
        direction="maximize",
        sampler=samplers[sampler](),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2) if prune else optuna.pruners.NopPruner(),
    )
    for t in study.trials:
        stored = {k: list(d.choices) for k, d in t.distributions.items()}
        if stored and stored != choices:
            raise ConfigError(
                f"{out}: this sweep searched {stored}, not {choices}; continue it with the same values or "
                "pick another --out"
            )
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        log(f"[sweep] trial {t.number} was interrupted: marked failed, its parameters queued again")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params)
    total = 1
    for k in keys:
        total *= len(space[k])
    done = len([t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL])
    todo = max((total if sampler == "grid" else (trials or total)) - done, 0)

    def objective(trial: Any) -> float:
        params = {k: trial.suggest_categorical(k, choices[k]) for k in keys}
        values = []
        for s in range(seeds):
            run_dir = out / f"trial_{trial.number:03d}_s{s}"
            trial.set_user_attr(f"run_s{s}", str(run_dir))
            cfg = load_config(
                config,
                [
                    *fixed,
                    *(f"{k}={v}" for k, v in params.items()),
                    f"train.seed={s}",
                    f"output.dir={run_dir}",
                ],
            )

            def report(epoch: int, row: dict[str, Any], first: bool = s == 0) -> bool:
                key = f"val/{metric}"
                if not (prune and first and key in row):
                    return True
                trial.report(float(row[key]), epoch)
                return not trial.should_prune()

            log(f"[sweep] trial {trial.number} seed {s}: {params}")
            summary = Trainer(cfg, on_epoch_end=report).fit()
            if prune and s == 0 and trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", summary.get("stopped_early_at_epoch"))
                raise optuna.TrialPruned()
            values.append(float(summary["best"]) if summary.get("best") is not None else float("nan"))
        trial.set_user_attr("values", values)
        return statistics.fmean(values)

    if todo:
        study.optimize(objective, n_trials=todo, catch=())
    rows = _rows(study, keys, optuna)
    _write(rows, keys, metric, out)
    return rows


def _rows(study: Any, keys: list[str], optuna: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            continue
        values = t.user_attrs.get("values") or []
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                **{k: _value(t.params[k]) for k in keys},
                "mean": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
                "seeds": len(values),
                "runs": [v for k, v in sorted(t.user_attrs.items()) if k.startswith("run_s")],
            }
        )
    return sorted(rows, key=lambda r: (r["mean"] is None, -(r["mean"] or 0.0)))


def _write(rows: list[dict[str, Any]], keys: list[str], metric: str, out: Path) -> None:
    header = ["trial", "state", *keys, f"{metric} mean", "std", "seeds"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    body = [[fmt(r[c]) for c in ("trial", "state", *keys, "mean", "std", "seeds")] for r in rows]
    md = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(b) + " |" for b in body),
    ]
    (out / "sweep.md").write_text(f"# Sweep ({metric}, best first)\n\n" + "\n".join(md) + "\n")
    with (out / "sweep.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    (out / "sweep.json").write_text(json.dumps({"metric": metric, "trials": rows}, indent=1, default=str))
    done = [r for r in rows if r["mean"] is not None]
    if not done:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [r[key] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        ax.scatter(xs if numeric else [str(x) for x in xs], [r["mean"] for r in done])
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_params.png", dpi=110)
    plt.close(fig)
