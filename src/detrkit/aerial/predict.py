"""Building masks, probability maps, GSD and areas for images of any size.

``AerialPredictor.from_checkpoint(RUN|FILE)`` (or ``.default()``: the small model trained on the
generated data) then ``predict_file(src, out_dir)`` streams a tiled prediction window by window
(rasterio reads and writes) and writes ``mask.tif`` (0/255), ``prob.tif`` (probability x 255),
``overlay.png``, ``probability.png`` (previews, at most 2048 px), ``buildings.geojson``,
``buildings.csv`` and ``summary.json``. ``measure_mask_file`` does the area part alone on an
existing mask.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from detrkit.aerial.area import AreaReport, StripMeasurer
from detrkit.aerial.gsd import (
    GsdCalibration,
    GsdEstimate,
    describe_area,
    gsd_from_georeference,
    is_georeferenced,
    pixel_area_rows,
    resolve_gsd,
    uncalibrated_estimate,
)
from detrkit.aerial.model import AERIAL, AerialUNet
from detrkit.aerial.sources import band_scale, to_uint8
from detrkit.aerial.tiling import predict_stream
from detrkit.aerial.vector import write_vectors
from detrkit.devices import resolve_device
from detrkit.errors import ImageError
from detrkit.runs.restore import restore

PREVIEW_MAX = 2048
GDAL_CACHE_MB = 128
OVERLAY_COLOUR = (0, 210, 255)  # cyan: stands out on red roofs, green vegetation and grey asphalt


def open_raster(path: str | Path) -> rasterio.io.DatasetReader:
    """Open any raster rasterio reads (GeoTIFF, PNG, JPEG...), without the not-georeferenced warning."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("file not found", path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as err:
        raise ImageError(f"not a readable raster image ({str(err).splitlines()[0]})", path=path) from None


def read_raster(ds: Any, path: str | Path, *args: Any, **kwargs: Any) -> np.ndarray:
    """``ds.read(*args, **kwargs)``; a truncated or corrupt file raises one-line :class:`ImageError`."""
    try:
        return ds.read(*args, **kwargs)
    except RasterioIOError as err:
        detail = str(err.__cause__ or err).splitlines()[0]
        raise ImageError(
            f"{path}: cannot read the pixels, truncated or corrupt? ({detail})", path=path
        ) from None


@dataclass
class RasterSource:
    """An open input raster with what the pipeline needs: size, georeference, band scaling."""

    path: Path
    ds: Any
    georeferenced: bool
    scale: tuple[float, float]  # (lo, hi) mapping the band values to 0..255

    @classmethod
    def open(cls, path: str | Path) -> RasterSource:
        ds = open_raster(path)
        geo = is_georeferenced(ds.crs, ds.transform)
        # uint8 as is; 16-bit and float: 0.5-99.5 percentiles to 0..255 (read errors name the file)
        scale = band_scale(ds, read=lambda **kw: read_raster(ds, path, **kw))
        return cls(Path(path), ds, geo, scale)

    def bands(self) -> list[int]:
        return [1, 2, 3] if self.ds.count >= 3 else [1]

    def read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 [C,h,w] (C = 3, or 1 for grayscale) of a window, optionally resampled to ``out_shape``."""
        kw: dict[str, Any] = {"window": window}
        if out_shape is not None:
            kw.update(out_shape=(len(self.bands()), *out_shape), resampling=Resampling.average)
        return to_uint8(read_raster(self.ds, self.path, self.bands(), **kw), self.scale)


def _preview_shape(h: int, w: int) -> tuple[int, int]:
    f = max(1.0, max(h, w) / PREVIEW_MAX)
    return max(1, round(h / f)), max(1, round(w / f))


def overlay_image(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    opacity: float = 0.45,
    colour: tuple[int, int, int] = OVERLAY_COLOUR,
) -> np.ndarray:
    """Blend ``colour`` over ``image uint8[H,W,3]`` where ``mask bool[H,W]``; returns uint8[H,W,3]."""
    out = image.astype(np.float32).copy()
    out[mask] = out[mask] * (1 - opacity) + np.asarray(colour, np.float32) * opacity
    return out.astype(np.uint8)


def probability_image(prob: np.ndarray) -> np.ndarray:
    """``prob float[H,W]`` in [0,1] -> uint8[H,W,3] with matplotlib's magma colour map."""
    from matplotlib import colormaps

    return (colormaps["magma"](np.clip(prob, 0, 1))[..., :3] * 255).astype(np.uint8)


def _row_areas(src: RasterSource, est: GsdEstimate | None) -> np.ndarray | None:
    if est is not None and est.source == "georeference":
        return pixel_area_rows(src.ds.crs, src.ds.transform, src.ds.height)
    return None


def measure_mask_file(
    path: str | Path,
    *,
    user_gsd: float | None = None,
    zoom: float | None = None,
    lat: float | None = None,
    strip_rows: int = 4096,
    **kwargs: Any,
) -> AreaReport:
    """Area and buildings of an existing building mask (any raster; pixels > 0 are buildings)."""
    src = RasterSource.open(path)
    ds = src.ds
    georef = gsd_from_georeference(ds.crs, ds.transform, ds.width, ds.height)
    est = resolve_gsd(user_gsd=user_gsd, zoom=zoom, lat=lat, georeference=georef)
    row_area = _row_areas(src, est)
    measurer = StripMeasurer(
        ds.width,
        ds.height,
        crs=ds.crs if src.georeferenced else None,
        transform=ds.transform if src.georeferenced else None,
        row_area=row_area,
        gsd=est,
        **kwargs,
    )
    with ds:
        for r0 in range(0, ds.height, strip_rows):
            h = min(strip_rows, ds.height - r0)
            measurer.add(read_raster(ds, path, 1, window=Window(0, r0, ds.width, h)) > 0)
    return measurer.finish()


def model_card(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """What a model is: ``ckpt["card"]`` (name, training data, measured accuracy) when the file has
    one (:func:`detrkit.aerial.default_model.export_inference_checkpoint`), else what the checkpoint
    itself says (architecture, training data folders, validation IoU)."""
    if isinstance(ckpt.get("card"), dict):
        return dict(ckpt["card"])
    cfg = ckpt.get("config") or {}
    metrics = ckpt.get("metrics") or {}
    data = cfg.get("data", "unknown")
    items = data if isinstance(data, list) else [data]
    names = [str(d.get("path") if isinstance(d, dict) else d) for d in items]
    acc = {k: v for k, v in metrics.items() if k in ("val/IoU", "val/gsd_mape")}
    return {
        "name": f"{ckpt.get('model_name', 'model')} ({path.name})",
        "trained_on": ", ".join(names),
        "accuracy": acc,
    }


class AerialPredictor:
    """A loaded aerial model plus tiling settings. ``device``: ``auto``/``cpu``/``cuda``."""

    def __init__(
        self,
        model: AerialUNet,
        *,
        tile: int = 512,
        overlap: int = 128,
        batch_size: int = 8,
        device: str = "auto",
        threshold: float = 0.5,
        amp: bool = True,
        name: str = "model",
        card: dict[str, Any] | None = None,
        calibration: GsdCalibration | None = None,
    ) -> None:
        dev = resolve_device(device)
        self.model, self.device = model.to(dev).eval(), dev
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.threshold, self.amp, self.name = threshold, amp, name
        self.card = card or {"name": Path(name).stem, "trained_on": "unknown", "accuracy": {}}
        self.calibration = calibration

    @classmethod
    def from_checkpoint(cls, source: str | Path, **kwargs: Any) -> AerialPredictor:
        """A run folder (``best.pt``, else ``last.pt``) or a checkpoint file of ``detrkit aerial train``."""
        restored = restore(source, kind=AERIAL)
        model, ckpt = restored.model, restored.checkpoint
        kwargs.setdefault("tile", max(256, int(ckpt.get("tile", 512))))
        kwargs.setdefault("overlap", kwargs["tile"] // 4)
        # the decision threshold chosen for this model (bench/aerial_threshold.py), else 0.5
        kwargs.setdefault("threshold", float(ckpt.get("threshold", 0.5)))
        cal = ckpt.get("gsd_calibration")
        return cls(
            model,
            name=str(restored.path),
            card=model_card(ckpt, restored.path),
            calibration=GsdCalibration(**cal) if cal else None,
            **kwargs,
        )

    @classmethod
    def default(cls, **kwargs: Any) -> AerialPredictor:
        """The shipped default model (:func:`detrkit.aerial.default_model.default_model_path`)."""
        from detrkit.aerial.default_model import default_model_path

        return cls.from_checkpoint(default_model_path(), **kwargs)

    def predict_file(
        self,
        source: str | Path,
        out_dir: str | Path,
        *,
        user_gsd: float | None = None,
        zoom: float | None = None,
        lat: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        **measure_kwargs: Any,
    ) -> dict[str, Any]:
        """Predict one image and write the outputs listed in the module docstring; returns the summary dict."""
        # GDAL's block cache defaults to 5 % of RAM and would hold every block read and written:
        # capping it keeps the memory of a streamed 20000 x 20000 raster independent of its height.
        # The outputs are written into a hidden sibling folder and moved into ``out_dir`` at the end:
        # a file that fails half-way (truncated GeoTIFF, Ctrl-C) leaves no partial output behind.
        out = Path(out_dir)
        partial = out.parent / f".{out.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
                summary = self._predict_file(
                    source,
                    partial,
                    user_gsd=user_gsd,
                    zoom=zoom,
                    lat=lat,
                    progress=progress,
                    **measure_kwargs,
                )
            out.mkdir(parents=True, exist_ok=True)
            for f in partial.iterdir():
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        summary["files"] = {k: str(out / Path(v).name) for k, v in summary["files"].items()}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _predict_file(
        self,
        source: str | Path,
        out_dir: str | Path,
        *,
        user_gsd: float | None,
        zoom: float | None,
        lat: float | None,
        progress: Callable[[int, int], None] | None,
        **measure_kwargs: Any,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        src = RasterSource.open(source)
        ds = src.ds
        out = Path(out_dir)
        georef = gsd_from_georeference(ds.crs, ds.transform, ds.width, ds.height)
        upfront = resolve_gsd(user_gsd=user_gsd, zoom=zoom, lat=lat, georeference=georef)
        measurer = StripMeasurer(
            ds.width,
            ds.height,
            crs=ds.crs if src.georeferenced else None,
            transform=ds.transform if src.georeferenced else None,
            row_area=_row_areas(src, upfront),
            gsd=upfront,
            **measure_kwargs,
        )
        profile = {
            "driver": "GTiff",
            "width": ds.width,
            "height": ds.height,
            "count": 1,
            "dtype": "uint8",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }
        if src.georeferenced:
            profile.update(crs=ds.crs, transform=ds.transform)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            mask_dst = rasterio.open(out / "mask.tif", "w", **profile)
            prob_dst = rasterio.open(out / "prob.tif", "w", **profile)
        try:

            def read_rows(r0: int, r1: int) -> np.ndarray:
                return src.read(Window(0, r0, ds.width, r1 - r0))

            def write_rows(r0: int, prob: np.ndarray) -> None:
                win = Window(0, r0, ds.width, prob.shape[0])
                mask = prob >= self.threshold
                prob_dst.write(np.round(prob * 255).astype(np.uint8)[None], window=win)
                mask_dst.write((mask * 255).astype(np.uint8)[None], window=win)
                measurer.add(mask)

            tile_log_gsd: list[float] = []
            _, n_tiles = predict_stream(
                self.model,
                read_rows,
                write_rows,
                ds.height,
                ds.width,
                tile=self.tile,
                overlap=self.overlap,
                batch_size=self.batch_size,
                device=self.device,
                in_channels=self.model.in_channels,
                amp=self.amp,
                progress=progress,
                tile_log_gsd=tile_log_gsd,
            )
        finally:
            mask_dst.close()
            prob_dst.close()
        model_gsd = (
            self.calibration.estimate(tile_log_gsd, building_pixels=measurer.component_pixels())
            if self.calibration is not None
            else uncalibrated_estimate(tile_log_gsd)
        )
        gsd = upfront or model_gsd
        if upfront is None:
            measurer.gsd = model_gsd
        report = measurer.finish()
        files = write_vectors(report, out, ds.crs if src.georeferenced else None)
        self._previews(src, out)
        ds.close()
        summary = {
            "source": str(source),
            "model": self.name,
            "model_card": self.card,
            "width": report.width,
            "height": report.height,
            "gsd": gsd.to_dict(),
            "model_gsd_m": model_gsd.metres_per_pixel,
            "model_gsd_uncertainty": model_gsd.uncertainty,
            "gsd_warning": gsd.warning,
            "tiles": n_tiles,
            **report.to_dict(with_buildings=False),
            "area_text": describe_area(report.to_dict(with_buildings=False).get("built_area_m2"), gsd),
            "threshold": self.threshold,
            "seconds": round(time.perf_counter() - t0, 3),
            "files": {
                k: str(v)
                for k, v in {
                    **files,
                    "mask": out / "mask.tif",
                    "prob": out / "prob.tif",
                    "overlay": out / "overlay.png",
                    "probability": out / "probability.png",
                }.items()
            },
        }
        return summary

    def _previews(self, src: RasterSource, out: Path) -> None:
        shape = _preview_shape(src.ds.height, src.ds.width)
        image = src.read(out_shape=shape)
        image = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
        with open_raster(out / "prob.tif") as p:
            prob = p.read(1, out_shape=shape, resampling=Resampling.average).astype(np.float32) / 255.0
        with open_raster(out / "mask.tif") as m:
            mask = m.read(1, out_shape=shape, resampling=Resampling.nearest) > 0
        Image.fromarray(overlay_image(image.transpose(1, 2, 0), mask)).save(out / "overlay.png")
        Image.fromarray(probability_image(prob)).save(out / "probability.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(out / "image.png")
