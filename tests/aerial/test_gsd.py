"""GSD sources and per-pixel ground areas, checked against PROJ (through rasterio) and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform, transform_geom
from shapely.geometry import box, shape

from detrkit.aerial.gsd import (
    GsdError,
    gsd_from_georeference,
    metres_per_degree,
    pixel_area_rows,
    resolve_gsd,
    web_mercator_gsd,
)

EQUAL_AREA = CRS.from_epsg(6933)  # WGS 84 / NSIDC EASE-Grid 2.0 Global: an equal-area projection


def _ground_distance(crs: CRS, p: tuple[float, float], q: tuple[float, float]) -> float:
    """Distance in metres between two points of ``crs``, measured in the local UTM zone by PROJ."""
    lon, lat = transform(crs, "EPSG:4326", [p[0]], [p[1]])
    zone = int((lon[0] + 180) // 6) + 1
    utm = CRS.from_epsg((32600 if lat[0] >= 0 else 32700) + zone)
    xs, ys = transform(crs, utm, [p[0], q[0]], [p[1], q[1]])
    return math.hypot(xs[1] - xs[0], ys[1] - ys[0])


def test_web_mercator_hand_values() -> None:
    assert web_mercator_gsd(0, 0.0) == pytest.approx(156543.03392)
    assert web_mercator_gsd(1, 60.0) == pytest.approx(156543.03392 * 0.5 / 2)
    assert web_mercator_gsd(18, 48.85) == pytest.approx(156543.03392 * math.cos(math.radians(48.85)) / 2**18)
    with pytest.raises(GsdError, match="zoom"):
        web_mercator_gsd(31, 0.0)
    with pytest.raises(GsdError, match="latitude"):
        web_mercator_gsd(10, 86.0)


def test_projected_metres_and_feet() -> None:
    est = gsd_from_georeference(CRS.from_epsg(32631), Affine(0.3, 0, 500000, 0, -0.3, 5e6), 100, 100)
    assert est is not None and est.source == "georeference"
    assert est.metres_per_pixel == pytest.approx(0.3)
    # NAD83 / New York Long Island (ftUS): 1 US survey foot = 1200/3937 m
    est = gsd_from_georeference(CRS.from_epsg(2263), Affine(1, 0, 1e6, 0, -1, 2e5), 10, 10)
    assert est is not None and est.metres_per_pixel == pytest.approx(1200 / 3937, rel=1e-9)


def test_geographic_gsd_matches_proj_distances() -> None:
    crs = CRS.from_epsg(4326)
    t = Affine(1e-5, 0, 2.35, 0, -1e-5, 48.9)
    est = gsd_from_georeference(crs, t, 200, 200)
    cx, cy = t @ (100, 100)
    gx = _ground_distance(crs, (cx, cy), (cx + 1e-5, cy))
    gy = _ground_distance(crs, (cx, cy), (cx, cy - 1e-5))
    # UTM has a scale factor up to ~1.0004 at this longitude, hence the tolerance
    assert est is not None and est.metres_per_pixel == pytest.approx(math.sqrt(gx * gy), rel=1e-3)
    mx, my = metres_per_degree(cy)
    assert mx * 1e-5 == pytest.approx(gx, rel=1e-3) and my * 1e-5 == pytest.approx(gy, rel=1e-3)


def test_web_mercator_crs_is_corrected_by_cos_latitude() -> None:
    crs = CRS.from_epsg(3857)
    x, y = transform("EPSG:4326", crs, [10.0], [60.0])
    t = Affine(1.0, 0, x[0] - 50, 0, -1.0, y[0] + 50)
    est = gsd_from_georeference(crs, t, 100, 100)
    assert est is not None and est.metres_per_pixel == pytest.approx(0.5, rel=1e-2)  # cos(60°) = 0.5
    d = _ground_distance(crs, (x[0], y[0]), (x[0] + 1.0, y[0]))
    assert est.metres_per_pixel == pytest.approx(d, rel=1e-3)


@pytest.mark.parametrize(
    "epsg,t",
    [
        (4326, Affine(2e-4, 0, 24.0, 0, -2e-4, 61.0)),
        (3857, Affine(30.0, 0, 2.6e6, 0, -30.0, 8.7e6)),
        (32633, Affine(0.5, 0, 4e5, 0, -0.5, 6e6)),
    ],
)
def test_pixel_area_rows_sum_equals_equal_area_projection(epsg: int, t: Affine) -> None:
    crs = CRS.from_epsg(epsg)
    h, w = 300, 200
    rows = pixel_area_rows(crs, t, h)
    assert rows is not None and rows.shape == (h,)
    footprint = box(*(t @ (0, h)), *(t @ (w, 0)))
    if epsg == 32633:  # planar area in the projection's own metres
        expected = footprint.area
    else:
        dense = footprint.segmentize(footprint.length / 4000)
        expected = shape(transform_geom(crs, EQUAL_AREA, dense.__geo_interface__)).area
    assert rows.sum() * w == pytest.approx(expected, rel=1e-6)
    if epsg != 32633:
        assert rows[0] < rows[-1]  # pixels grow towards the equator (northern hemisphere)


def test_resolve_priority_and_errors() -> None:
    geo = gsd_from_georeference(CRS.from_epsg(32631), Affine(0.3, 0, 0, 0, -0.3, 0), 10, 10)
    assert resolve_gsd(user_gsd=0.5, georeference=geo).source == "user"
    assert resolve_gsd(zoom=17, lat=0.0, georeference=geo).source == "zoom"
    assert resolve_gsd(georeference=geo, model_gsd=1.0).source == "georeference"
    est = resolve_gsd(model_gsd=1.0, model_tiles=4)
    assert est is not None and est.source == "model" and "4 tiles" in est.detail
    assert resolve_gsd() is None
    with pytest.raises(GsdError, match="together"):
        resolve_gsd(zoom=17)
    with pytest.raises(GsdError):
        resolve_gsd(user_gsd=-1.0)
    assert gsd_from_georeference(None, Affine.identity(), 10, 10) is None
    assert pixel_area_rows(None, Affine.identity(), 10) is None
    assert np.isfinite(web_mercator_gsd(20, -33.9))


def test_calibrate_gsd_fits_the_model_head_on_generated_tiles(random_checkpoint) -> None:
    """The calibration predicts each generated tile like a user image and fits log-GSD on it."""
    import math

    from detrkit.aerial.default_model import calibrate_gsd

    cal = calibrate_gsd(random_checkpoint, tiles_per_city=1, size=96, seed=5)
    assert cal.images == 3 and "seed 5" in cal.data
    assert math.isfinite(cal.slope) and math.isfinite(cal.intercept) and cal.residual_sd >= 0
