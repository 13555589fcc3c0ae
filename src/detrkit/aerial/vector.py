"""Export buildings: GeoJSON (RFC 7946 lon/lat when georeferenced, else pixel coordinates) and CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import rasterio
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


def rasterize_labels(image: str | Path, labels: str | Path, out_dir: str | Path) -> dict[str, object]:
    """Turn one image and its building polygons (GeoJSON, e.g. SpaceNet's) into the ``folder`` layout.

    Writes ``out_dir/images/<stem>.tif`` (a copy of the image) and ``out_dir/masks/<stem>.tif``
    (0/255, same grid and georeference) and returns ``{"image", "mask", "polygons"}`` (the number of
    building polygons, the instance count). Polygons are reprojected from the GeoJSON's CRS (its
    ``crs`` member, else WGS84 per RFC 7946) to the image's; an image without georeference takes
    polygons in pixel coordinates.
    """
    import shutil

    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    from detrkit.aerial.sources import open_quiet
    from detrkit.errors import DataError

    image, labels, out = Path(image), Path(labels), Path(out_dir)
    try:
        collection = json.loads(labels.read_text()) if labels.stat().st_size else {"features": []}
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"not a readable GeoJSON file ({type(err).__name__})", path=labels) from None
    src_crs = ((collection.get("crs") or {}).get("properties") or {}).get("name", "EPSG:4326")
    geoms = [f["geometry"] for f in collection.get("features", []) if f.get("geometry")]
    with open_quiet(image) as ds:
        shape, transform, crs = (ds.height, ds.width), ds.transform, ds.crs
    if crs is not None and geoms:
        geoms = [transform_geom(src_crs, crs, g) for g in geoms]
    else:
        from affine import Affine

        transform = Affine.identity()
    mask = (
        rasterize([(g, 255) for g in geoms], out_shape=shape, transform=transform, dtype="uint8")
        if geoms
        else np.zeros(shape, np.uint8)
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    dest_image = out / "images" / f"{image.stem}{image.suffix}"
    shutil.copyfile(image, dest_image)
    dest_mask = out / "masks" / f"{image.stem}.tif"
    profile = {"driver": "GTiff", "width": shape[1], "height": shape[0], "count": 1, "dtype": "uint8"}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(dest_mask, "w", compress="deflate", **profile) as dst:
        dst.write(mask[None])
    return {"image": str(dest_image), "mask": str(dest_mask), "polygons": len(geoms)}
