"""The aerial training config; it lives with the other typed configs in :mod:`detrkit.config.aerial`."""

from __future__ import annotations

from detrkit.config.aerial import PRESETS, AerialTrainConfig, aerial_config_from_dict, load_aerial_config

__all__ = ["PRESETS", "AerialTrainConfig", "aerial_config_from_dict", "load_aerial_config"]
