"""Tiny datasets for the synth tests: solid-colour objects on uniform backgrounds (exact pixel
checks) and a small shapes dataset (realistic plumbing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as pcm

RED = (220, 30, 30)
BLUE = (30, 60, 220)
GREY = (128, 128, 128)


def _rle(mask: np.ndarray) -> dict:
    rle = pcm.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


@pytest.fixture(scope="session")
def solid_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 PNG images 96x128 on a grey background: images 0-3 hold one blue 'box' (polygon) object,
    images 4-7 one red 'disc' (rare; RLE in even images, polygon in odd ones). Category 'empty' has
    no instance. Returns ``(annotation file, images dir)``."""
    root = tmp_path_factory.mktemp("solid")
    (root / "images").mkdir()
    H, W = 96, 128
    images, anns = [], []
    yy, xx = np.mgrid[:H, :W]
    for i in range(8):
        img = np.empty((H, W, 3), np.uint8)
        img[:] = GREY
        if i < 4:
            x0, y0, x1, y1 = 20 + 5 * i, 15, 80 + 5 * i, 70
            mask = np.zeros((H, W), bool)
            mask[y0:y1, x0:x1] = True
            img[mask] = BLUE
            seg = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            cat = 1
        else:
            cx, cy, r = 40 + 10 * (i - 4), 50, 14 + i
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            img[mask] = RED
            if i % 2 == 0:
                seg = _rle(mask)
            else:  # polygon of the pixel-exact outline is hard; use a 64-gon and re-rasterise
                t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
                seg = [
                    np.stack([cx + 0.5 + r * np.cos(t), cy + 0.5 + r * np.sin(t)], 1)
                    .ravel()
                    .round(2)
                    .tolist()
                ]
                mask = pcm.decode(pcm.merge(pcm.frPyObjects(seg, H, W))).astype(bool)
                img[:] = GREY
                img[mask] = RED
            cat = 2
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        ys, xs = np.nonzero(mask)
        images.append({"id": 100 + i, "file_name": f"{i:03d}.png", "width": W, "height": H})
        anns.append(
            {
                "id": 500 + i,
                "image_id": 100 + i,
                "category_id": cat,
                "iscrowd": 0,
                "area": float(mask.sum()),
                "bbox": [
                    float(xs.min()),
                    float(ys.min()),
                    float(xs.max() - xs.min() + 1),
                    float(ys.max() - ys.min() + 1),
                ],
                "segmentation": seg,
            }
        )
    cats = [
        {"id": 1, "name": "box", "supercategory": "x"},
        {"id": 2, "name": "disc", "supercategory": "x"},
        {"id": 3, "name": "empty", "supercategory": "x"},
    ]
    ann = root / "train.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann, root / "images"


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory):
    from detrkit.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes"), train=16, val=0, size=96, seed=0)


@pytest.fixture()
def synth_cmd(solid_dataset):
    """``synth_cmd(out, *more)``: ``detrkit synth`` arguments on :func:`solid_dataset` writing to ``out``."""
    ann, images = solid_dataset

    def make(out: Path, *more: str) -> list[str]:
        return ["synth", "--data", str(ann), "--images", str(images), "--out", str(out), *more]

    return make
