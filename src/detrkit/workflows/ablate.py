"""Ablation of rare-class remedies: every arm trained with the same budget and seeds, then compared.

Every arm is the base config plus config overrides (:func:`arm_overrides`), so the saved
``config.yaml`` of the runs differ exactly by what the arm changes and ``detrkit compare`` groups
them without help. Arms (:data:`ARMS`):

- ``baseline``: the config as given, with uniform sampling (``data.sampler=random``: the demo
  config samples by repeat factor, and the ``rfs`` arm must differ from the baseline);
- ``copy-paste``: plus ``per_class`` offline copy-paste images per rare class (``detrkit synth``,
  generated per seed) as an extra training file, ``data.extra`` (its path holds ``{seed}``, which
  the engine replaces by ``train.seed``, so the arm's config is the same for every seed);
- ``augment``: the same with heavily augmented real images;
- ``copy-paste-online``: online copy-paste in the training transforms, ``data.copy_paste``
  (probability ``online_p``);
- ``rfs``: repeat-factor sampling, ``data.sampler=repeat_factor`` with ``data.rfs_threshold``;
- ``A+B``: two (or more) of them at once, their overrides merged (e.g. ``copy-paste-online+rfs``;
  an offline part reads the same synthetic data as its single arm).

Every arm also sets ``data.rare_classes``, which the run records in ``classes.json`` (``rare``).

Same budget: every arm runs ``train.epochs`` epochs of the same number of optimizer steps (that of
the baseline, ``len(train) // (batch_size * grad_accum)``, or a smaller ``train.max_steps_per_epoch``
from the config), so extra images or repeated ones do not buy an arm more updates. Same seeds: run
``<arm>-<seed>`` uses ``train.seed = seed`` (and the same seed for its synthetic data).

Output (``out/``)::

    runs/<arm>-<seed>/          run folders (config, checkpoints, metrics.json ...) + ablation.json
    synth/<arm>-<seed>/         synthetic datasets of the offline arms
    comparison.md, .csv         :func:`detrkit.runs.compare.compare_runs`: overall and per-class
                                AP, rare-class mAP, mean ± std over seeds, Welch's t-test vs baseline
    ablation.json               arms, seeds, rare classes, budget, run folders

Runs whose ``metrics.json`` exists are not trained again, and a run stopped part-way continues
from its ``checkpoints/last.pt`` (saved every epoch; the trainer's exact resume), so an interrupted
ablation resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detrkit.config import DataConfig, RunConfig, deep_merge
from detrkit.errors import ConfigError
from detrkit.synth.generate import SynthOptions, choose_classes, synthesize

ARMS = ("baseline", "copy-paste", "augment", "copy-paste-online", "rfs")


@dataclass(frozen=True)
class AblationSettings:
    """What the arms add.

    Attributes:
        per_class: synthetic images per rare class (offline arms).
        online_p: probability of online copy-paste per training sample.
        online_max_instances: pastes per sample at most (online arm).
        online_scale: scale jitter of the online pastes (Simple Copy-Paste's ``[0.1, 2.0]``).
        rfs_threshold: repeat-factor threshold ``t`` (a class seen in a fraction ``f < t`` of the
            images repeats its images ``sqrt(t / f)`` times).
    """

    per_class: int = 100
    online_p: float = 0.5
    online_max_instances: int = 2
    online_scale: tuple[float, float] = (0.1, 2.0)
    rfs_threshold: float = 0.3


def _describe(overrides: dict[str, dict[str, Any]]) -> str:
    """``{"data": {"sampler": "repeat_factor"}}`` -> ``data.sampler=repeat_factor``."""
    items = [f"{section}.{key}={value}" for section, keys in overrides.items() for key, value in keys.items()]
    return ", ".join(items) or "the config as given"


def steps_per_epoch(cfg: RunConfig, num_train: int) -> int:
    """The common budget: the baseline's optimizer steps per epoch (see module docstring)."""
    if not isinstance(cfg.train.batch_size, int):
        raise ConfigError(
            f"{cfg.source}: ablate needs a fixed train.batch_size (not {cfg.train.batch_size!r})"
        )
    steps = num_train // (cfg.train.batch_size * max(1, cfg.train.grad_accum))
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    if steps < 1:
        raise ConfigError(
            f"{cfg.source}: train.batch_size={cfg.train.batch_size} is larger than the {num_train} training images"
        )
    return steps


def arm_overrides(
    arm: str, *, out_dir: Path, rare: list[str], settings: AblationSettings
) -> dict[str, dict[str, Any]]:
    """The nested config overrides that make ``arm`` out of the base config (``{}`` for baseline).

    Offline arms read ``out_dir/synth/<arm>-{seed}/``; ``{seed}`` is filled in by the engine. A
    combined arm ``A+B`` merges the overrides of its parts.
    """
    if "+" in arm:
        merged: dict[str, dict[str, Any]] = {}
        for part in arm_parts(arm):
            merged = deep_merge(merged, arm_overrides(part, out_dir=out_dir, rare=rare, settings=settings))
        return merged
    if arm == "baseline":
        return {}
    if arm in ("copy-paste", "augment"):
        synth = out_dir / "synth" / f"{arm}-{{seed}}"
        extra = [{"ann": str(synth / "annotations.json"), "images": str(synth / "images")}]
        return {"data": {"extra": extra}}
    if arm == "copy-paste-online":
        cp = {
            "prob": settings.online_p,
            "classes": list(rare),
            "max_instances": settings.online_max_instances,
            "scale": list(settings.online_scale),
        }
        return {"data": {"copy_paste": cp}}
    if arm == "rfs":
        return {"data": {"sampler": "repeat_factor", "rfs_threshold": settings.rfs_threshold}}
    raise ConfigError(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def arm_parts(arm: str) -> list[str]:
    """``"copy-paste+rfs"`` -> ``["copy-paste", "rfs"]``; raises :class:`ConfigError` on an unknown part."""
    parts = arm.split("+")
    bad = [p for p in parts if p not in ARMS or (p == "baseline" and len(parts) > 1)]
    if bad or len(set(parts)) != len(parts):
        raise ConfigError(
            f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)} or combine them with +"
        )
    return parts


def run_ablation(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    arms: list[str],
    seeds: list[int],
    train_baseline: bool = True,
    rare: list[str] | None = None,
    rare_k: int | None = None,
    rare_fraction: float | None = None,
    settings: AblationSettings | None = None,
    console: Any = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every arm x seed and write the comparison (see the module docstring).

    ``train_baseline=False`` trains only the other arms (the baseline of the same ``out_dir`` is
    trained elsewhere, e.g. by a second process); the comparison includes the baseline runs that
    have finished by then.

    Returns ``{"rare", "steps_per_epoch", "runs": {arm: [run dirs]}, "comparison": path, "table": md}``.
    """
    from detrkit.config import config_from_dict
    from detrkit.data.coco import CocoIndex
    from detrkit.engine.builders import ensure_shapes
    from detrkit.engine.trainer import Trainer
    from detrkit.runs.compare import compare_runs
    from detrkit.runs.folder import RunFolder

    settings = settings or AblationSettings()
    if not arms:
        raise ConfigError(f"--arms: unknown arm(s) (none); choose from {', '.join(ARMS)}")
    for arm in arms:
        arm_parts(arm)
    if arms[0] != "baseline":
        arms = ["baseline", *[a for a in arms if a != "baseline"]]
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    out = Path(out_dir)
    base = copy.deepcopy(cfg)
    base.data = ensure_shapes(base.data)
    if not base.data.train_ann or not base.data.train_images:
        raise ConfigError(f"{cfg.source}: data.train_ann and data.train_images are needed (or data.shapes)")
    train_index = CocoIndex.load(base.data.train_ann)
    rare = choose_classes(train_index, classes=rare, rare_k=rare_k, rare_fraction=rare_fraction)
    steps = steps_per_epoch(base, len(train_index.images))
    base.train.max_steps_per_epoch = steps
    base.data.rare_classes = list(rare)
    base.data.sampler = "random"  # every arm samples uniformly but ``rfs``
    base.data.rfs_threshold = DataConfig.rfs_threshold  # the default: only the rfs arm sets one
    log(
        f"ablation: arms {', '.join(arms)}; seeds {seeds}; rare classes {', '.join(rare)}; "
        f"{base.train.epochs} epochs x {steps} steps for every arm"
    )
    base_dict = base.to_dict()
    runs: dict[str, list[Path]] = {a: [] for a in arms}
    for seed in seeds:
        for arm in arms:
            run_dir = out / "runs" / f"{arm}-{seed}"
            if arm == "baseline" and not train_baseline:
                if (run_dir / "metrics.json").is_file():
                    runs[arm].append(run_dir)
                continue
            runs[arm].append(run_dir)
            if (run_dir / "metrics.json").is_file():
                log(f"{run_dir}: done before, kept")
                continue
            overrides = arm_overrides(arm, out_dir=out, rare=rare, settings=settings)
            per_run = {"train": {"seed": seed}, "output": {"dir": str(run_dir), "name": None}}
            arm_cfg = config_from_dict(deep_merge(deep_merge(base_dict, overrides), per_run), cfg.source)
            for part in arm_parts(arm):
                synth_dir = out / "synth" / f"{part}-{seed}"
                if part in ("copy-paste", "augment") and not (synth_dir / "annotations.json").is_file():
                    synthesize(
                        train_index,
                        base.data.train_images,
                        synth_dir,
                        classes=rare,
                        options=SynthOptions(method=part, per_class=settings.per_class, seed=seed),
                    )
            details = {
                "arm": arm,
                "seed": seed,
                "rare_classes": rare,
                "steps_per_epoch": steps,
                "overrides": overrides,
            }
            partial = (run_dir / "checkpoints" / "last.pt").is_file()
            trainer = Trainer(arm_cfg, resume=run_dir if partial else None, console=console, quiet=quiet)
            log(f"{'resuming' if partial else 'training'} {run_dir.name} ({_describe(overrides)})")
            trainer.fit()
            (run_dir / "ablation.json").write_text(json.dumps(details, indent=1))
    folders = [RunFolder.load(run_dir) for arm in arms for run_dir in runs[arm]]
    table = ""
    if len(folders) >= 2:
        comparison = compare_runs(folders, rare=rare)
        table = comparison.to_markdown()
        (out / "comparison.md").write_text(table)
        (out / "comparison.csv").write_text(comparison.to_csv())
    else:  # one run here, the baseline not finished elsewhere yet: nothing to compare with
        log(f"{out}: one finished run, no comparison written (run again once the baseline has finished)")
    summary = {
        "arms": arms,
        "seeds": seeds,
        "rare": rare,
        "epochs": base.train.epochs,
        "steps_per_epoch": steps,
        "settings": dataclasses.asdict(settings),
        "config": cfg.source,
        "runs": {a: [str(p) for p in ps] for a, ps in runs.items()},
        "comparison": str(out / "comparison.md") if table else None,
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=1))
    return {**summary, "table": table}
