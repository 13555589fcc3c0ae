"""``detrkit ablate``: train baseline and rare-class remedies with the same budget and seeds, compare.

Thin front over :func:`detrkit.engine.ablate.run_ablation`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from detrkit.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add the ``ablate`` command to the root app."""
    app.command("ablate")(ablate_cmd)


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"0,5,7"`` -> ``[0, 5, 7]``."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise ConfigError(f"--seeds: expected a count (3) or a list (0,1,2), got {text!r}") from None
    if n < 1:
        raise ConfigError(f"--seeds: need at least one seed, got {n}")
    return list(range(n))


def _scale_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--online-scale {text!r}: expected lo,hi (e.g. 0.1,2.0)") from None
    if not 0 < lo <= hi:
        raise ConfigError(f"--online-scale {text!r}: expected 0 < lo <= hi")
    return lo, hi


def ablate_cmd(
    overrides: list[str] = typer.Argument(None, help="key=value config overrides, e.g. train.epochs=4"),
    config: str = typer.Option(..., "--config", "-c", help="YAML config file or packaged name (demo, ...)."),
    arms: str = typer.Option(
        "baseline,copy-paste,rfs",
        "--arms",
        help="Comma list of: baseline, copy-paste, augment, copy-paste-online, rfs, or parts joined "
        "with + (copy-paste-online+rfs).",
    ),
    seeds: str = typer.Option("3", "--seeds", help="How many seeds (3 -> 0,1,2) or a list (0,5,7)."),
    out: Path = typer.Option(
        Path("runs/ablation"), "--out", help="Folder for runs, synthetic data and the comparison."
    ),
    rare: str | None = typer.Option(None, "--rare", help="Rare classes, comma list (e.g. star,cross)."),
    rare_k: int | None = typer.Option(None, "--rare-k", min=1, help="Or: the k rarest classes."),
    rare_fraction: float | None = typer.Option(
        None,
        "--rare-fraction",
        min=0.0,
        max=1.0,
        help="Or: classes rarer than this (as `detrkit data stats`).",
    ),
    per_class: int = typer.Option(
        100, "--per-class", min=1, help="Synthetic images per rare class (copy-paste, augment)."
    ),
    online_p: float = typer.Option(
        0.5, "--online-p", min=0.0, max=1.0, help="Online copy-paste probability per sample."
    ),
    rfs_threshold: float = typer.Option(
        0.3, "--rfs-threshold", min=0.0, max=1.0, help="Repeat-factor threshold t (rfs arm)."
    ),
    online_scale: str = typer.Option(
        "0.1,2.0", "--online-scale", help="Scale jitter lo,hi of online pastes (Simple Copy-Paste: 0.1,2.0)."
    ),
    no_baseline: bool = typer.Option(
        False,
        "--no-baseline",
        help="Do not train the baseline here (another process or machine trains it into the same "
        "--out); the comparison uses its runs once they have finished.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the table."),
) -> None:
    """Train each arm x seed with one budget, then write per-class and rare-class AP (mean ± std)."""
    from detrkit.config import load_config
    from detrkit.workflows.ablate import AblationSettings, run_ablation

    cfg = load_config(config, list(overrides or []))
    console = Console(stderr=True)
    result = run_ablation(
        cfg,
        out,
        arms=[a.strip() for a in arms.split(",") if a.strip()],
        seeds=parse_seeds(seeds),
        train_baseline=not no_baseline,
        rare=[r for r in (rare or "").split(",") if r] or None,
        rare_k=rare_k,
        rare_fraction=rare_fraction,
        settings=AblationSettings(
            per_class=per_class,
            online_p=online_p,
            online_scale=_scale_range(online_scale),
            rfs_threshold=rfs_threshold,
        ),
        console=console,
        quiet=as_json,
        log=lambda msg: console.print(msg, highlight=False, markup=False),
    )
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
        return
    typer.echo(result["table"])
    typer.echo(f"written: {result['comparison']}")
