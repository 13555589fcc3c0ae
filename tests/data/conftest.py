"""Tiny COCO datasets written into ``tmp_path`` for the data tests (64-128 px images)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, width: int, height: int, *, seed: int = 0, fmt: str | None = None) -> Path:
    """A smooth random RGB image (compresses like a photo) of ``width x height``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def tiny_coco_dict() -> dict[str, Any]:
    """Three images (two 96x64, one 64x80), categories with ids 3 and 7, one crowd box."""
    return {
        "info": {"description": "tiny"},
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 96, "height": 64},
            {"id": 2, "file_name": "b.png", "width": 96, "height": 64},
            {"id": 5, "file_name": "sub/c.jpg", "width": 64, "height": 80},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [10, 8, 20, 16], "area": 320, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [50, 20, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 96, 64], "area": 6144, "iscrowd": 1},
            {
                "id": 13,
                "image_id": 5,
                "category_id": 7,
                "bbox": [4, 40, 40, 36],
                "area": 1440,
                "iscrowd": 0,
                "segmentation": [[4, 40, 44, 40, 44, 76]],
            },
        ],
        "categories": [
            {"id": 7, "name": "dog", "supercategory": "animal"},
            {"id": 3, "name": "cat", "supercategory": "animal"},
        ],
    }


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """``make_dataset(coco_dict=None, name="ann.json") -> (ann_path, images_dir)``.

    Writes one image per ``images`` entry at the size the entry states (JPEG or PNG by suffix).
    """

    def make(
        coco: dict[str, Any] | None = None, name: str = "ann.json", root: str = "images"
    ) -> tuple[Path, Path]:
        coco = tiny_coco_dict() if coco is None else coco
        images_dir = tmp_path / root
        for k, im in enumerate(coco["images"]):
            path = images_dir / im["file_name"]
            if not path.exists():
                write_image(path, im["width"], im["height"], seed=k)
        ann = tmp_path / name
        ann.write_text(json.dumps(coco))
        return ann, images_dir

    return make


@pytest.fixture
def tiny_coco() -> dict[str, Any]:
    """A fresh :func:`tiny_coco_dict` per test."""
    return tiny_coco_dict()


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    """:func:`write_image` as a fixture."""
    return write_image
