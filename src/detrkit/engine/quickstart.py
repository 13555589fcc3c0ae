"""``detrkit train --data PATH --model NAME``: a run config from a dataset and a model name.

Precedence (later wins): the config file (``--config``, else the model's packaged recipe, the
packaged config whose ``model.name`` is NAME), then ``--data``/``--model``/``--epochs``/``--device``,
then ``key=value`` overrides. ``--data`` accepts every layout :mod:`detrkit.data.formats` detects;
its splits are written as COCO files under ``<output.root>/datasets/<dataset name>/`` (images stay
where they are) and become ``data.train_ann``/``train_images``/``val_ann``/``val_images``. A
recipe's dataset-specific keys (``data.rare_classes``, ``data.extra``, copy-paste classes,
``model.init_from``, a repeat-factor sampler tuned on its data) are reset, since they belong to
another dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detrkit.config import RunConfig, load_config, packaged_config_names, resolve_config_path
from detrkit.errors import ConfigError


def recipe_for_model(name: str) -> str | None:
    """The packaged config whose ``model.name`` is ``name`` (the non-demo one first), or None."""
    names = sorted(packaged_config_names(), key=lambda n: (n == "demo", n))
    for cfg_name in names:
        data = yaml.safe_load(resolve_config_path(cfg_name).read_text()) or {}
        if (data.get("model") or {}).get("name") == name:
            return cfg_name
    return None


@dataclass
class QuickStart:
    """The resolved config and the lines that say what was detected."""

    config: RunConfig
    lines: list[str] = field(default_factory=list)


def _slug(path: Path) -> str:
    name = path.resolve().name if path.is_dir() else path.resolve().parent.name or path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "dataset"


def quick_config(
    *,
    config: str | None,
    overrides: list[str],
    data: Path | None = None,
    images: Path | None = None,
    model: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
) -> QuickStart:
    """Resolve the config of a ``train`` command (see the module docstring for the precedence)."""
    from detrkit.data.formats import prepare_training_data
    from detrkit.devices import resolve_device
    from detrkit.models.registry import list_models

    lines: list[str] = []
    source = config
    recipe = False
    if model is not None:
        if model not in list_models():
            raise ConfigError(
                f"--model {model}: unknown model (see `detrkit models`: {', '.join(list_models())})"
            )
        if source is None:
            source = recipe_for_model(model)
            recipe = source is not None
        where = (
            f"recipe {source} (packaged)" if recipe else f"config {source}" if source else "default settings"
        )
        lines.append(f"model: {model}, {where}")
    elif source is None:
        raise ConfigError("detrkit train --data: give --model NAME (see `detrkit models`) or --config FILE")
    layer: list[str] = []
    if model is not None:
        layer.append(f"model.name={model}")
    if epochs is not None:
        layer.append(f"train.epochs={epochs}")
    if device is not None:
        dev = resolve_device(device, option="--device")
        layer.append(f"train.device={device}")
        lines.append(f"device: {dev}")
    if data is not None:
        if recipe:
            layer += [
                "data.rare_classes=null",
                "data.extra=[]",
                "model.init_from=null",
                "data.sampler=random",
            ]
        layer.append(f"output.name={_slug(data)}")
        out_root = Path(load_config(source, [*layer, *overrides]).output.root)
        conv, paths = prepare_training_data(data, out_root / "datasets" / _slug(data), images=images)
        layer += [f"data.{k}={v}" for k, v in paths.items()]
        lines += describe_dataset(conv)
    cfg = load_config(source, [*layer, *overrides])
    if recipe and cfg.data.copy_paste is not None and data is not None:
        cfg.data.copy_paste.classes = None
    return QuickStart(cfg, lines)


def describe_dataset(conv: object) -> list[str]:
    """What ``--data`` found: layout, splits with image/box counts, classes, reader reports."""
    from detrkit.data.check import NOTICE_KINDS

    layout, splits, outputs = conv.layout, conv.splits, conv.outputs  # type: ignore[attr-defined]
    lines = [f"data: {layout.format} layout at {layout.path}"]
    for name, s in splits.items():
        negatives = sum(1 for im in s.index.images if not s.index.anns_by_image(im.id))
        lines.append(
            f"  {name}: {len(s.index.images)} images ({negatives} without boxes), "
            f"{len(s.index.annotations)} boxes -> {outputs[name][0]}"
        )
        for kind, p in s.report.problems.items():
            if kind not in NOTICE_KINDS:  # negatives are counted above
                lines.append(f"  {name}: {p.count} {kind.replace('_', ' ')} (first: {p.details[0]})")
    notes: dict[str, list[str]] = {}  # the same note of several splits is printed once
    for name, s in splits.items():
        for note in s.report.notes:
            notes.setdefault(note.split(": ", 1)[-1], []).append(name)
    lines += [f"  {text} ({', '.join(names)})" for text, names in notes.items()]
    cats = sorted(next(iter(splits.values())).index.categories, key=lambda c: c.id)
    lines.append(f"  classes ({len(cats)}): " + ", ".join(f"{c.name} (id {c.id})" for c in cats))
    return lines
