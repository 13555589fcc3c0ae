"""Generated dataset: georeference, exact areas in the truth file, the Inria split and windowed crops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from detrkit.aerial.data import AerialCrops, list_tiles, normalize_image
from detrkit.errors import DataError


def test_tiles_are_projected_geotiffs_with_exact_truth(synth_dir: Path) -> None:
    truth = json.loads((synth_dir / "ground_truth.json").read_text())
    assert len(truth["tiles"]) == 14
    for rel, t in truth["tiles"].items():
        with (
            rasterio.open(synth_dir / rel) as img,
            rasterio.open(synth_dir / rel.replace("images", "gt")) as gt,
        ):
            assert img.crs.is_projected and img.crs.to_epsg() == int(t["crs"].split(":")[1])
            assert img.transform.a == pytest.approx(t["gsd_m"]) and img.transform.e == pytest.approx(
                -t["gsd_m"]
            )
            assert img.count == 3 and img.dtypes[0] == "uint8"
            mask = gt.read(1)
        assert set(np.unique(mask)) <= {0, 255}
        pixels = int((mask > 0).sum())
        assert t["built_area_m2"] == pytest.approx(pixels * t["gsd_m"] ** 2, rel=1e-12)
        assert sum(b["pixels"] for b in t["buildings"]) == pixels
        for b in t["buildings"]:
            assert b["area_m2"] == pytest.approx(b["pixels"] * t["gsd_m"] ** 2)
            assert b["kind"] in ("rect", "L")
            # the rasterised area is the vector area up to the pixel staircase along the outline
            # (a band of half a pixel around the outline; L-shapes have perimeter < 6 sqrt(area))
            band = 0.5 * t["gsd_m"] * 6 * math.sqrt(b["polygon_area_m2"]) + 2 * t["gsd_m"] ** 2
            assert abs(b["area_m2"] - b["polygon_area_m2"]) < band


def test_official_split(synth_dir: Path) -> None:
    val = list_tiles(synth_dir, "val")
    train = list_tiles(synth_dir, "train")
    assert sorted((t.city, t.number) for t in val) == [
        (c, n) for c in ("alpha", "bravo") for n in range(1, 6)
    ]
    assert sorted((t.city, t.number) for t in train) == [(c, n) for c in ("alpha", "bravo") for n in (6, 7)]
    assert all(0.3 <= t.gsd <= 1.5 for t in train + val)
    with pytest.raises(DataError, match="train/images"):
        list_tiles(synth_dir / "train")


def test_crop_equals_direct_window_read_without_scaling(synth_dir: Path) -> None:
    ds = AerialCrops(synth_dir, split="val", crop=64, samples_per_tile=3, scale_range=(1.0, 1.0), train=False)
    assert len(ds) == 30
    item = ds[7]
    tile = ds.tiles[7 % len(ds.tiles)]
    assert (
        item["image"].shape == (3, 64, 64)
        and item["mask"].shape == (1, 64, 64)
        and item["sdm"].shape == (1, 64, 64)
    )
    assert float(item["log_gsd"]) == pytest.approx(math.log(tile.gsd), rel=1e-6)
    # find the window: the mask crop must equal exactly one 64x64 window of the tile's mask
    with rasterio.open(tile.image) as src:
        full = src.read()
    target = item["image"].numpy()
    hits = [
        (y, x)
        for y in range(full.shape[1] - 63)
        for x in range(full.shape[2] - 63)
        if np.allclose(normalize_image(full[:, y : y + 64, x : x + 64]), target, atol=1e-6)
    ]
    assert len(hits) == 1
    y, x = hits[0]
    with rasterio.open(tile.mask) as src:
        m = src.read(1, window=Window(x, y, 64, 64)) > 127
    np.testing.assert_array_equal(item["mask"][0].numpy() > 0.5, m)
    assert torch.equal(ds[7]["image"], item["image"])  # validation crops are fixed


def test_scale_augmentation_sets_the_gsd(synth_dir: Path) -> None:
    ds = AerialCrops(
        synth_dir, split="train", crop=64, samples_per_tile=6, scale_range=(0.5, 2.0), train=True
    )
    scales = []
    for i in range(len(ds)):
        item = ds[i]
        tile = ds.tiles[i % len(ds.tiles)]
        assert float(item["log_gsd"]) == pytest.approx(math.log(tile.gsd * item["scale"]), rel=1e-5)
        scales.append(item["scale"])
    assert min(scales) < 0.9 and max(scales) > 1.1
    first = ds[0]["image"].clone()
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["image"], first)
