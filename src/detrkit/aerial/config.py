"""Training configuration for the aerial segmentation model: presets, YAML files and ``key=value`` overrides.

``load_aerial_config(source, overrides)``: ``source`` is a preset name (:data:`PRESETS`) or a YAML
file of flat keys (the fields of :class:`AerialTrainConfig`); overrides such as ``epochs=5``
or ``scale_range=[0.5,2]`` are parsed as YAML scalars and type-checked against the field.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detrkit.errors import ConfigError


@dataclass
class AerialTrainConfig:
    """Every knob of :func:`detrkit.aerial.train.train_aerial` (flat keys)."""

    # a dataset root, or a list of roots and mappings ({path, gsd, gsd_known, scale_range,
    # samples_per_tile, holdout}: detrkit.aerial.sources.SourceSpec) mixed in one training set
    data: str | list[Any] = "data/aerial_synth"
    out: str = "runs"
    name: str = "aerial"
    run_dir: str | None = None
    model: str = "unet-r34-aspp"
    encoder_weights: str | None = None
    init_weights: str | None = (
        None  # start from this aerial checkpoint (run folder or .pt), e.g. the default model
    )
    in_channels: int = 3
    crop: int = 512
    batch_size: int = 8
    epochs: int = 40
    samples_per_tile: int = 16
    val_samples_per_tile: int = 4
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    default_gsd: float = 0.3
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    dice_weight: float = 1.0
    focal_weight: float = 10.0
    focal_alpha: float = 0.25  # weight of building pixels in the focal loss (0.5: balanced)
    boundary_weight: float = 0.5
    boundary_start: int = 1
    boundary_ramp: int = 10
    gsd_weight: float = 0.5
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    save_every: int = 0
    tensorboard: bool = True
    augment: bool = False  # colour/contrast, blur, noise, JPEG, rotation, shadows, one-band, stretch
    threads: int = 0  # torch CPU threads (0: torch's default)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # the users' design on Inria: ResNet-34 encoder with ImageNet weights, 512 px crops
    "r34-inria": {
        "data": "data/inria/AerialImageDataset",
        "model": "unet-r34-aspp",
        "encoder_weights": "imagenet",
        "crop": 512,
        "batch_size": 8,
        "epochs": 40,
        "samples_per_tile": 16,
        "name": "aerial-r34",
    },
    # small and fast: trains on CPU on `detrkit aerial synth` data in a few minutes
    # the shipped default: unet-tiny started from the generated-data model, fine-tuned on the Open
    # Cities Accra tiles (0.1 m drone, rescaled to 0.15-0.4 m; GSD unknown) mixed with generated scenes
    "tiny-real": {
        "data": [
            {
                "path": "data/aerial_real/opencities_accra",
                "gsd": 0.1,
                "gsd_known": False,
                "scale_range": [1.5, 4.0],
                "samples_per_tile": 2,
            },
            {"path": "data/aerial_synth", "samples_per_tile": 8},
        ],
        "model": "unet-tiny",
        "init_weights": "unet_tiny_synth.pt",
        "crop": 192,
        "batch_size": 8,
        "epochs": 6,
        "val_samples_per_tile": 1,
        "lr": 5e-4,
        "warmup_steps": 30,
        "boundary_start": 0,
        "boundary_ramp": 4,
        "augment": True,
        "focal_alpha": 0.5,
        "name": "aerial-tiny-real",
    },
    "tiny-synth": {
        "data": "data/aerial_synth",
        "model": "unet-tiny",
        "crop": 192,
        "batch_size": 8,
        "epochs": 12,
        "samples_per_tile": 8,
        "val_samples_per_tile": 2,
        "lr": 2e-3,
        "warmup_steps": 20,
        "boundary_ramp": 4,
        "name": "aerial-tiny",
        "tensorboard": True,
    },
}


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(AerialTrainConfig)}[name]
    allowed = str(f.type)
    if name == "data":
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(isinstance(v, (str, dict)) for v in value):
            return value
        raise ConfigError(f"{source}: data={value!r} must be a folder or a list of folders/mappings")
    if value is None:
        if "None" in allowed:
            return None
        raise ConfigError(f"{source}: {name} cannot be null")
    if isinstance(default, bool) or allowed == "bool":
        if isinstance(value, bool):
            return value
    elif allowed.startswith("list"):
        if (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) for v in value)
        ):
            return [float(v) for v in value]
    elif allowed == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif allowed == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{source}: {name}={value!r} is not a valid {allowed}")


def load_aerial_config(
    source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> AerialTrainConfig:
    """Preset name or YAML path (or None for defaults) + ``key=value`` overrides -> validated config."""
    values: dict[str, Any] = {}
    label = "<defaults>"
    if source is not None:
        label = str(source)
        if str(source) in PRESETS:
            values = dict(PRESETS[str(source)])
        else:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"{source}: no such config file or preset (presets: {', '.join(PRESETS)})")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: invalid YAML ({err})".splitlines()[0]) from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: an aerial config must be a mapping of keys to values")
            values = loaded
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"<command line>: override {item!r} must look like key=value")
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    defaults = AerialTrainConfig()
    names = [f.name for f in dataclasses.fields(AerialTrainConfig)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            raise ConfigError(
                f"{label}: unknown key {key!r}" + (f" (did you mean {close[0]}?)" if close else "")
            )
        kwargs[key] = _coerce(key, value, getattr(defaults, key), label)
    cfg = AerialTrainConfig(**kwargs)
    lo, hi = cfg.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"{label}: scale_range {cfg.scale_range} must be [min, max] with 0 < min <= max")
    if cfg.crop % 32:
        raise ConfigError(
            f"{label}: crop {cfg.crop} must be a multiple of 32 (e.g. {-(-cfg.crop // 32) * 32})"
        )
    return cfg
