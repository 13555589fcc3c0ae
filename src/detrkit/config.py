"""Typed run configuration: YAML file(s) + ``key=value`` overrides -> :class:`RunConfig`.

A config file has up to six sections (``model``, ``data``, ``train``, ``optim``, ``eval``,
``output``) whose keys are the fields of the dataclasses below. A file may start from other files
with ``_base_: [a.yaml, b.yaml]`` (paths relative to the file; later bases and then the file itself
override earlier ones, dictionaries merge key by key, as in RT-DETR). Overrides on the command line
use dotted keys: ``optim.lr=1e-4 train.epochs=5 model.freeze=[backbone]``.

Every value is type-checked against the dataclass field, and numbers against the field's
:class:`Range` (``epochs: Annotated[int, Range(ge=1)]``); a wrong key or value raises
:class:`~detrkit.errors.ConfigError` naming the file and the key. ``--config demo`` (a bare name)
resolves to the configs shipped inside the package (``detrkit/configs/demo.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from detrkit.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric config value, attached as ``Annotated[int, Range(ge=1)]``.

    Checked by the loader after the type, so ``train.batch_size=0`` fails with one line naming the
    key and the interval instead of a ``ValueError`` inside the DataLoader.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        """``>= 1``, ``in [0, 1]``, ``> 0 and < 1`` ..."""
        if self.ge is not None and self.le is not None:
            return f"in [{self.ge:g}, {self.le:g}]"
        low = f">= {self.ge:g}" if self.ge is not None else (f"> {self.gt:g}" if self.gt is not None else "")
        high = f"<= {self.le:g}" if self.le is not None else (f"< {self.lt:g}" if self.lt is not None else "")
        return " and ".join(part for part in (low, high) if part)

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside (NaN never does)."""
        if value != value:  # NaN
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


#: shorthands of the ranges used below
PosInt = Annotated[int, Range(ge=1)]
NonNegInt = Annotated[int, Range(ge=0)]
PosFloat = Annotated[float, Range(gt=0)]
NonNegFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]


@dataclass
class ModelConfig:
    """What to build: ``build_model(name, num_classes=..., **overrides)``, weights and freezing."""

    name: str = "detr-tiny"
    #: keyword overrides for the builder (e.g. ``{num_queries: 50, hidden_dim: 128}``).
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Hugging Face weights: Hub id, local folder or file (``load_hf_weights``).
    pretrained: str | None = None
    #: a detrkit checkpoint (or run folder) whose tensors are copied where names and shapes match.
    init_from: str | None = None
    #: parameter-name keywords to freeze, e.g. ``[backbone]`` (matches names containing the word).
    freeze: list[str] = field(default_factory=list)
    #: freeze the backbone stem and its first k residual stages (0 = none, 4 = whole ResNet).
    freeze_backbone_stages: Annotated[int, Range(ge=0, le=4)] = 0
    #: keep every BatchNorm layer in eval mode with frozen affine parameters.
    freeze_bn: bool = False


@dataclass
class ShapesConfig:
    """The built-in synthetic dataset, generated on first use when ``data.shapes`` is set."""

    out: str = "data/shapes"
    train: PosInt = 400
    val: PosInt = 100
    size: Annotated[int, Range(ge=64)] = 160
    seed: int = 0
    #: long-tailed variant: exactly this many train instances of the named classes (``{star: 30}``).
    class_counts: dict[str, int] | None = None
    #: the same for the val split (e.g. ``{star: 300, cross: 300}`` for a precise rare-class AP).
    val_class_counts: dict[str, int] | None = None


@dataclass
class ExtraDataConfig:
    """One extra training file (e.g. ``detrkit synth`` output) appended to the training set.

    ``{seed}`` in either path is replaced by ``train.seed`` (synthetic data generated per seed).
    """

    ann: str
    images: str


@dataclass
class CopyPasteConfig:
    """Online copy-paste (:func:`detrkit.synth.online.build_online_copy_paste`), training only."""

    #: probability that a training sample gets pastes.
    prob: Fraction = 0.5
    #: class names to paste; ``null``: the run's rare classes (``data.rare_classes`` or computed).
    classes: list[str] | None = None
    #: pastes per sample, uniform in 1..max_instances.
    max_instances: PosInt = 2
    #: scale jitter of a pasted instance, uniform in ``[lo, hi]`` times its source size (Simple
    #: Copy-Paste's large scale jitter is ``[0.1, 2.0]``); capped at 0.6 of the image side.
    scale: list[PosFloat] = field(default_factory=lambda: [0.6, 1.4])
    #: instances smaller than this many pixels do not enter the bank.
    min_area: NonNegInt = 64
    #: at most this many instances per class in the bank (``null``: all).
    max_bank_per_class: PosInt | None = 500
    #: seed of the bank's instance selection; ``null``: ``train.seed``.
    seed: int | None = None


@dataclass
class DataConfig:
    """COCO-format train/val data and loader settings."""

    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    #: generate the built-in shapes dataset and use it (fills the four paths above).
    shapes: ShapesConfig | None = None
    #: ``build_transforms`` presets for training and validation, and extra keyword arguments.
    train_preset: str = "detr"
    val_preset: str = "val"
    transform_args: dict[str, Any] = field(default_factory=dict)
    #: pad batches to a multiple of this many pixels (0: to the largest image only).
    size_divisibility: NonNegInt = 0
    #: extra training files ``[{ann, images}]``; their class names must be among the training file's.
    extra: list[ExtraDataConfig] = field(default_factory=list)
    #: online copy-paste of rare-class instances before the training transforms (``null``: off).
    copy_paste: CopyPasteConfig | None = None
    #: ``random`` (each image once per epoch) or ``repeat_factor`` (LVIS repeat-factor sampling).
    sampler: Literal["random", "repeat_factor"] = "random"
    #: repeat-factor threshold t: a class in a fraction f < t of the images repeats them sqrt(t/f) times.
    rfs_threshold: Annotated[float, Range(gt=0, le=1)] = 0.001
    #: the rare class names (recorded in ``classes.json``); ``null``: those ``detrkit data stats``
    #: marks (shown in fewer than ``rare_fraction`` x the images of the most frequent class).
    rare_classes: list[str] | None = None
    rare_fraction: Fraction = 0.05
    num_workers: NonNegInt = 2
    pin_memory: bool = True
    #: what to do with a degenerate box: ``drop`` it or ``error``.
    on_bad_box: str = "drop"


@dataclass
class TrainConfig:
    """The loop: epochs, batch, precision, checkpoints, faults."""

    epochs: PosInt = 10
    #: images per process per step, or ``auto`` (largest that fits; a fixed choice on CPU).
    batch_size: PosInt | Literal["auto"] = 4
    grad_accum: PosInt = 1
    #: clip the global gradient norm (DETR uses 0.1); ``null`` disables clipping.
    clip_grad_norm: PosFloat | None = 0.1
    precision: Precision = "fp32"
    seed: int = 42
    ema: bool = False
    ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.9998
    #: EMA warm-up: the decay ramps up as ``decay * (1 - exp(-updates / ema_warmup))``.
    ema_warmup: NonNegInt = 2000
    #: save ``epoch_N.pt`` every N epochs (0 = only ``last`` and ``best``).
    checkpoint_every: NonNegInt = 1
    #: also save ``last.pt`` every N optimizer steps inside an epoch (0 = only at epoch ends).
    checkpoint_every_steps: NonNegInt = 0
    #: abort after this many consecutive non-finite losses.
    max_nonfinite: PosInt = 5
    #: early stopping: stop after this many validations in a row without an improvement of
    #: ``eval.best_metric`` by more than ``min_delta`` (0 = off). Only trained epochs are
    #: validated, so the starting (pretrained) weights never count as "best".
    patience: NonNegInt = 0
    min_delta: NonNegFloat = 0.0
    #: stop each epoch after this many steps (0 = whole epoch); for smoke runs.
    max_steps_per_epoch: NonNegInt = 0
    #: run on the CPU even when a GPU is present.
    cpu: bool = False
    #: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``detrkit train --device``); null: the best present.
    device: str | None = None
    #: channels-last (NHWC) memory format for the convolutions: the model's 4-D weights and the
    #: training images; faster convolutions on recent CPUs (oneDNN) and on GPUs with bf16/fp16.
    channels_last: bool = False
    #: write a torch.profiler trace of a few steps of the first epoch to ``profile/``.
    profile: bool = False
    profile_steps: PosInt = 5
    #: skip the preflight checks (not recommended).
    preflight: bool = True


@dataclass
class OptimConfig:
    """AdamW, parameter groups and the learning-rate schedule."""

    lr: NonNegFloat = 1e-4
    #: learning rate of parameters whose name contains ``backbone``.
    backbone_lr: NonNegFloat = 1e-5
    weight_decay: NonNegFloat = 1e-4
    betas: list[Annotated[float, Range(ge=0, lt=1)]] = field(default_factory=lambda: [0.9, 0.999])
    eps: PosFloat = 1e-8
    #: no weight decay on norms, biases and embeddings.
    no_decay_norm_bias: bool = True
    schedule: Literal["step", "cosine", "constant"] = "step"
    #: step schedule: multiply by ``gamma`` at these epochs.
    milestones: list[PosInt] = field(default_factory=list)
    gamma: PosFloat = 0.1
    #: cosine schedule: final lr as a fraction of the initial lr.
    min_lr_ratio: Fraction = 0.01
    #: linear warm-up length in optimizer steps.
    warmup_steps: NonNegInt = 0
    warmup_start_factor: Annotated[float, Range(gt=0, le=1)] = 0.001
    #: fused/foreach AdamW: ``auto`` picks fused on CUDA and CPU, foreach otherwise (e.g. MPS).
    impl: Literal["auto", "fused", "foreach", "loop"] = "auto"


@dataclass
class EvalConfig:
    """Validation during training."""

    every: NonNegInt = 1
    batch_size: PosInt | None = None
    #: metric of ``best.pt`` (a CocoMetrics stat name).
    best_metric: str = "AP"
    #: keep detections scoring at least this (0 keeps the model's top-k).
    score_threshold: Fraction = 0.0


@dataclass
class OutputConfig:
    """Where the run folder goes: ``dir``, or ``root/name`` auto-incremented (name, name2, ...)."""

    root: str = "runs"
    name: str | None = None
    dir: str | None = None
    tensorboard: bool = True
    plots: bool = True


@dataclass
class RunConfig:
    """The whole run; ``source`` is the file it came from (for messages), not a config key."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every config key (``source`` left out)."""
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


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


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle ({' -> '.join(p.name for p in (*seen, path))})")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            base_path = _packaged_config(base)
        if base_path is None:
            names = ", ".join(packaged_config_names())
            raise ConfigError(
                f"{path}: _base_ file {base} not found (looked in {path.parent}; packaged configs: {names})"
            )
        merged = _deep_merge(merged, _load_with_bases(base_path, (*seen, path)))
    return _deep_merge(merged, data)


def _matched(err: ConfigError) -> ConfigError:
    """Mark an error raised after the value was recognised as the annotation's kind (see unions)."""
    err.matched = True  # type: ignore[attr-defined]
    return err


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert strings from the command line."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *extras = typing.get_args(tp)
        value = _coerce(value, inner, where)
        for rng in (e for e in extras if isinstance(e, Range)):
            if not rng.contains(value):
                raise _matched(ConfigError(f"{where}: must be {rng.describe()}, got {value!r}"))
        return value
    if origin in (Union, types.UnionType):
        matched = []  # errors of arms whose kind the value has (a mapping for a section, a number)
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                if getattr(err, "matched", False):
                    matched.append(err)
        if matched:  # e.g. data.shapes.trian=64: "unknown key ... did you mean", not "expected X or null"
            raise matched[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        try:
            return _build_dataclass(tp, value, where)
        except ConfigError as err:
            raise _matched(err) from None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            try:
                value = [] if value.strip() in ("", "[]") else yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(
                    f"{where}: {value!r} is not a valid YAML list (quote values with {{ or :)"
                ) from None
            value = value if isinstance(value, list) else [value]
        if not isinstance(value, (list, tuple)):
            value = [value] if item_tp is str else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def _build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs: dict[str, Any] = {}
    prefix = where if where.endswith(": ") else f"{where}."
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            dotted = prefix.split(": ", 1)[-1]
            hint = f" (did you mean {dotted}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ConfigError(f"{prefix.rstrip('.')}: missing key(s) {', '.join(missing)}")
    return cls(**kwargs)


def parse_overrides(overrides: typing.Sequence[str], source: str = "<command line>") -> dict[str, Any]:
    """``["optim.lr=1e-4", "train.epochs=5"]`` -> nested dict; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{source}: override {item!r} must look like section.key=value")
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


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Read configs of older runs: ``data.repeat_factor_threshold: t`` (0 = off) became
    ``data.sampler: repeat_factor`` + ``data.rfs_threshold: t``."""
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
    cfg = _build_dataclass(RunConfig, _migrate(data), f"{source}: ")
    cfg.source = source
    return cfg


def load_config(source: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a config file (path or packaged name, with ``_base_``), apply overrides, validate.

    An override of ``model.name`` to another model drops the file's ``model.overrides`` (builder
    options of the file's model); ``model.overrides.*`` given next to it still apply.

    Raises:
        ConfigError: the file is missing or invalid, a key is unknown or a value has the wrong type;
        the message names the file and the dotted key.
    """
    data: dict[str, Any] = {}
    label = "<defaults>"
    if source is not None:
        path = resolve_config_path(source)
        data = _load_with_bases(path)
        label = str(source)
    if overrides:
        config_from_dict(data, label)  # errors in the file itself name the file
        top = parse_overrides(overrides, label)
        file_model = data.get("model") if isinstance(data.get("model"), dict) else {}
        new_name = (top.get("model") or {}).get("name") if isinstance(top.get("model"), dict) else None
        if new_name is not None and new_name != file_model.get("name") and file_model.get("overrides"):
            # the file's builder options belong to the file's model: another model starts from its
            # own defaults plus the model.overrides.* given on the command line
            data = {**data, "model": {k: v for k, v in file_model.items() if k != "overrides"}}
        data = _deep_merge(data, top)
        cfg = config_from_dict(data, "<command line>")
        cfg.source = label
        return cfg
    return config_from_dict(data, label)
