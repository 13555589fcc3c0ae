"""A tiny detr-tiny model saved as a fake run folder in the engine's checkpoint layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASS_NAMES = ["circle", "square", "star"]
CATEGORY_IDS = [2, 5, 9]
OVERRIDES = {"num_queries": 20}
TRANSFORM_ARGS = {"size": 96, "max_size": 160}


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``run/checkpoints/{best,last}.pt`` + ``classes.json`` for a randomly initialised detr-tiny."""
    from detrkit.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("detr-tiny", num_classes=len(CLASS_NAMES), **OVERRIDES)
    run = tmp_path_factory.mktemp("run")
    ckpt = {
        "model": model.state_dict(),
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "ema": None,
        "epoch": 1,
        "step": 10,
        "rng": None,
        "config": {
            "model": {"name": "detr-tiny", "overrides": dict(OVERRIDES)},
            "data": {"val_preset": "val", "transform_args": dict(TRANSFORM_ARGS), "size_divisibility": 0},
        },
        "classes": {"names": list(CLASS_NAMES), "category_ids": list(CATEGORY_IDS)},
        "model_name": "detr-tiny",
        "metrics": {},
    }
    (run / "checkpoints").mkdir()
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    return run


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small JPEGs of different sizes with coloured rectangles."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(120, 90), (80, 100), (64, 64)]):
        arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        arr[10:40, 10:50] = (250, 20, 20)
        path = folder / f"img{i}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths
