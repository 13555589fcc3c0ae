"""``aerial area`` output: centroid decimals follow the CRS units (degrees need 6, metres 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from detrkit.cli.aerial import coordinate_digits
from detrkit.cli.main import main


def test_coordinate_digits() -> None:
    assert coordinate_digits("EPSG:4326") == 6  # 1e-6 degree ~ 0.1 m
    assert coordinate_digits("EPSG:32633") == 2  # UTM metres
    assert coordinate_digits(None) == 1  # pixels


def test_geographic_centroids_are_not_rounded_to_a_kilometre(tmp_path: Path, capsys) -> None:
    # two 6x6-pixel buildings ~50 m apart near Rio (lon -43.18, lat -22.95) at ~1.1e-5 degree/px
    mask = np.zeros((64, 64), np.uint8)
    mask[10:16, 10:16] = 255
    mask[10:16, 50:56] = 255
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(-43.18, -22.95, 1.1e-5, 1.1e-5)) as dst:  # fmt: skip
        dst.write(mask[None])
    with pytest.raises(SystemExit) as info:
        main(["aerial", "area", "--mask", str(path), "--min-area", "0"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "-43.1" in line]
    assert len(rows) == 2, out
    xs = [float(next(c for c in row.replace("│", " ").split() if c.startswith("-43."))) for row in rows]
    assert abs(xs[1] - xs[0] - 40 * 1.1e-5) < 2e-6  # the two centroids differ in the printed values
    assert all(len(str(x).split(".")[1]) >= 5 for x in xs)
