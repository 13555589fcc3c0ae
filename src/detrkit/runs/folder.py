"""Reading a detrkit run folder: config, classes, final metrics, validation data, arm and seed.

:class:`RunFolder` is what ``detrkit compare``, ``analyze`` and the ablation driver read;
:func:`read_run_info` is what the HTML report shows about the run.

Layout (docs/ARCHITECTURE.md): ``config.yaml`` (resolved), ``classes.json`` (``names``,
``category_ids``, optionally ``rare``), ``metrics.json`` (``final``: the last ``metrics.csv`` row
with ``val/AP``...; ``per_class``), ``metrics.csv``, ``env.json``, ``checkpoints/``. An
``errors.json`` written by ``detrkit analyze`` is used for per-class AP when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detrkit.errors import CheckpointError
from detrkit.evaluation.coco import STAT_NAMES
from detrkit.evaluation.report import RunInfo
from detrkit.runs.metrics import METRICS_CSV, read_metrics_csv

#: Leaf keys that never define an experimental arm: seeds (any ``*.seed``), where outputs go and
#: which experiment trackers log.
SEED_KEYS: frozenset[str] = frozenset({"seed"})
OUTPUT_PREFIXES: tuple[str, ...] = ("output.", "log.")
STAT_KEYS: tuple[str, ...] = STAT_NAMES  # the COCO summary metrics, in pycocotools order


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err.msg})", path=path) from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve_run_path(value: str | Path | None, train_cwd: str | Path | None) -> Path | None:
    """A path from a run's config: as written when it exists (or is absolute), else relative to
    ``train_cwd``, the folder the run was trained from (``env.json`` ``cwd``), when it exists there;
    so ``detrkit val/analyze --run`` work from any folder. ``None`` for an empty value."""
    if not value:
        return None
    p = Path(value)
    if p.exists() or p.is_absolute() or not train_cwd:
        return p
    return Path(train_cwd) / p if (Path(train_cwd) / p).exists() else p


def run_train_cwd(run_dir: str | Path) -> str | None:
    """The working folder a run was trained from (``env.json`` ``cwd``), ``None`` when unknown."""
    env = Path(run_dir) / "env.json"
    try:
        cwd = json.loads(env.read_text()).get("cwd")
    except (OSError, ValueError, AttributeError):
        return None
    return cwd if isinstance(cwd, str) else None


@dataclass(frozen=True)
class RunFolder:
    """A run folder's files, parsed. ``summary`` is ``metrics.json`` (None when absent)."""

    path: Path
    config: dict[str, Any]
    classes: dict[str, Any] | None
    summary: dict[str, Any] | None
    rows: list[dict[str, Any]]
    env: dict[str, Any] | None
    analysis: dict[str, Any] | None

    @classmethod
    def load(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such run folder", path=path)
        cfg_path = path / "config.yaml"
        if not cfg_path.is_file():
            raise CheckpointError(f"{cfg_path}: missing; not a detrkit run folder", path=cfg_path)
        try:
            config = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as err:
            raise CheckpointError(f"{cfg_path}: not valid YAML ({err})", path=cfg_path) from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{cfg_path}: expected a mapping of config sections", path=cfg_path)

        def opt(name: str) -> Any:
            p = path / name
            return _read_json(p) if p.is_file() else None

        return cls(
            path=path,
            config=config,
            classes=opt("classes.json"),
            summary=opt("metrics.json"),
            rows=read_metrics_csv(path / METRICS_CSV),
            env=opt("env.json"),
            analysis=opt("errors.json"),
        )

    @property
    def name(self) -> str:
        return self.path.name

    def _resolve(self, value: str | None) -> Path | None:
        return resolve_run_path(value, (self.env or {}).get("cwd"))

    def val_paths(self) -> tuple[Path | None, Path | None]:
        """``(val annotation file, val image folder)`` from the config (built-in shapes included)."""
        data = self.config.get("data") or {}
        ann, images = data.get("val_ann"), data.get("val_images")
        shapes = data.get("shapes")
        if not ann and isinstance(shapes, dict):
            root = Path(shapes.get("out", "data/shapes"))
            ann, images = str(root / "annotations" / "val.json"), images or str(root / "val")
        return self._resolve(ann), self._resolve(images)

    def final_metrics(self) -> dict[str, float]:
        """The final COCO stats (``AP``, ``AP50``...): ``metrics.json`` ``final``, else the last
        ``metrics.csv`` row with validation metrics."""
        final = (self.summary or {}).get("final") or {}
        if not any(f"val/{k}" in final for k in STAT_KEYS):
            final = next((r for r in reversed(self.rows) if "val/AP" in r), {})
        out = {
            k: float(final[f"val/{k}"]) for k in STAT_KEYS if isinstance(final.get(f"val/{k}"), int | float)
        }
        if not out and self.analysis and self.analysis.get("coco"):
            out = {k: float(v) for k, v in self.analysis["coco"]["stats"].items()}
        return out

    def per_class_ap(self) -> dict[str, float]:
        """COCO AP@[.50:.95] per class name (classes without GT left out)."""
        entries: Any = (self.summary or {}).get("per_class")
        if not _usable_per_class(entries) and self.analysis and self.analysis.get("coco"):
            entries = self.analysis["coco"].get("per_class")
        if isinstance(entries, dict):
            return {str(k): float(v) for k, v in entries.items() if isinstance(v, int | float) and v >= 0}
        out = {}
        for e in entries or []:
            if isinstance(e, dict) and isinstance(e.get("AP"), int | float) and e["AP"] >= 0:
                out[str(e.get("name", e.get("category_id")))] = float(e["AP"])
        return out

    def class_names(self) -> list[str]:
        """Class names from ``classes.json``, else those with a per-class AP."""
        if self.classes and isinstance(self.classes.get("names"), list):
            return [str(n) for n in self.classes["names"]]
        return list(self.per_class_ap())

    def rare_classes(self) -> list[str]:
        """Rare class names recorded by the run (``classes.json`` ``rare``, or a ``rare_classes``
        / ``synth.classes`` config entry); empty when none."""
        if self.classes and isinstance(self.classes.get("rare"), list):
            return [str(c) for c in self.classes["rare"]]
        flat = flatten(self.config)
        for key in ("rare_classes", "synth.classes", "synth.rare_classes", "data.rare_classes"):
            if isinstance(flat.get(key), list):
                return [str(c) for c in flat[key]]
        return []

    def seed(self) -> Any:
        flat = flatten(self.config)
        seeds = {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] in SEED_KEYS}
        return seeds.get("train.seed", next(iter(seeds.values()), None))

    def arm(self) -> dict[str, Any]:
        """The config that defines the experimental arm: everything but seeds and output keys."""
        return {
            k: v
            for k, v in flatten(self.config).items()
            if k.rsplit(".", 1)[-1] not in SEED_KEYS and not k.startswith(OUTPUT_PREFIXES)
        }

    def arm_key(self) -> str:
        return json.dumps(self.arm(), sort_keys=True, default=str)


def _usable_per_class(entries: Any) -> bool:
    if isinstance(entries, dict):
        return any(isinstance(v, int | float) for v in entries.values())
    return isinstance(entries, list) and any(isinstance(e, dict) and "AP" in e for e in entries)


def read_run_info(run_dir: str | Path | None) -> RunInfo:
    """``config.yaml``, ``env.json`` and ``metrics.csv`` of a run folder (missing files are skipped)."""
    if run_dir is None:
        return RunInfo()
    run_dir = Path(run_dir)
    cfg = run_dir / "config.yaml"
    env_path = run_dir / "env.json"
    env = None
    if env_path.is_file():
        try:
            env = json.loads(env_path.read_text())
        except json.JSONDecodeError:
            env = {"error": f"{env_path} is not valid JSON"}
    return RunInfo(
        run_dir=run_dir,
        config_text=cfg.read_text() if cfg.is_file() else None,
        env=env,
        metrics_rows=read_metrics_csv(run_dir / METRICS_CSV),
    )
