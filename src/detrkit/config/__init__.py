"""Typed configuration: YAML file(s) + ``key=value`` overrides -> checked dataclasses.

One mechanism for every config of the package:

- :mod:`detrkit.config.checking`: :class:`Range` and :func:`build_dataclass`, which checks a mapping
  against a dataclass's annotated fields ("did you mean" on unknown keys, one-line errors naming
  the file and the dotted key);
- :mod:`detrkit.config.schema`: the sections of a detection run (:class:`RunConfig`);
- :mod:`detrkit.config.loading`: files with ``_base_``, packaged names, overrides
  (:func:`load_config`, :func:`config_from_dict`, :func:`deep_merge`, :func:`parse_overrides`).

A wrong key or value raises :class:`~detrkit.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

from detrkit.config.checking import (
    Fraction,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Range,
    build_dataclass,
    coerce,
)
from detrkit.config.loading import (
    ALTERNATIVES,
    config_from_dict,
    deep_merge,
    load_config,
    packaged_config_names,
    parse_overrides,
    resolve_config_path,
)
from detrkit.config.schema import (
    CopyPasteConfig,
    DataConfig,
    EvalConfig,
    ExtraDataConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    Precision,
    RunConfig,
    ShapesConfig,
    TrainConfig,
)

__all__ = [
    "ALTERNATIVES",
    "CopyPasteConfig",
    "DataConfig",
    "EvalConfig",
    "ExtraDataConfig",
    "Fraction",
    "ModelConfig",
    "NonNegFloat",
    "NonNegInt",
    "OptimConfig",
    "OutputConfig",
    "PosFloat",
    "PosInt",
    "Precision",
    "Range",
    "RunConfig",
    "ShapesConfig",
    "TrainConfig",
    "build_dataclass",
    "coerce",
    "config_from_dict",
    "deep_merge",
    "load_config",
    "packaged_config_names",
    "parse_overrides",
    "resolve_config_path",
]
