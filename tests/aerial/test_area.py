"""Area and buildings of masks: exact against pixel counts, PROJ equal-area areas and the synthetic truth."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import box, shape
from typer.testing import CliRunner

from detrkit.aerial.area import label_buildings, measure_mask
from detrkit.aerial.gsd import GsdEstimate
from detrkit.aerial.predict import measure_mask_file
from detrkit.aerial.vector import buildings_csv, buildings_geojson
from detrkit.cli.main import app

EQUAL_AREA = CRS.from_epsg(6933)
# (row0, row1, col0, col1) rectangles, well apart; a 1-pixel speck at (118, 118)
RECTS = [(5, 25, 5, 45), (40, 70, 10, 30), (80, 110, 60, 115), (10, 30, 70, 90)]


def _mask() -> np.ndarray:
    m = np.zeros((120, 120), dtype=np.uint8)
    for r0, r1, c0, c1 in RECTS:
        m[r0:r1, c0:c1] = 255
    m[118, 118] = 255
    return m


def _write(path: Path, mask: np.ndarray, crs: str | None, t: Affine | None) -> Path:
    profile = {
        "driver": "GTiff",
        "width": mask.shape[1],
        "height": mask.shape[0],
        "count": 1,
        "dtype": "uint8",
    }
    if crs:
        profile.update(crs=crs, transform=t)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask[None])
    return path


def test_projected_geotiff_exact(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.tif", _mask(), "EPSG:32631", Affine(0.5, 0, 431000, 0, -0.5, 5411000))
    rep = measure_mask_file(path, min_area_m2=1.0)
    pixels = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in RECTS)
    assert rep.built_pixels == pixels + 1
    assert rep.built_area_m2 == pytest.approx((pixels + 1) * 0.25, rel=1e-12)
    assert rep.built_fraction == pytest.approx((pixels + 1) / 120**2)
    assert rep.building_count == 4 and rep.speck_count == 1 and rep.gsd.source == "georeference"
    areas = sorted(b.area_m2 for b in rep.buildings)
    assert areas == pytest.approx(sorted((r1 - r0) * (c1 - c0) * 0.25 for r0, r1, c0, c1 in RECTS))
    b = next(b for b in rep.buildings if b.pixels == 20 * 40)
    assert b.perimeter_m == pytest.approx(2 * (20 + 40) * 0.5)
    assert (b.centroid_x, b.centroid_y) == pytest.approx((431000 + 25 * 0.5, 5411000 - 15 * 0.5))
    assert b.geometry.area == pytest.approx(200.0) and 2.0 < b.lon < 3.1 and 48.8 < b.lat < 48.9


@pytest.mark.parametrize(
    "crs,t",
    [
        ("EPSG:4326", Affine(1e-5, 0, 2.35, 0, -1e-5, 48.86)),
        ("EPSG:3857", Affine(0.6, 0, 261600.0, 0, -0.6, 6251000.0)),
    ],
)
def test_geographic_and_mercator_areas_match_equal_area_projection(
    tmp_path: Path, crs: str, t: Affine
) -> None:
    path = _write(tmp_path / "m.tif", _mask(), crs, t)
    rep = measure_mask_file(path, min_area_m2=0.0, min_pixels=1)
    total = 0.0
    for r0, r1, c0, c1 in RECTS + [(118, 119, 118, 119)]:
        footprint = box(*(t @ (c0, r1)), *(t @ (c1, r0)))
        dense = footprint.segmentize(footprint.length / 400)
        expected = shape(transform_geom(crs, EQUAL_AREA, dense.__geo_interface__)).area
        total += expected
        got = [bd.area_m2 for bd in rep.buildings if bd.pixels == (r1 - r0) * (c1 - c0)]
        assert got and got[0] == pytest.approx(expected, rel=1e-6)
    assert rep.built_area_m2 == pytest.approx(total, rel=1e-6)


def test_png_needs_a_gsd_and_cli_reports(tmp_path: Path) -> None:
    png = tmp_path / "m.png"
    Image.fromarray(_mask()).save(png)
    runner = CliRunner()
    res = runner.invoke(app, ["aerial", "area", "--mask", str(png), "--gsd", "0.25", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    pixels = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in RECTS) + 1
    assert d["built_area_m2"] == pytest.approx(pixels * 0.0625) and d["building_count"] == 4
    assert d["gsd"]["source"] == "user" and len(d["buildings"]) == 4
    res = runner.invoke(app, ["aerial", "area", "--mask", str(png), "--zoom", "19", "--lat", "0", "--json"])
    gsd = 156543.03392 / 2**19
    assert json.loads(res.stdout)["built_area_m2"] == pytest.approx(pixels * gsd**2)
    res = runner.invoke(
        app, ["aerial", "area", "--mask", str(png), "--out", str(tmp_path / "v"), "--gsd", "1"]
    )
    assert res.exit_code == 0 and "buildings" in res.stdout
    assert len((tmp_path / "v" / "buildings.csv").read_text().splitlines()) == 5


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the ``detrkit`` entry point in-process; returns (exit status, stderr)."""
    from detrkit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0), capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "m.png"
    Image.fromarray(_mask()).save(png)
    for args, words in (
        (["--mask", "/nonexistent/m.tif"], "not found"),
        (["--mask", __file__], "not a readable"),
        (["--mask", str(png)], "--gsd"),
        (["--mask", str(png), "--zoom", "3"], "--lat"),
    ):
        rc, err = _main(["aerial", "area", *args], capsys)
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error:") and words in err, err
        assert args[1] in err or words == "--lat"


def test_split_touching_and_strips() -> None:
    m = np.zeros((60, 100), bool)
    m[10:40, 10:40] = m[22:28, 40:50] = m[10:40, 50:80] = True  # two squares joined by a neck
    lab = label_buildings(m)
    assert sorted(int((lab == i).sum()) for i in range(1, lab.max() + 1)) == [930, 930]
    assert label_buildings(m, split_touching=False).max() == 1
    ell = np.zeros((60, 100), bool)
    ell[5:55, 5:20] = ell[40:55, 5:70] = True
    assert label_buildings(ell).max() == 1
    gsd = GsdEstimate(0.5, "user")
    one = measure_mask(m | np.roll(ell, 40, axis=1), gsd=gsd, min_area_m2=0)
    strips = measure_mask(m | np.roll(ell, 40, axis=1), gsd=gsd, min_area_m2=0, strip_rows=7)
    assert one.built_area_m2 == strips.built_area_m2
    assert sorted(b.pixels for b in one.buildings) == sorted(b.pixels for b in strips.buildings)
    assert sum(b.area_m2 for b in one.buildings) == pytest.approx(one.built_area_m2)


def test_synthetic_truth_is_recovered_exactly(synth_dir: Path) -> None:
    truth = json.loads((synth_dir / "ground_truth.json").read_text())
    for rel, t in list(truth["tiles"].items())[:6]:
        rep = measure_mask_file(synth_dir / rel.replace("images", "gt"), min_area_m2=0.0, min_pixels=1)
        assert rep.built_area_m2 == pytest.approx(t["built_area_m2"], rel=1e-12)
        assert rep.building_count == len(t["buildings"])
        got = sorted(round(b.area_m2, 6) for b in rep.buildings)
        assert got == sorted(round(b["area_m2"], 6) for b in t["buildings"])


def test_exports(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.tif", _mask(), "EPSG:32631", Affine(0.5, 0, 431000, 0, -0.5, 5411000))
    rep = measure_mask_file(path)
    with rasterio.open(path) as ds:
        gj = buildings_geojson(rep, ds.crs)
    assert gj["detrkit:coordinates"] == "lonlat" and len(gj["features"]) == 4
    lon, lat = gj["features"][0]["geometry"]["coordinates"][0][0]
    assert 2.0 < lon < 3.1 and 48.8 < lat < 48.9
    rows = list(csv.DictReader(io.StringIO(buildings_csv(rep))))
    assert len(rows) == 4 and float(rows[0]["area_m2"]) == pytest.approx(rep.buildings[0].area_m2)
    plain = measure_mask(_mask() > 0, gsd=GsdEstimate(1.0, "user"))
    assert buildings_geojson(plain)["detrkit:coordinates"] == "pixel"
