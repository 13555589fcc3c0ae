"""The aerial segmentation training config (:class:`AerialTrainConfig`): presets, YAML files, overrides.

``load_aerial_config(source, overrides)``: ``source`` is a preset name (:data:`PRESETS`) or a YAML
file of flat keys (the fields of :class:`AerialTrainConfig`; ``_base_: [a.yaml, PRESET]`` composes
as for run configs); overrides such as ``epochs=5`` or ``scale_range=[0.5,2]`` are parsed as YAML
scalars. The same typed mechanism as the run config checks every value (type, then
:class:`~detrkit.config.checking.Range`); errors are one line naming the source and the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from detrkit.config.checking import Fraction, NonNegFloat, NonNegInt, PosFloat, PosInt, Range, build_dataclass
from detrkit.config.loading import deep_merge, load_with_bases, parse_overrides
from detrkit.errors import ConfigError


def _check_data(value: Any, where: str) -> Any:
    """``data``: a dataset root, or a non-empty list of roots and source mappings."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(v, (str, dict)) for v in value):
        return value
    raise ConfigError(f"{where}={value!r} must be a folder or a list of folders/mappings")


@dataclass
class AerialTrainConfig:
    """Every knob of :func:`detrkit.aerial.train.train_aerial` (flat keys)."""

    #: a dataset root, or a list of roots and mappings ({path, gsd, gsd_known, scale_range,
    #: samples_per_tile, holdout}: detrkit.aerial.sources.SourceSpec) mixed in one training set
    data: str | list[Any] = field(default="data/aerial_synth", metadata={"check": _check_data})
    out: str = "runs"
    name: str = "aerial"
    run_dir: str | None = None
    model: str = "unet-r34-aspp"
    encoder_weights: str | None = None
    #: start from this aerial checkpoint (run folder or .pt), e.g. the default model
    init_weights: str | None = None
    in_channels: PosInt = 3
    #: training crop side in pixels, a multiple of 32
    crop: Annotated[int, Range(ge=32)] = 512
    batch_size: PosInt = 8
    epochs: PosInt = 40
    samples_per_tile: PosInt = 16
    val_samples_per_tile: PosInt = 4
    #: random rescaling of the tiles, ``[min, max]`` times (0 < min <= max)
    scale_range: list[PosFloat] = field(default_factory=lambda: [0.5, 2.0])
    #: ground sample distance (m/pixel) of tiles that do not give one
    default_gsd: PosFloat = 0.3
    lr: PosFloat = 3e-4
    weight_decay: NonNegFloat = 1e-4
    warmup_steps: NonNegInt = 100
    dice_weight: NonNegFloat = 1.0
    focal_weight: NonNegFloat = 10.0
    #: weight of building pixels in the focal loss (0.5: balanced)
    focal_alpha: Fraction = 0.25
    boundary_weight: NonNegFloat = 0.5
    boundary_start: NonNegInt = 1
    boundary_ramp: NonNegInt = 10
    gsd_weight: NonNegFloat = 0.5
    workers: NonNegInt = 0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    #: also save ``epoch_N.pt`` every N epochs (0: only ``last`` and ``best``)
    save_every: NonNegInt = 0
    tensorboard: bool = True
    #: colour/contrast, blur, noise, JPEG, rotation, shadows, one-band, stretch
    augment: bool = False
    #: torch CPU threads (0: torch's default)
    threads: NonNegInt = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_problems(self) -> dict[str, str]:
        """Checks across values (see :func:`~detrkit.config.checking.build_dataclass`)."""
        problems = {}
        if len(self.scale_range) != 2 or self.scale_range[0] > self.scale_range[1]:
            problems["scale_range"] = f"must be [min, max] with 0 < min <= max, got {self.scale_range}"
        if self.crop % 32:
            problems["crop"] = f"must be a multiple of 32 (e.g. {-(-self.crop // 32) * 32}), got {self.crop}"
        return problems


# stage 2 of the shipped default (see PRESETS): stage 3 reuses it at a lower learning rate
_TINY_REAL_S2: dict[str, Any] = {
    "data": [
        {
            "path": "data/aerial_real/opencities_accra",
            "gsd": 0.1,
            "gsd_known": False,
            "scale_range": [1.5, 5.0],
            "samples_per_tile": 3,
        },
        {"path": "data/aerial_synth", "samples_per_tile": 3},
    ],
    "model": "unet-tiny",
    "init_weights": "runs/tiny_real_s1",
    "crop": 192,
    "batch_size": 8,
    "epochs": 14,
    "val_samples_per_tile": 1,
    "lr": 1.5e-3,
    "warmup_steps": 20,
    "boundary_start": 0,
    "boundary_ramp": 4,
    "boundary_weight": 0.2,
    "augment": True,
    "focal_alpha": 0.5,
    "save_every": 1,
    "name": "aerial-tiny-real-s2",
}

# the last stage of the shipped default; ``tiny-real`` reuses it to fine-tune the shipped file
_TINY_REAL_S5: dict[str, Any] = {
    **_TINY_REAL_S2,
    "data": [_TINY_REAL_S2["data"][0], {"path": "data/aerial_synth", "samples_per_tile": 16}],
    "init_weights": "runs/tiny_real_s4",
    "epochs": 16,
    "lr": 5e-4,
    "name": "aerial-tiny-real-s5",
}


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
    # The shipped default (unet_tiny_real.pt) is trained in five stages on the Open Cities Accra
    # tiles (0.1 m drone; the GSD is an estimate, so it rescales crops but never supervises the GSD
    # head) and generated scenes; each stage starts from the previous run's folder (docs/aerial.md):
    #   detrkit aerial train --config tiny-real-s1 run_dir=runs/tiny_real_s1
    #   detrkit aerial train --config tiny-real-s2 run_dir=runs/tiny_real_s2
    #   ... and so on to tiny-real-s5 run_dir=runs/tiny_real_s5
    # 1. from scratch, Accra only, no photometric augmentation (fast to fit the real roofs)
    "tiny-real-s1": {
        "data": [
            {
                "path": "data/aerial_real/opencities_accra",
                "gsd": 0.1,
                "gsd_known": False,
                "scale_range": [2.0, 3.0],
                "samples_per_tile": 2,
            }
        ],
        "model": "unet-tiny",
        "crop": 192,
        "batch_size": 8,
        "epochs": 4,
        "val_samples_per_tile": 1,
        "lr": 2e-3,
        "warmup_steps": 20,
        "boundary_weight": 0.0,
        "focal_alpha": 0.5,
        "augment": False,
        "tensorboard": False,
        "name": "aerial-tiny-real-s1",
    },
    # 2. + generated scenes (GSD head, 0.15-2 m), 0.15-0.5 m real crops, real-imagery augmentations
    "tiny-real-s2": _TINY_REAL_S2,
    # 3. the same data at a lower learning rate (a second cosine cycle)
    "tiny-real-s3": {
        **_TINY_REAL_S2,
        "init_weights": "runs/tiny_real_s2",
        "epochs": 10,
        "lr": 6e-4,
        "name": "aerial-tiny-real-s3",
    },
    # 4.-5. more generated scenes (the generated-data accuracy came back: IoU 0.55 -> 0.78)
    "tiny-real-s4": {
        **_TINY_REAL_S2,
        "data": [_TINY_REAL_S2["data"][0], {"path": "data/aerial_synth", "samples_per_tile": 10}],
        "init_weights": "runs/tiny_real_s3",
        "epochs": 6,
        "lr": 5e-4,
        "name": "aerial-tiny-real-s4",
    },
    "tiny-real-s5": _TINY_REAL_S5,
    # fine-tune the shipped default on your tiles (--data ...): the last stage's recipe from unet_tiny_real.pt
    "tiny-real": {**_TINY_REAL_S5, "init_weights": "unet_tiny_real.pt", "name": "aerial-tiny-real"},
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


def _preset(name: str, seen: tuple[Path, ...]) -> dict[str, Any] | None:
    return dict(PRESETS[name]) if name in PRESETS else None


def aerial_config_from_dict(values: dict[str, Any], source: str = "<dict>") -> AerialTrainConfig:
    """Validate flat keys (a file's content, a checkpoint's ``config``) into an :class:`AerialTrainConfig`."""
    return build_dataclass(AerialTrainConfig, values, f"{source}: ")


def load_aerial_config(
    source: str | Path | None = None, overrides: typing.Sequence[str] = ()
) -> AerialTrainConfig:
    """Preset name or YAML path (or None for defaults) + ``key=value`` overrides -> validated config.

    Errors in the file name the file; errors in the overrides name ``<command line>``. An empty
    value (``encoder_weights=``) means null.

    Raises:
        ConfigError: unknown preset or file, invalid YAML, unknown key, wrong type or range.
    """
    values: dict[str, Any] = {}
    label = "<defaults>"
    if source is not None:
        label = str(source)
        if label in PRESETS:
            values = dict(PRESETS[label])
        elif Path(source).is_file():
            values = load_with_bases(Path(source), named=_preset, known=f"presets: {', '.join(PRESETS)}")
        else:
            raise ConfigError(f"{source}: no such config file or preset (presets: {', '.join(PRESETS)})")
    if not overrides:
        return aerial_config_from_dict(values, label)
    aerial_config_from_dict(values, label)  # errors in the file itself name the file
    top = parse_overrides(overrides, "<command line>", form="key=value")
    top = {k: None if v == "" else v for k, v in top.items()}
    return aerial_config_from_dict(deep_merge(values, top), "<command line>")
