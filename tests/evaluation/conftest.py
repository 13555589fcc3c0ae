"""Random COCO-style ground truth and predictions shared by the evaluation tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


def random_coco(
    seed: int,
    *,
    n_images: int = 40,
    n_classes: int = 4,
    crowd: bool = True,
    max_gt: int = 6,
    empty_images: int = 3,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A GT dict and a predictions list with every error type present.

    Predictions are jittered copies of GT (good and poor boxes), class flips, duplicates and
    background boxes; scores are continuous so no two predictions tie.
    """
    rng = np.random.default_rng(seed)
    cats = [{"id": 3 * c + 1, "name": f"class{c}"} for c in range(n_classes)]
    images, anns, preds = [], [], []
    for i in range(n_images):
        img_id = 100 + i
        images.append({"id": img_id, "file_name": f"{img_id}.jpg", "width": 640, "height": 480})
        n = 0 if i < empty_images else int(rng.integers(1, max_gt + 1))
        for _ in range(n):
            w, h = rng.uniform(8, 200, size=2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = cats[int(rng.integers(n_classes))]["id"]
            is_crowd = int(crowd and rng.random() < 0.08)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": is_crowd,
                }
            )
            for _ in range(int(rng.integers(0, 4))):
                jitter = rng.choice([0.03, 0.15, 0.35, 0.7])
                bx = np.array([x, y, w, h]) + rng.normal(0, jitter, 4) * np.array([w, h, w, h])
                bx[2:] = np.maximum(bx[2:], 2.0)
                pc = cat if rng.random() < 0.75 else cats[int(rng.integers(n_classes))]["id"]
                preds.append(
                    {
                        "image_id": img_id,
                        "category_id": pc,
                        "bbox": bx.tolist(),
                        "score": float(rng.uniform(0.01, 1.0)),
                    }
                )
        for _ in range(int(rng.integers(0, 5))):
            w, h = rng.uniform(5, 150, size=2)
            preds.append(
                {
                    "image_id": img_id,
                    "category_id": cats[int(rng.integers(n_classes))]["id"],
                    "bbox": [float(rng.uniform(0, 600)), float(rng.uniform(0, 440)), w, h],
                    "score": float(rng.uniform(0.01, 1.0)),
                }
            )
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, preds


@pytest.fixture
def make_coco() -> Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The :func:`random_coco` factory, as a fixture (tests are imported in importlib mode)."""
    return random_coco
