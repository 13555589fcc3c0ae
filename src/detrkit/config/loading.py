"""Loading a run config: YAML file(s) with ``_base_`` + ``key=value`` overrides -> :class:`RunConfig`.

A file may start from other files with ``_base_: [a.yaml, b.yaml]`` (paths relative to the file, or
packaged names; later bases and then the file itself override earlier ones, dictionaries merge key
by key, as in RT-DETR). Overrides on the command line use dotted keys: ``optim.lr=1e-4
train.epochs=5 model.freeze=[backbone]``. ``--config demo`` (a bare name) resolves to the configs
shipped inside the package (``detrkit/configs/demo.yaml``).
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from detrkit.config.checking import build_dataclass, rename_keys
from detrkit.config.schema import MODEL_OPTION_RENAMES, RunConfig
from detrkit.errors import ConfigError


def packaged_config_names() -> list[str]:
    """Names of the configs shipped in ``detrkit/configs`` (usable as ``--config NAME``)."""
    folder = resources.files("detrkit") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(source: str | Path) -> Path:
    """A config file path, or a bare packaged name (``demo``) -> the file to read."""
    path = Path(source)
    if path.is_file():
        return path
    packaged = _packaged_config(str(source))
    if packaged is not None:
        return packaged
    names = ", ".join(packaged_config_names())
    raise ConfigError(f"{source}: no such config file (packaged configs: {names})")


def _packaged_config(name: str) -> Path | None:
    """The packaged config file of a bare name (``demo`` or ``demo.yaml``), or None."""
    if "/" in name or "\\" in name:
        return None
    packaged = resources.files("detrkit") / "configs" / f"{name.removesuffix('.yaml')}.yaml"
    return Path(str(packaged)) if packaged.is_file() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


#: Alternative sources of the same values, per section: when a later layer (a file over its
#: ``_base_`` files, the command line over the file) sets a key of one alternative, the keys of the
#: other alternatives coming from earlier layers are dropped, so what is given later always wins
#: (``data.train_ann=A.json`` on the command line replaces the file's ``data.shapes``).
ALTERNATIVES: dict[str, tuple[frozenset[str], ...]] = {
    "data": (frozenset({"shapes"}), frozenset({"train_ann", "train_images", "val_ann", "val_images"})),
}


def _drop_replaced(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` without the keys that an alternative set in ``top`` replaces (:data:`ALTERNATIVES`)."""
    out = base
    for section, groups in ALTERNATIVES.items():
        lower, upper = base.get(section), top.get(section)
        if not isinstance(lower, dict) or not isinstance(upper, dict):
            continue
        given = set(upper)
        replaced = set().union(*(g for g in groups if not g & given and any(o & given for o in groups)))
        if replaced & set(lower):
            out = {**out, section: {k: v for k, v in lower.items() if k not in replaced}}
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(_drop_replaced(base, top))
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` merged into ``base`` key by key (nested dictionaries merge; other values replace;
    a key of one of the :data:`ALTERNATIVES` in ``top`` drops the other alternatives of ``base``).

    This is how ``_base_`` files and overrides compose; use it to build a config from a base dict
    plus nested overrides, then validate with :func:`config_from_dict`.
    """
    return _deep_merge(base, top)


#: ``named(base, seen) -> content | None``: the content of a bare ``_base_`` name that is no file
#: next to the config (``seen``: the files being loaded, for cycle detection).
NamedBase = Callable[[str, tuple[Path, ...]], "dict[str, Any] | None"]


def _packaged_base(name: str, seen: tuple[Path, ...]) -> dict[str, Any] | None:
    path = _packaged_config(name)
    return None if path is None else load_with_bases(path, seen=seen)


def load_with_bases(
    path: Path, *, named: NamedBase | None = None, known: str = "", seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The content of a YAML config file merged over its ``_base_`` files (recursively).

    Args:
        path: the file.
        named: how a base that is no file next to ``path`` is found by name (default: the
            packaged run configs, :func:`packaged_config_names`).
        known: the names ``named`` knows, for the error message.
    Raises:
        ConfigError: invalid YAML, a missing base, a ``_base_`` cycle.
    """
    if named is None:
        named, known = _packaged_base, f"packaged configs: {', '.join(packaged_config_names())}"
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle ({' -> '.join(p.name for p in (*seen, path))})")
    data = _rename_model_options(_read_yaml(path), str(path))
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if base_path.is_file():
            content = load_with_bases(base_path, named=named, known=known, seen=(*seen, path))
        else:
            content = named(base, (*seen, path))
        if content is None:
            raise ConfigError(f"{path}: _base_ file {base} not found (looked in {path.parent}; {known})")
        merged = _deep_merge(merged, content)
    return _deep_merge(merged, data)


def parse_overrides(
    overrides: typing.Sequence[str], source: str = "<command line>", *, form: str = "section.key=value"
) -> dict[str, Any]:
    """``["optim.lr=1e-4", "train.epochs=5"]`` -> nested dict; values parsed as YAML scalars.

    A key without dots (``epochs=5``) is a top-level key (flat configs such as the aerial one);
    ``form`` is how the error for a malformed item says an override looks.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{source}: override {item!r} must look like {form}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {item!r} conflicts with {part}={child!r}")
            node = child
        node[parts[-1]] = value
    return nested


def _rename_model_options(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` with the old names of ``model.overrides`` (:data:`MODEL_OPTION_RENAMES`) renamed.

    Applied to every layer (a file, its ``_base_`` files, the command line, a saved config) before
    the layers merge, so that ``model.overrides.n_heads=2`` on the command line replaces the file's
    ``num_heads``.
    """
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("overrides"), dict):
        return data
    try:
        renamed = rename_keys(model["overrides"], MODEL_OPTION_RENAMES, "model.overrides.")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return data if renamed is model["overrides"] else {**data, "model": {**model, "overrides": renamed}}


def _migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Read configs of older runs: ``data.repeat_factor_threshold: t`` (0 = off) became
    ``data.sampler: repeat_factor`` + ``data.rfs_threshold: t``; old model option names
    (:func:`_rename_model_options`)."""
    data = _rename_model_options(data, source)
    section = data.get("data")
    if not isinstance(section, dict) or "repeat_factor_threshold" not in section:
        return data
    section = dict(section)
    t = section.pop("repeat_factor_threshold")
    try:
        t_value = float(t)
    except (TypeError, ValueError):
        t_value = -1.0
    if t_value > 0:
        section.setdefault("sampler", "repeat_factor")
        section.setdefault("rfs_threshold", t_value)
    elif t_value < 0:
        raise ConfigError(f"data.repeat_factor_threshold: expected a number >= 0, got {t!r}")
    return {**data, "data": section}


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a nested dict (the YAML content) into a :class:`RunConfig`."""
    cfg = build_dataclass(RunConfig, _migrate(data, source), f"{source}: ")
    cfg.source = source
    return cfg


def load_config(source: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a config file (path or packaged name, with ``_base_``), apply overrides, validate.

    An override of ``model.name`` to another model drops the file's ``model.overrides`` (options
    tuned for the file's model, see ``docs/ARCHITECTURE.md``) with a ``UserWarning`` naming them;
    ``model.overrides.*`` given next to it still apply.

    Raises:
        ConfigError: the file is missing or invalid, a key is unknown or a value has the wrong type;
        the message names the file and the dotted key.
    """
    data: dict[str, Any] = {}
    label = "<defaults>"
    if source is not None:
        path = resolve_config_path(source)
        data = load_with_bases(path)
        label = str(source)
    if overrides:
        config_from_dict(data, label)  # errors in the file itself name the file
        top = _rename_model_options(parse_overrides(overrides, label), "<command line>")
        file_model = data.get("model") if isinstance(data.get("model"), dict) else {}
        new_name = (top.get("model") or {}).get("name") if isinstance(top.get("model"), dict) else None
        if new_name is not None and new_name != file_model.get("name") and file_model.get("overrides"):
            # the file's options belong to the file's model: another model starts from its own
            # defaults plus the model.overrides.* given on the command line
            dropped = ", ".join(str(k) for k in file_model["overrides"])
            warnings.warn(
                f"{label}: model.name={new_name} replaces {file_model.get('name')}; the file's "
                f"model.overrides ({dropped}) are not applied (give them as model.overrides.KEY=VALUE)",
                UserWarning,
                stacklevel=2,
            )
            data = {**data, "model": {k: v for k, v in file_model.items() if k != "overrides"}}
        data = _deep_merge(data, top)
        cfg = config_from_dict(data, "<command line>")
        cfg.source = label
        return cfg
    return config_from_dict(data, label)
