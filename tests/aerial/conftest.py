"""Shared fixtures for the aerial tests: a tiny generated dataset and a random-weight checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detrkit.aerial.config import AerialTrainConfig
from detrkit.aerial.model import build_aerial_model
from detrkit.aerial.synth import SynthSpec, generate_aerial
from detrkit.aerial.train import model_checkpoint


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 cities x 7 tiles of 128 px (tiles 1-5 validation, 6-7 training), GSD 0.3-1.5 m."""
    out = tmp_path_factory.mktemp("aerial_synth")
    generate_aerial(
        out,
        SynthSpec(cities=("alpha", "bravo"), tiles_per_city=7, size=128, gsd_min=0.3, gsd_max=1.5, seed=3),
    )
    return out


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An aerial checkpoint file of a randomly initialised ``unet-tiny`` (tile 64)."""
    torch.manual_seed(0)
    model = build_aerial_model("unet-tiny").eval()
    cfg = AerialTrainConfig(model="unet-tiny", crop=64)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model_checkpoint(model, cfg, {}), path)
    return path
