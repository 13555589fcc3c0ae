"""Built-up area and single buildings from a building mask.

Totals come from pixel counts times the exact ground area of a pixel in each row
(:func:`detrkit.aerial.gsd.pixel_area_rows`), so they are exact for projected, geographic and Web
Mercator rasters. Buildings are 4-connected components; touching buildings joined by a narrow neck
are split: the distance transform's cores (pixels at least ``core_fraction`` of their component's
maximum distance from the background) become markers, and every pixel of a component with several
cores goes to its nearest core (a Voronoi split of the cores, what a watershed on the distance map
approximates). Each building's area is its exact pixel area; its polygon (from
``rasterio.features.shapes``) is simplified for export, and specks below ``min_area_m2`` are dropped
from the building list (they still count in the total).

Large masks are processed in strips of rows (4096 by default); buildings cut by a strip border are
re-joined with a union-find over the border rows, and are not split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely import affinity
from shapely.geometry import shape
from shapely.ops import unary_union

from detrkit.aerial.gsd import (
    WEB_MERCATOR_EPSG,
    GsdEstimate,
    mercator_ground_scale,
    mercator_y_to_lat,
    metres_per_degree,
)


@dataclass
class Building:
    """One building. ``geometry`` is a shapely (Multi)Polygon in the raster's CRS, or in pixels when none."""

    id: int
    pixels: int
    area_m2: float | None
    perimeter_m: float | None
    centroid_x: float
    centroid_y: float
    lon: float | None = None
    lat: float | None = None
    geometry: object = field(default=None, repr=False)

    def row(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("geometry")
        return d


@dataclass
class AreaReport:
    """Result of :func:`measure_mask`; ``to_dict()`` gives the JSON summary (buildings without geometry)."""

    width: int
    height: int
    built_pixels: int
    built_area_m2: float | None
    image_area_m2: float | None
    built_fraction: float
    gsd: GsdEstimate | None
    crs: str | None
    buildings: list[Building]
    speck_count: int = 0

    @property
    def building_count(self) -> int:
        return len(self.buildings)

    def to_dict(self, *, with_buildings: bool = True) -> dict[str, object]:
        d: dict[str, object] = {
            "width": self.width,
            "height": self.height,
            "built_pixels": self.built_pixels,
            "built_area_m2": self.built_area_m2,
            "image_area_m2": self.image_area_m2,
            "built_percent": 100.0 * self.built_fraction,
            "building_count": self.building_count,
            "speck_count": self.speck_count,
            "gsd": None if self.gsd is None else self.gsd.to_dict(),
            "crs": self.crs,
        }
        if with_buildings:
            d["buildings"] = [b.row() for b in self.buildings]
        return d


def label_buildings(
    mask: np.ndarray,
    *,
    split_touching: bool = True,
    core_fraction: float = 0.5,
    min_core_share: float = 0.5,
    keep_top: bool = False,
    keep_bottom: bool = False,
) -> np.ndarray:
    """Instance labels int32[H,W] (0 background, 1..N buildings) of ``mask bool[H,W]``; see module doc.

    Cores are 8-connected; cores smaller than ``min_core_share`` of the component's largest core
    (or 3 pixels) are not markers, so a pinched outline does not split a building. ``keep_top`` /
    ``keep_bottom``: never split components touching the first / last row (strip borders).
    """
    labels, n = ndimage.label(mask)
    if not split_touching or n == 0:
        return labels.astype(np.int32)
    dist = ndimage.distance_transform_edt(mask)
    out, next_id = labels.astype(np.int32), n + 1
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if (keep_top and sl[0].start == 0) or (keep_bottom and sl[0].stop == mask.shape[0]):
            continue
        comp = labels[sl] == i
        d = np.where(comp, dist[sl], 0.0)
        cores, k = ndimage.label(d >= core_fraction * d.max(), structure=np.ones((3, 3)))
        if k < 2:
            continue
        sizes = np.bincount(cores.ravel())[1:]
        keep = np.flatnonzero(sizes >= max(3, min_core_share * sizes.max())) + 1
        if len(keep) < 2:
            continue
        cores = np.where(np.isin(cores, keep), cores, 0)
        _, (iy, ix) = ndimage.distance_transform_edt(cores == 0, return_indices=True)
        nearest = cores[iy, ix]
        sub = out[sl]
        for c in keep[1:]:
            sub[comp & (nearest == c)] = next_id
            next_id += 1
    return out


def local_pixel_size(crs: object | None, transform: Affine, row: float) -> tuple[float, float] | None:
    """Ground size (x, y) in metres of a pixel at ``row``, or None without georeference."""
    if crs is None or transform.is_identity:
        return None
    sx, sy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    if crs.to_epsg() in WEB_MERCATOR_EPSG:  # type: ignore[attr-defined]
        kx, ky = mercator_ground_scale(float(mercator_y_to_lat(transform.f + transform.e * row)))
        return sx * kx, sy * ky
    if crs.is_geographic:  # type: ignore[attr-defined]
        mx, my = metres_per_degree(transform.f + transform.e * row)
        return sx * mx, sy * my
    factor = float(crs.linear_units_factor[1])  # type: ignore[attr-defined]
    return sx * factor, sy * factor


@dataclass
class _Piece:
    label: int
    pixels: int
    area_m2: float | None
    sum_x: float  # sums of pixel-centre coordinates, for the centroid
    sum_y: float
    geometry_px: object
    top: bool
    bottom: bool


def strip_pieces(labels: np.ndarray, row0: int, row_area: np.ndarray | None) -> dict[int, _Piece]:
    """Per-label pieces of a strip ``labels int32[h,W]`` whose first row is image row ``row0``.

    ``row_area`` is float64[h] (m² per pixel of each strip row) or None. Geometries are in full-image
    pixel coordinates.
    """
    pieces: dict[int, _Piece] = {}
    geoms: dict[int, list] = {}
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.translation(0, row0)):
        geoms.setdefault(int(value), []).append(shape(geom))
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        per_row = m.sum(axis=1)
        rows = np.arange(sl[0].start, sl[0].stop)
        cols = np.arange(sl[1].start, sl[1].stop)
        area = None if row_area is None else float(per_row @ row_area[rows])
        pieces[i] = _Piece(
            i,
            int(per_row.sum()),
            area,
            float(m.sum(axis=0) @ (cols + 0.5)),
            float(per_row @ (rows + row0 + 0.5)),
            unary_union(geoms[i]),
            sl[0].start == 0,
            sl[0].stop == labels.shape[0],
        )
    return pieces


def _find(parent: dict, a: object) -> object:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


class StripMeasurer:
    """Accumulates strips of a mask (top to bottom) and builds the :class:`AreaReport`.

    ``add(mask_rows bool[h,W])`` for consecutive strips, then ``finish()``.
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        crs: object | None = None,
        transform: Affine | None = None,
        row_area: np.ndarray | None = None,
        gsd: GsdEstimate | None = None,
        min_area_m2: float = 2.0,
        min_pixels: int = 4,
        simplify_px: float = 0.7,
        split_touching: bool = True,
    ) -> None:
        self.width, self.height, self.crs, self.gsd = width, height, crs, gsd
        self.transform = transform if transform is not None else Affine.identity()
        self.row_area = row_area
        self.min_area_m2, self.min_pixels, self.simplify_px, self.split = (
            min_area_m2,
            min_pixels,
            simplify_px,
            split_touching,
        )
        self.row0, self.strip, self.built_pixels, self.built_area = 0, 0, 0, 0.0
        self.pieces: dict[tuple[int, int], _Piece] = {}
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}
        self._last_row: np.ndarray | None = None

    def add(self, mask_rows: np.ndarray) -> None:
        mask_rows = np.asarray(mask_rows, dtype=bool)
        h = mask_rows.shape[0]
        ra = None if self.row_area is None else self.row_area[self.row0 : self.row0 + h]
        per_row = mask_rows.sum(axis=1)
        self.built_pixels += int(per_row.sum())
        if ra is not None:
            self.built_area += float(per_row @ ra)
        labels = label_buildings(
            mask_rows,
            split_touching=self.split,
            keep_top=self.row0 > 0,
            keep_bottom=self.row0 + h < self.height,
        )
        for lab, piece in strip_pieces(labels, self.row0, ra).items():
            key = (self.strip, lab)
            self.pieces[key] = piece
            self.parent[key] = key
        if self._last_row is not None:
            pairs = {(int(a), int(b)) for a, b in zip(self._last_row, labels[0], strict=True) if a and b}
            for a, b in pairs:
                ra_, rb_ = _find(self.parent, (self.strip - 1, a)), _find(self.parent, (self.strip, b))
                if ra_ != rb_:
                    self.parent[rb_] = ra_
        self._last_row = labels[-1].copy()
        self.row0 += h
        self.strip += 1

    def _groups(self) -> dict[object, list[_Piece]]:
        """The pieces of each building (re-joined across strip borders by the union-find)."""
        groups: dict[object, list[_Piece]] = {}
        for key, piece in self.pieces.items():
            groups.setdefault(_find(self.parent, key), []).append(piece)
        return groups

    def component_pixels(self) -> np.ndarray:
        """Pixel counts of the buildings :meth:`finish` will list (before any area filter), so far."""
        px = np.array([sum(p.pixels for p in parts) for parts in self._groups().values()], dtype=np.int64)
        return px[px >= self.min_pixels]

    def finish(self) -> AreaReport:
        groups = self._groups()
        buildings, specks = [], 0
        georef = self.row_area is not None
        for parts in sorted(groups.values(), key=lambda ps: min(p.sum_y / p.pixels for p in ps)):
            pixels = sum(p.pixels for p in parts)
            area = sum(p.area_m2 for p in parts) if georef else None  # type: ignore[misc]
            if pixels < self.min_pixels or (area is not None and area < self.min_area_m2):
                specks += 1
                continue
            cx, cy = sum(p.sum_x for p in parts) / pixels, sum(p.sum_y for p in parts) / pixels
            geom_px = unary_union([p.geometry_px for p in parts]) if len(parts) > 1 else parts[0].geometry_px
            geom_px = geom_px.simplify(self.simplify_px, preserve_topology=True)
            size = local_pixel_size(self.crs, self.transform, cy) if georef else None
            if size is None and self.gsd is not None:
                size = (self.gsd.metres_per_pixel, self.gsd.metres_per_pixel)
            perimeter = (
                None if size is None else affinity.scale(geom_px, size[0], size[1], origin=(0, 0)).length
            )
            t = self.transform
            geom = affinity.affine_transform(geom_px, [t.a, t.b, t.d, t.e, t.c, t.f])
            x, y = t @ (cx, cy)
            buildings.append(Building(len(buildings) + 1, pixels, area, perimeter, x, y, geometry=geom))
        if self.crs is not None and buildings and not self.transform.is_identity:
            from rasterio.warp import transform as warp

            lons, lats = warp(
                self.crs, "EPSG:4326", [b.centroid_x for b in buildings], [b.centroid_y for b in buildings]
            )
            for b, lon, lat in zip(buildings, lons, lats, strict=True):
                b.lon, b.lat = float(lon), float(lat)
        total_px = self.width * self.height
        if georef:
            built, image_area = self.built_area, float(self.row_area.sum()) * self.width  # type: ignore[union-attr]
        elif self.gsd is not None:
            px_area = self.gsd.metres_per_pixel**2
            built, image_area = self.built_pixels * px_area, total_px * px_area
            for b in buildings:
                b.area_m2 = b.pixels * px_area
        else:
            built = image_area = None
        return AreaReport(
            self.width,
            self.height,
            self.built_pixels,
            built,
            image_area,
            self.built_pixels / max(1, total_px),
            self.gsd,
            None if self.crs is None else self.crs.to_string(),
            buildings,
            specks,  # type: ignore[attr-defined]
        )


def measure_mask(
    mask: np.ndarray,
    *,
    crs: object | None = None,
    transform: Affine | None = None,
    row_area: np.ndarray | None = None,
    gsd: GsdEstimate | None = None,
    strip_rows: int = 4096,
    **kwargs: object,
) -> AreaReport:
    """Measure an in-memory ``mask bool[H,W]``. With ``row_area`` (float64[H], m² per pixel per row,
    from a georeference) areas are exact per row; else with ``gsd`` they are ``pixels * gsd²``; else
    only pixel counts are given. ``kwargs`` go to :class:`StripMeasurer`."""
    h, w = mask.shape
    m = StripMeasurer(w, h, crs=crs, transform=transform, row_area=row_area, gsd=gsd, **kwargs)  # type: ignore[arg-type]
    for r0 in range(0, h, strip_rows):
        m.add(mask[r0 : r0 + strip_rows])
    return m.finish()
