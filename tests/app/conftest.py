"""Fixtures for the web-app tests: a random-weight aerial checkpoint and sample uploads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image

from detrkit.aerial.config import AerialTrainConfig
from detrkit.aerial.model import build_aerial_model
from detrkit.aerial.synth import render_tile
from detrkit.aerial.train import model_checkpoint


@pytest.fixture(scope="session")
def app_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ``unet-tiny`` checkpoint (tile 64)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("app_ckpt") / "tiny.pt"
    torch.save(
        model_checkpoint(
            build_aerial_model("unet-tiny").eval(), AerialTrainConfig(model="unet-tiny", crop=64), {}
        ),
        path,
    )
    return path


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    """A generated aerial scene, uint8[160,160,3] at 0.5 m/pixel."""
    return render_tile(np.random.default_rng(11), 160, 0.5)[0]


@pytest.fixture(scope="session")
def png_bytes(scene: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def geotiff_bytes(scene: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The scene as a GeoTIFF in UTM 31N with 0.5 m pixels."""
    path = tmp_path_factory.mktemp("geo") / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=160,
        height=160,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=Affine(0.5, 0, 448000, 0, -0.5, 5412000),
    ) as dst:
        dst.write(scene.transpose(2, 0, 1))
    return path.read_bytes()
