"""Export buildings: GeoJSON (RFC 7946 lon/lat when georeferenced, else pixel coordinates) and CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from shapely.geometry import mapping

from detrkit.aerial.area import AreaReport

CSV_COLUMNS = ["id", "pixels", "area_m2", "perimeter_m", "centroid_x", "centroid_y", "lon", "lat"]


def buildings_geojson(report: AreaReport, crs: object | None = None) -> dict:
    """A FeatureCollection of the report's buildings.

    With a CRS, geometries are transformed to WGS84 longitude/latitude (RFC 7946). Without one
    they stay in pixel coordinates (x right, y down) and the collection says so in
    ``"detrkit:coordinates": "pixel"``.
    """
    features = []
    geo = crs is not None
    for b in report.buildings:
        geom = mapping(b.geometry)
        if geo:
            from rasterio.warp import transform_geom

            geom = transform_geom(crs, "EPSG:4326", geom)
        features.append({"type": "Feature", "id": b.id, "geometry": geom, "properties": b.row()})
    return {
        "type": "FeatureCollection",
        "detrkit:coordinates": "lonlat" if geo else "pixel",
        "detrkit:source_crs": report.crs,
        "features": features,
    }


def buildings_csv(report: AreaReport) -> str:
    """CSV text with one row per building (:data:`CSV_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for b in report.buildings:
        writer.writerow({k: ("" if v is None else v) for k, v in b.row().items()})
    return buf.getvalue()


def write_vectors(report: AreaReport, out_dir: str | Path, crs: object | None = None) -> dict[str, Path]:
    """Write ``buildings.geojson`` and ``buildings.csv`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"geojson": out / "buildings.geojson", "csv": out / "buildings.csv"}
    paths["geojson"].write_text(json.dumps(buildings_geojson(report, crs)))
    paths["csv"].write_text(buildings_csv(report))
    return paths
