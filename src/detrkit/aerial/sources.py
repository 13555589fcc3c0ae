"""Where aerial training tiles come from: dataset layouts, band scaling and the train/val split.

Layouts (detected per folder by :func:`list_source_tiles`):

``inria``  (Inria Aerial Image Labeling, ``detrkit aerial synth``)::

    root/train/images/<city><n>.tif   GeoTIFF tiles; root/train/gt/<city><n>.tif  masks 0/255
    validation: tiles 1-5 of every city (the official split)

``folder`` (own tiles, SpaceNet after rasterising its polygons, the Open Cities Accra tiles)::

    root/images/<name>.<tif|png|jpg>  root/masks/<name>.<png|tif>   (mask > 127 is building)
    or root/train/{images,masks}/ and root/val/{images,masks}/ for an explicit split

Without ``train/`` and ``val/`` folders the split is **by area**: names ``<scene>_<row>_<col>``
(pixel offsets of the tile in its scene) put the last ``holdout`` fraction of each scene's tile
rows in validation and drop the row of tiles just above them (a guard band, so that no training
tile touches a validation tile); other names fall back to the last ``holdout`` fraction in name
order (not by area: give ``train/`` and ``val/`` folders then).

A :class:`SourceSpec` says how to read one folder: its GSD when the files carry no georeference
(``gsd``), whether that GSD is ground truth (``gsd_known``; an estimate is used for rescaling only
and never supervises the GSD head), the rescaling range and how often its tiles are drawn.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from detrkit.aerial.gsd import gsd_from_georeference
from detrkit.errors import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".bmp", ".jpg")
VAL_TILE_NUMBERS = range(1, 6)
_INRIA_NAME = re.compile(r"^(?P<city>.*?)(?P<n>\d+)$")
_GRID_NAME = re.compile(r"^(?P<scene>.+)_(?P<row>\d+)_(?P<col>\d+)$")


@dataclass(frozen=True)
class SourceSpec:
    """One training folder and how to use it.

    Attributes:
        path: dataset root (layout detected, see the module docstring).
        gsd: metres per pixel of tiles without georeference (None: the config's ``default_gsd``).
        gsd_known: False when ``gsd`` is only an estimate: crops are rescaled with it but their
            GSD target is NaN, so the GSD head is not trained on them.
        scale_range: (min, max) resampling factor of crops, overriding the config's (e.g. (1.5, 5)
            turns 0.1 m drone tiles into 0.15-0.5 m crops).
        samples_per_tile: crops per tile and epoch, overriding the config's.
        holdout: validation fraction of tile rows (or names) when the folder has no explicit split.
    """

    path: str
    gsd: float | None = None
    gsd_known: bool = True
    scale_range: tuple[float, float] | None = None
    samples_per_tile: int | None = None
    holdout: float = 0.25

    @classmethod
    def parse(cls, item: str | dict[str, Any], *, label: str = "data") -> SourceSpec:
        """``"PATH"`` or ``{"path": PATH, "gsd": 0.1, ...}`` (a config ``data`` entry) -> spec."""
        if isinstance(item, (str, Path)):
            return cls(str(item))
        if not isinstance(item, dict) or "path" not in item:
            raise DataError(
                f"{label}: each data entry is a path or a mapping with a 'path' key, got {item!r}"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(item) - names)
        if unknown:
            raise DataError(f"{label}: unknown data entry keys {unknown} (known: {sorted(names)})")
        kw = dict(item)
        if kw.get("scale_range") is not None:
            lo, hi = (float(v) for v in kw["scale_range"])
            if not 0 < lo <= hi:
                raise DataError(
                    f"{label}: scale_range {kw['scale_range']} must be [min, max], 0 < min <= max"
                )
            kw["scale_range"] = (lo, hi)
        if kw.get("gsd") is not None and not float(kw["gsd"]) > 0:
            raise DataError(f"{label}: gsd {kw['gsd']} must be a positive number of metres per pixel")
        if not 0 < float(kw.get("holdout", 0.25)) < 1:
            raise DataError(f"{label}: holdout {kw['holdout']} must be a fraction in (0, 1)")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Tile:
    """One image tile and its mask: paths, size, GSD (m/pixel), band scaling and group (city/scene)."""

    image: Path
    mask: Path
    width: int
    height: int
    gsd: float
    city: str
    number: int
    gsd_known: bool = True
    band_scale: tuple[float, float] = (0.0, 255.0)
    bands: tuple[int, ...] = field(default=(1, 2, 3))


def open_quiet(path: str | Path) -> Any:
    """``rasterio.open`` without the not-georeferenced warning of PNG/JPEG files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def band_scale(
    ds: Any, *, percentiles: tuple[float, float] = (0.5, 99.5), read: Any = None
) -> tuple[float, float]:
    """(lo, hi) that map a raster's values to 0..255: (0, 255) for uint8, else the given percentiles.

    16-bit and float imagery (satellite products, panchromatic bands) are stretched by the
    percentiles of an overview of at most ~1024 px (all bands together), never divided by 255.
    """
    if ds.dtypes[0] == "uint8":
        return 0.0, 255.0
    f = max(1, math.ceil(max(ds.width, ds.height) / 1024))
    shape = (ds.count, max(1, ds.height // f), max(1, ds.width // f))
    ov = (read or ds.read)(out_shape=shape).astype(np.float64)
    ov = ov[np.isfinite(ov)]
    if ov.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(ov, percentiles)
    return float(lo), float(max(hi, lo + 1e-6))


def to_uint8(data: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Band values -> uint8 with ``(lo, hi)`` of :func:`band_scale` (identity for uint8 with (0, 255))."""
    if data.dtype == np.uint8 and scale == (0.0, 255.0):
        return data
    lo, hi = scale
    return np.clip((data.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def detect_layout(root: str | Path) -> str:
    """``inria`` or ``folder`` (see the module docstring); raises :class:`DataError` otherwise."""
    root = Path(root)
    if (root / "train" / "images").is_dir() and (root / "train" / "gt").is_dir():
        return "inria"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    if (root / "train" / "images").is_dir() and (root / "train" / "masks").is_dir():
        return "folder"
    raise DataError(
        "not an aerial dataset: expected train/images/ + train/gt/ (Inria), images/ + masks/, "
        "or train/{images,masks}/ + val/{images,masks}/",
        path=root,
    )


def _find_mask(masks: Path, stem: str) -> Path | None:
    for suffix in MASK_SUFFIXES:
        p = masks / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _pairs(img_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for path in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask = _find_mask(mask_dir, path.stem)
        if mask is None:
            raise DataError(
                f"image tile has no mask in {mask_dir.name}/ ({path.stem}.png or .tif)", path=path
            )
        pairs.append((path, mask))
    return pairs


def area_split(stems: list[str], holdout: float) -> tuple[set[str], set[str]]:
    """(train, val) names split by area, as described in the module docstring."""
    grid = {s: _GRID_NAME.match(s) for s in stems}
    if stems and all(grid.values()):
        train, val = set(), set()
        scenes: dict[str, list[str]] = {}
        for s in stems:
            scenes.setdefault(grid[s]["scene"], []).append(s)  # type: ignore[index]
        for names in scenes.values():
            rows = sorted({int(grid[s]["row"]) for s in names})  # type: ignore[index]
            n_val = max(1, math.ceil(holdout * len(rows)))
            val_rows = set(rows[len(rows) - n_val :])
            guard = {rows[len(rows) - n_val - 1]} if len(rows) > n_val + 1 else set()
            for s in names:
                row = int(grid[s]["row"])  # type: ignore[index]
                if row in val_rows:
                    val.add(s)
                elif row not in guard:
                    train.add(s)
        return train, val
    ordered = sorted(stems)
    n_val = max(1, math.ceil(holdout * len(ordered))) if len(ordered) > 1 else 0
    return set(ordered[: len(ordered) - n_val]), set(ordered[len(ordered) - n_val :])


def _tile(image: Path, mask: Path, spec: SourceSpec, default_gsd: float, city: str, number: int) -> Tile:
    try:
        with open_quiet(image) as src:
            est = gsd_from_georeference(src.crs, src.transform, src.width, src.height)
            gsd_known = est is not None or spec.gsd_known
            gsd = est.metres_per_pixel if est else (spec.gsd or default_gsd)
            bands = (1, 2, 3) if src.count >= 3 else (1,)
            return Tile(
                image, mask, src.width, src.height, gsd, city, number, gsd_known, band_scale(src), bands
            )
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot read tile ({str(err).splitlines()[0]})", path=image) from None


def list_source_tiles(spec: SourceSpec, split: str = "train", *, default_gsd: float = 0.3) -> list[Tile]:
    """Tiles of one source for ``split`` in ``{"train", "val", "all"}``."""
    root = Path(spec.path)
    if split not in ("train", "val", "all"):
        raise DataError(f"unknown split {split!r}: use train, val or all", path=root)
    layout = detect_layout(root)
    tiles: list[Tile] = []
    if layout == "inria":
        for image, mask in _pairs(root / "train" / "images", root / "train" / "gt"):
            match = _INRIA_NAME.match(image.stem)
            city, number = (match["city"], int(match["n"])) if match else (image.stem, 0)
            is_val = number in VAL_TILE_NUMBERS
            if (split == "val" and not is_val) or (split == "train" and is_val):
                continue
            tiles.append(_tile(image, mask, spec, default_gsd, city, number))
    elif (root / "train" / "images").is_dir():
        for part in ("train", "val"):
            if split in (part, "all") and (root / part / "images").is_dir():
                for i, (image, mask) in enumerate(_pairs(root / part / "images", root / part / "masks")):
                    tiles.append(_tile(image, mask, spec, default_gsd, part, i))
    else:
        pairs = _pairs(root / "images", root / "masks")
        train, val = area_split([p.stem for p, _ in pairs], spec.holdout)
        keep = {"train": train, "val": val, "all": train | val}[split]
        for i, (image, mask) in enumerate(pairs):
            if image.stem in keep:
                match = _GRID_NAME.match(image.stem)
                tiles.append(_tile(image, mask, spec, default_gsd, match["scene"] if match else root.name, i))
    if not tiles:
        raise DataError(f"no {split} tiles found ({layout} layout)", path=root)
    return tiles
