"""Ground sample distance (GSD, metres per pixel) and per-pixel ground area.

Sources, in the order :func:`resolve_gsd` tries them:

1. ``user``: a GSD given explicitly (``--gsd``);
2. ``zoom``: Web Mercator zoom level and latitude, ``156543.03392 * cos(lat) / 2**zoom``;
3. ``georeference``: the GeoTIFF's CRS and transform. Projected CRS: the pixel size in metres
   (linear unit converted); geographic CRS: degrees converted to metres on the WGS84 ellipsoid at
   the image's latitude; EPSG:3857 (Web Mercator): the nominal pixel size times cos(latitude) (with the WGS84
   radii of curvature, :func:`mercator_ground_scale`);
4. ``model``: the GSD head of the segmentation model, averaged over tiles, and (when the image
   shows enough buildings) the median size in pixels of the buildings the model found, combined
   by a linear calibration fitted on generated images (:class:`GsdCalibration`). Building sizes
   carry a prior (the calibration images' buildings: 7-22 m by 8-36 m), so the estimate is biased
   where buildings are much smaller or larger than that; its uncertainty is the calibration's.

An explicit user value wins over the file because a flag that is silently ignored is worse than a
file that is overridden on purpose. Every estimate says which source it came from.

Areas are exact per pixel: :func:`pixel_area_rows` gives the ground area of one pixel in each row
(rows differ in geographic and Web Mercator rasters), using the closed-form area of a
latitude/longitude quadrangle on the WGS84 ellipsoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine

from detrkit.errors import DetrkitError

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
WGS84_B = WGS84_A * (1.0 - WGS84_F)
WEB_MERCATOR_GSD_Z0 = 156543.03392  # metres per pixel at zoom 0 on the equator (256 px tiles)
WEB_MERCATOR_EPSG = (3857, 3785, 900913, 102100, 102113)
MAX_MERCATOR_LAT = 85.05112878


class GsdError(DetrkitError):
    """A GSD, zoom level or latitude given by the user is out of range."""


@dataclass(frozen=True)
class GsdEstimate:
    """A GSD with its provenance.

    Attributes:
        metres_per_pixel: geometric mean of the x and y pixel sizes on the ground, in metres.
        source: one of ``"user"``, ``"zoom"``, ``"georeference"``, ``"model"``.
        detail: a short human-readable explanation (CRS, zoom/latitude, tile count).
        uncertainty: for ``model`` estimates, the relative half-width of a ~68 % interval
            (:class:`GsdCalibration`); None for the exact sources.
        warning: set when the estimate should not be trusted (large or unknown uncertainty).
    """

    metres_per_pixel: float
    source: str
    detail: str = ""
    uncertainty: float | None = None  # relative (0.2 = ±20 %), for model estimates; None: exact/unknown
    warning: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "metres_per_pixel": self.metres_per_pixel,
            "source": self.source,
            "detail": self.detail,
            "uncertainty": self.uncertainty,
            "warning": self.warning,
        }


def web_mercator_gsd(zoom: float, lat_deg: float) -> float:
    """Ground size of one pixel of a 256-px Web Mercator tile pyramid: ``156543.03392 cos(lat) / 2^zoom``."""
    if not 0 <= zoom <= 30:
        raise GsdError(f"zoom {zoom} is out of range: Web Mercator zoom levels are 0..30")
    if not abs(lat_deg) < MAX_MERCATOR_LAT:
        raise GsdError(f"latitude {lat_deg} is out of range: Web Mercator covers |lat| < {MAX_MERCATOR_LAT}")
    return WEB_MERCATOR_GSD_Z0 * math.cos(math.radians(lat_deg)) / 2.0**zoom


def check_user_gsd(gsd: float) -> float:
    """Validate a user-given GSD in metres per pixel (0 < gsd <= 10 km)."""
    if not (math.isfinite(gsd) and 0 < gsd <= 10_000):
        raise GsdError(f"GSD {gsd} m/pixel is not a positive number of metres per pixel")
    return float(gsd)


def metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """Metres per degree of (longitude, latitude) on the WGS84 ellipsoid at ``lat_deg``."""
    phi = math.radians(lat_deg)
    w = math.sqrt(1.0 - WGS84_E2 * math.sin(phi) ** 2)
    n = WGS84_A / w  # prime vertical radius of curvature
    m = WGS84_A * (1.0 - WGS84_E2) / w**3  # meridional radius of curvature
    return n * math.cos(phi) * math.pi / 180.0, m * math.pi / 180.0


def _authalic_integral(phi: np.ndarray) -> np.ndarray:
    """Ellipsoid area between the equator and latitude ``phi`` (radians) per radian of longitude."""
    e = math.sqrt(WGS84_E2)
    s = np.sin(phi)
    return (WGS84_B**2 / 2.0) * (
        s / (1.0 - WGS84_E2 * s**2) + np.log((1.0 + e * s) / (1.0 - e * s)) / (2.0 * e)
    )


def quadrangle_area_m2(lat1_deg: np.ndarray, lat2_deg: np.ndarray, dlon_deg: float) -> np.ndarray:
    """Exact WGS84 area (m²) of the quadrangles between two latitudes spanning ``dlon_deg`` degrees."""
    a1 = _authalic_integral(np.radians(np.asarray(lat1_deg, dtype=np.float64)))
    a2 = _authalic_integral(np.radians(np.asarray(lat2_deg, dtype=np.float64)))
    return np.abs(a2 - a1) * math.radians(abs(dlon_deg))


def mercator_ground_scale(lat_deg: float) -> tuple[float, float]:
    """Ground metres per EPSG:3857 metre (x, y) at ``lat_deg``: ``cos(lat)`` times the WGS84 radii over R.

    EPSG:3857 applies spherical formulas (radius R = 6378137 m) to WGS84 coordinates, so the exact
    factor is ``N cos(lat) / R`` east-west and ``M cos(lat) / R`` north-south (N, M: the prime-vertical
    and meridional radii); plain ``cos(lat)`` is off by up to 0.7 % at high latitudes.
    """
    mx, my = metres_per_degree(lat_deg)
    per_radian = 180.0 / math.pi / WGS84_A
    return mx * per_radian, my * per_radian * math.cos(math.radians(lat_deg))


def mercator_y_to_lat(y: np.ndarray | float) -> np.ndarray:
    """EPSG:3857 northing (metres) to latitude (degrees); 3857 uses spherical formulas on WGS84 lat/lon."""
    return np.degrees(2.0 * np.arctan(np.exp(np.asarray(y, dtype=np.float64) / WGS84_A)) - math.pi / 2.0)


def _kind(crs: object | None) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()  # type: ignore[attr-defined]
    if epsg in WEB_MERCATOR_EPSG:
        return "mercator"
    if crs.is_geographic:  # type: ignore[attr-defined]
        return "geographic"
    if crs.is_projected:  # type: ignore[attr-defined]
        return "projected"
    return "none"


def is_georeferenced(crs: object | None, transform: Affine | None) -> bool:
    """True when the raster has a usable CRS and a non-identity transform."""
    return _kind(crs) != "none" and transform is not None and not transform.is_identity


def pixel_area_rows(crs: object | None, transform: Affine, height: int) -> np.ndarray | None:
    """Ground area in m² of one pixel in each row of a georeferenced raster.

    Args:
        crs: a ``rasterio.crs.CRS`` (or None), transform: the raster's affine transform.
        height: number of rows H.
    Returns:
        float64[H] (exact for projected, geographic and Web Mercator rasters without rotation), or
        None when the raster is not georeferenced. Rotated geographic/Mercator rasters use the
        latitude of each row's first pixel.
    """
    kind = _kind(crs)
    if kind == "none" or transform.is_identity:
        return None
    rows = np.arange(height, dtype=np.float64)
    if kind == "projected":
        factor = float(crs.linear_units_factor[1])  # type: ignore[attr-defined]
        return np.full(height, abs(transform.determinant) * factor**2)
    # edges of each row (north and south), at the left edge of the raster
    y_top = transform.f + transform.e * rows
    y_bot = y_top + transform.e
    dx = math.hypot(transform.a, transform.d)
    if kind == "geographic":
        return quadrangle_area_m2(y_top, y_bot, dx)
    lat_top, lat_bot = mercator_y_to_lat(y_top), mercator_y_to_lat(y_bot)
    return quadrangle_area_m2(lat_top, lat_bot, math.degrees(dx / WGS84_A))


def gsd_from_georeference(
    crs: object | None, transform: Affine | None, width: int, height: int
) -> GsdEstimate | None:
    """GSD (m/pixel) at the centre of a georeferenced raster, or None when there is no georeference.

    Projected CRS: pixel size times the CRS's linear unit; geographic CRS: pixel size in degrees
    converted to metres at the centre latitude; Web Mercator: pixel size times cos(centre latitude).
    The returned value is the geometric mean of the x and y sizes.
    """
    if transform is None or not is_georeferenced(crs, transform):
        return None
    kind = _kind(crs)
    sx, sy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    cx, cy = transform @ (width / 2.0, height / 2.0)
    name = crs.to_string()  # type: ignore[attr-defined]
    if kind == "projected":
        factor = float(crs.linear_units_factor[1])  # type: ignore[attr-defined]
        gsd = math.sqrt(sx * sy) * factor
        return GsdEstimate(gsd, "georeference", f"{name}: pixel size {sx * factor:.4g} x {sy * factor:.4g} m")
    if kind == "geographic":
        mx, my = metres_per_degree(cy)
        gsd = math.sqrt(sx * mx * sy * my)
        return GsdEstimate(gsd, "georeference", f"{name}: degrees converted to metres at latitude {cy:.5f}")
    lat = float(mercator_y_to_lat(cy))
    kx, ky = mercator_ground_scale(lat)
    gsd = math.sqrt(sx * kx * sy * ky)
    return GsdEstimate(
        gsd, "georeference", f"{name}: Web Mercator pixel scaled by cos(latitude {lat:.5f}) on WGS84"
    )


def resolve_gsd(
    *,
    user_gsd: float | None = None,
    zoom: float | None = None,
    lat: float | None = None,
    georeference: GsdEstimate | None = None,
    model_gsd: float | None = None,
    model_tiles: int = 0,
) -> GsdEstimate | None:
    """Pick the GSD source: user, then zoom+latitude, then the file's georeference, then the model."""
    if user_gsd is not None:
        return GsdEstimate(check_user_gsd(user_gsd), "user", "given by the user")
    if (zoom is None) != (lat is None):
        raise GsdError("--zoom and --lat go together: give both to compute a Web Mercator GSD")
    if zoom is not None and lat is not None:
        return GsdEstimate(
            web_mercator_gsd(zoom, lat), "zoom", f"Web Mercator zoom {zoom:g} at latitude {lat:g}"
        )
    if georeference is not None:
        return georeference
    if model_gsd is not None:
        return GsdEstimate(
            float(model_gsd), "model", f"predicted by the model, geometric mean over {model_tiles} tiles"
        )
    return None


UNCERTAIN_GSD = 0.25  # a model GSD more uncertain than ±25 % (area ±56 %) comes with a warning
#: buildings of fewer pixels do not count for the size feature (specks, fragments)
MIN_BUILDING_PX = 20
#: fewer buildings than this: no size feature (the median of a handful says little)
MIN_BUILDINGS = 5


def building_size_feature(building_pixels: list[int] | np.ndarray | None) -> float | None:
    """``log(median pixel count)`` of the buildings of at least :data:`MIN_BUILDING_PX` pixels, or
    None with fewer than :data:`MIN_BUILDINGS` of them. For a fixed distribution of building sizes
    on the ground, ``log g = (log A_m2 - feature) / 2``: the feature moves the GSD estimate with
    slope -1/2 (a calibration fits it)."""
    if building_pixels is None:
        return None
    px = np.asarray(building_pixels, np.float64)
    px = px[px >= MIN_BUILDING_PX]
    return float(math.log(np.median(px))) if px.size >= MIN_BUILDINGS else None


@dataclass(frozen=True)
class GsdCalibration:
    """Linear calibration of the model's log-GSD, ``log g = slope * log g_model + intercept``.

    Fitted on generated tiles the model was not trained on (:meth:`fit`); ``residual_sd`` is the
    standard deviation of the calibrated log-errors there (per image), the part of the uncertainty
    that the spread over one image's tiles does not show.
    """

    slope: float
    intercept: float
    residual_sd: float
    images: int
    data: str = ""
    #: with building sizes: ``log g = a * head + b * size_feature + c`` as ``[a, b, c]`` (None: not fitted)
    size_coef: list[float] | None = None
    #: residual standard deviation of that fit (log), and how many images it used
    size_residual_sd: float | None = None
    size_images: int = 0
    #: median absolute log-error of the calibrated estimate on *real* tiles (the fits above are
    #: on generated scenes only); added to every estimate's uncertainty. None: not measured.
    real_log_error: float | None = None
    #: which real tiles measured it
    real_data: str = ""

    @classmethod
    def fit(
        cls,
        pred_log: np.ndarray,
        true_log: np.ndarray,
        *,
        size_log: list[float | None] | np.ndarray | None = None,
        data: str = "",
    ) -> GsdCalibration:
        """Least squares of ``true_log[N]`` on ``pred_log[N]`` (natural logs of m/pixel), N >= 3.

        ``size_log[N]`` (:func:`building_size_feature` per image, None where it has none) also fits
        the combined model on the images that have it, when there are at least 5.
        """
        x, y = np.asarray(pred_log, np.float64), np.asarray(true_log, np.float64)
        if x.size < 3:
            raise GsdError(f"a GSD calibration needs at least 3 images, got {x.size}")
        slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 1e-9 else (0.0, float(y.mean()))
        resid = y - (slope * x + intercept)
        sd = float(np.sqrt((resid**2).sum() / max(1, x.size - 2)))
        coef, size_sd, size_n = None, None, 0
        if size_log is not None:
            have = np.array([v is not None for v in size_log])
            if have.sum() >= 5:
                s = np.array([v for v in size_log if v is not None], np.float64)
                design = np.stack([x[have], s, np.ones_like(s)], axis=1)
                sol, *_ = np.linalg.lstsq(design, y[have], rcond=None)
                r = y[have] - design @ sol
                coef = [float(v) for v in sol]
                size_sd, size_n = float(np.sqrt((r**2).sum() / max(1, r.size - 3))), int(r.size)
        return cls(float(slope), float(intercept), sd, int(x.size), data, coef, size_sd, size_n)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    def estimate(
        self, tile_log_gsd: list[float] | np.ndarray, building_pixels: list[int] | np.ndarray | None = None
    ) -> GsdEstimate:
        """Calibrated GSD of one image from its tiles' predicted log-GSDs (and, when the calibration
        has the combined fit and the image enough buildings, their pixel sizes), with its uncertainty.

        ``sigma = sqrt(residual_sd² + (a * sd_tiles)² / n + real_log_error²)`` in log space (``a``:
        the head's coefficient; ``real_log_error``: the error measured on real tiles, when known);
        the uncertainty is ``exp(sigma) - 1`` and a warning is set above :data:`UNCERTAIN_GSD`.
        """
        t = np.asarray(tile_log_gsd, np.float64)
        n = max(1, t.size)
        spread = float(t.std(ddof=1)) if t.size > 1 else 0.0
        feature = building_size_feature(building_pixels) if self.size_coef is not None else None
        if feature is not None and self.size_coef is not None and self.size_residual_sd is not None:
            a, b, c = self.size_coef
            log_g, resid_sd = a * float(t.mean()) + b * feature + c, self.size_residual_sd
            how = f"the model's GSD head over {n} tiles and the sizes of the buildings it found"
        else:
            a, log_g, resid_sd = self.slope, self.slope * float(t.mean()) + self.intercept, self.residual_sd
            how = f"predicted by the model over {n} tiles"
        real = self.real_log_error or 0.0
        sigma = math.sqrt(resid_sd**2 + (a * spread) ** 2 / n + real**2)
        rel = math.exp(sigma) - 1.0
        warning = None
        if rel > UNCERTAIN_GSD:
            warning = (
                f"the GSD is an estimate of the model, uncertain by ±{100 * rel:.0f}% (areas ±"
                f"{100 * (math.exp(2 * sigma) - 1):.0f}%): give --gsd or --zoom/--lat for exact areas"
            )
            if real > resid_sd:
                warning += (
                    f" (calibrated on generated scenes; on real tiles ({self.real_data}) it was off by "
                    f"a median {100 * (math.exp(real) - 1):.0f}%)"
                )
        return GsdEstimate(
            math.exp(log_g),
            "model",
            f"{how}, calibrated on {self.images} generated images",
            uncertainty=rel,
            warning=warning,
        )


def uncalibrated_estimate(tile_log_gsd: list[float] | np.ndarray) -> GsdEstimate:
    """The model's raw GSD (geometric mean over tiles) when its checkpoint carries no calibration."""
    t = np.asarray(tile_log_gsd, np.float64)
    return GsdEstimate(
        math.exp(float(t.mean())) if t.size else math.nan,
        "model",
        f"predicted by the model, geometric mean over {t.size} tiles (not calibrated)",
        warning="the model's GSD is not calibrated and may be far off: give --gsd or --zoom/--lat",
    )


def describe_area(area_m2: float | None, gsd: GsdEstimate | None) -> str:
    """``'area 12,300 m² (GSD estimated 0.31 m, ±20%)'``; exact sources name themselves instead."""
    if area_m2 is None or gsd is None:
        return "area unknown (no GSD: give --gsd or --zoom/--lat)"
    g = f"{gsd.metres_per_pixel:.2f} m"
    if gsd.source == "model":
        unc = f", ±{100 * gsd.uncertainty:.0f}%" if gsd.uncertainty is not None else ", uncalibrated"
        return f"area {area_m2:,.0f} m² (GSD estimated {g}{unc})"
    return f"area {area_m2:,.0f} m² (GSD {g} from {gsd.source})"
