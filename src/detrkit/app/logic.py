"""What the web app does, without Streamlit: read an upload, run the aerial pipeline, build the views.

Kept apart from ``streamlit_app.py`` so that it is tested like any library code.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rasterio.enums import Resampling

from detrkit.aerial.gsd import GsdEstimate, gsd_from_georeference
from detrkit.aerial.predict import AerialPredictor, RasterSource, open_raster, overlay_image
from detrkit.errors import ImageError

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff"]


@dataclass
class Upload:
    """An uploaded image saved to a temporary file, with its georeference GSD (None when absent)."""

    name: str
    path: Path
    digest: str
    width: int
    height: int
    georef_gsd: GsdEstimate | None


def save_upload(name: str, data: bytes, folder: str | Path | None = None) -> Upload:
    """Write ``data`` to a temp file keeping the suffix, open it, and read size and georeference."""
    suffix = Path(name).suffix.lower()
    if suffix.lstrip(".") not in UPLOAD_TYPES:
        raise ImageError(
            f"unsupported file type {suffix or '(none)'}; upload {', '.join(UPLOAD_TYPES)}", path=name
        )
    digest = hashlib.sha1(data).hexdigest()[:16]
    folder = Path(folder or tempfile.gettempdir()) / "detrkit-app"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}{suffix}"
    path.write_bytes(data)
    src = RasterSource.open(path)
    with src.ds as ds:
        est = gsd_from_georeference(ds.crs, ds.transform, ds.width, ds.height) if src.georeferenced else None
        return Upload(name, path, digest, ds.width, ds.height, est)


@dataclass
class AppResult:
    """Everything the page shows: summary, preview arrays, building table and download payloads."""

    summary: dict[str, Any]
    image: np.ndarray  # uint8 [h,w,3] preview of the input
    mask: np.ndarray  # bool [h,w] preview of the mask
    probability: np.ndarray  # uint8 [h,w,3] colour-mapped probability preview
    buildings: list[dict[str, Any]]
    geojson: str
    csv: str

    def overlay(self, opacity: float) -> np.ndarray:
        """The input preview with the mask in cyan at ``opacity`` in [0, 1]: uint8[h,w,3]."""
        return overlay_image(self.image, self.mask, opacity=float(opacity))


def analyse(
    predictor: AerialPredictor,
    upload: Upload,
    out_dir: str | Path,
    *,
    gsd: float | None = None,
    zoom: float | None = None,
    lat: float | None = None,
) -> AppResult:
    """Run :meth:`AerialPredictor.predict_file` on the upload and load what the page needs."""
    out = Path(out_dir)
    summary = predictor.predict_file(upload.path, out, user_gsd=gsd, zoom=zoom, lat=lat)
    image = np.asarray(Image.open(out / "image.png").convert("RGB"))

    with open_raster(out / "mask.tif") as m:
        mask = m.read(1, out_shape=image.shape[:2], resampling=Resampling.nearest) > 0
    geojson = (out / "buildings.geojson").read_text()
    buildings = [f["properties"] for f in json.loads(geojson)["features"]]
    return AppResult(
        summary,
        image,
        mask,
        np.asarray(Image.open(out / "probability.png").convert("RGB")),
        buildings,
        geojson,
        (out / "buildings.csv").read_text(),
    )


def format_area(m2: float | None) -> str:
    """``1234.5`` -> ``'1,234.5 m²'``; hectares from 10,000 m²; ``'-'`` when unknown."""
    if m2 is None:
        return "-"
    if m2 >= 10_000:
        return f"{m2 / 10_000:,.2f} ha ({m2:,.0f} m²)"
    return f"{m2:,.1f} m²"


def format_area_short(m2: float | None) -> str:
    """A compact area for metric tiles: ``'36,362 m²'`` below 1 km², else ``'1.25 km²'``."""
    if m2 is None:
        return "-"
    return f"{m2:,.0f} m²" if m2 < 1e6 else f"{m2 / 1e6:,.2f} km²"


def model_accuracy_text(card: dict[str, Any]) -> str:
    """One line of a model card's measured accuracy, e.g. ``'Measured: accra_heldout at 0.3 m: IoU 0.61, area -8%'``."""
    parts = []
    for source, rows in (card.get("accuracy") or {}).items():
        if not isinstance(rows, list) or source.endswith("_gsd"):
            continue
        for r in rows:
            at = f" at {r['gsd_m']:g} m" if r.get("gsd_m") else ""
            parts.append(f"{source}{at}: IoU {r['iou_mean']:.2f}, area {r['total_area_error_pct']:+.0f}%")
    return (
        ("Measured: " + "; ".join(parts) + ".") if parts else "No measured accuracy recorded for this model."
    )
