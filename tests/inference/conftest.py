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


def write_fake_run(run: Path, model_name: str, overrides: dict, *, seed: int = 0) -> Path:
    """``run/checkpoints/{best,last}.pt`` of a randomly initialised ``model_name`` (3 classes, the
    ``val`` preset at :data:`TRANSFORM_ARGS`), as ``detrkit train`` lays them out."""
    from detrkit.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=len(CLASS_NAMES), **overrides)
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
            "model": {"name": model_name, "overrides": dict(overrides)},
            "data": {"val_preset": "val", "transform_args": dict(TRANSFORM_ARGS), "size_divisibility": 0},
        },
        "classes": {"names": list(CLASS_NAMES), "category_ids": list(CATEGORY_IDS)},
        "model_name": model_name,
        "metrics": {},
    }
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    return run


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``run/checkpoints/{best,last}.pt`` + ``classes.json`` for a randomly initialised detr-tiny."""
    return write_fake_run(tmp_path_factory.mktemp("run"), "detr-tiny", OVERRIDES)


@pytest.fixture(scope="session")
def fake_deformable_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for a randomly initialised deformable-detr-tiny (its tiny defaults, 20 queries)."""
    return write_fake_run(tmp_path_factory.mktemp("drun"), "deformable-detr-tiny", {})


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
