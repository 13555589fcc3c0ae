"""A generated aerial-like dataset with exactly known building areas (Inria layout).

``generate_aerial(out_dir, ...)`` writes ``out/train/images/<city><n>.tif`` (RGB uint8) and
``out/train/gt/<city><n>.tif`` (0/255 masks), GeoTIFFs in a real projected CRS (UTM) whose
transform carries the tile's GSD, plus ``out/ground_truth.json`` with, per tile, the GSD and every
building's true area in m² (its rasterised pixel count times GSD², i.e. exactly the area the mask
shows) and its vector area (clipped to the tile).

Scenes are built in metres, then drawn at the tile's GSD: ground textures at three physical
scales, asphalt roads with lane markings, trees, buildings (rotated rectangles and L-shapes,
gabled or flat roofs with shading) and their shadows (cast on the ground only, so the mask is
exactly the roofs). Textures have physical sizes, which is what lets a model learn the GSD.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from PIL import Image
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import unary_union

CITY_CRS = {"alpha": 32631, "bravo": 32633, "charlie": 32614, "delta": 32636}
_ROOFS = [(172, 84, 62), (128, 130, 136), (84, 84, 94), (204, 198, 186), (142, 112, 82), (160, 60, 50)]


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: ``cities`` x ``tiles_per_city`` tiles of ``size`` px, GSD log-uniform in range."""

    cities: tuple[str, ...] = ("alpha", "bravo", "charlie")
    tiles_per_city: int = 12
    size: int = 512
    gsd_min: float = 0.15
    gsd_max: float = 2.0
    seed: int = 0


def _noise(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """Smooth noise [size,size] with unit std and correlation length ~``scale_px`` pixels."""
    if scale_px <= 1.5:
        out = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=max(scale_px / 2, 0.01))
    else:
        n = int(math.ceil(size / scale_px)) + 3
        small = Image.fromarray(rng.standard_normal((n, n)).astype(np.float32), mode="F")
        big = np.asarray(small.resize((int(n * scale_px), int(n * scale_px)), Image.BICUBIC))
        out = big[:size, :size]
    return (out - out.mean()) / (out.std() + 1e-6)


def _building(
    rng: np.random.Generator, cx: float, cy: float, angle: float, gsd: float
) -> tuple[Polygon, str]:
    """A rectangle or L-shape footprint in pixel coordinates, sides 7-36 m."""
    w, length = rng.uniform(7, 22), rng.uniform(8, 36)
    shape = box(-w / 2, -length / 2, w / 2, length / 2)
    kind = "rect"
    if rng.random() < 0.35:
        cw, cl = w * rng.uniform(0.35, 0.6), length * rng.uniform(0.35, 0.6)
        shape = shape.difference(box(w / 2 - cw, length / 2 - cl, w / 2 + 1, length / 2 + 1))
        kind = "L"
    shape = affinity.rotate(shape, angle, origin=(0, 0))
    shape = affinity.scale(shape, 1 / gsd, 1 / gsd, origin=(0, 0))
    return affinity.translate(shape, cx, cy), kind


def _burn(geoms: list, size: int, value: int = 1) -> np.ndarray:
    if not geoms:
        return np.zeros((size, size), dtype=bool)
    return rasterize([(g, value) for g in geoms], out_shape=(size, size), dtype="uint8").astype(bool)


def render_tile(rng: np.random.Generator, size: int, gsd: float) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one scene. Returns (image uint8[H,W,3], labels int32[H,W] with building ids 1..N, buildings).

    ``buildings`` holds ``{"id", "kind", "polygon_px": shapely Polygon, "pixels": int}`` per building.
    """

    def px(metres: float) -> float:
        return metres / gsd

    grass, soil = np.array([88, 118, 62], float), np.array([152, 134, 104], float)
    mix = np.clip(0.5 + 0.35 * _noise(rng, size, px(40)), 0, 1)[..., None]
    img = grass * (1 - mix) + soil * mix
    img += 10 * _noise(rng, size, px(3))[..., None] + 7 * _noise(rng, size, px(0.5))[..., None]

    # roads
    roads, road_axes = [], []
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, 180)
        c = rng.uniform(0, size, 2)
        d = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))]) * size * 2
        axis = LineString([tuple(c - d), tuple(c + d)])
        roads.append(axis.buffer(px(rng.uniform(3, 6)), cap_style="flat"))
        road_axes.append((axis, angle))
    road_mask = _burn(roads, size)
    asphalt = 96 + 6 * _noise(rng, size, px(0.3))
    img[road_mask] = np.stack([asphalt, asphalt, asphalt + 4], -1)[road_mask]
    alpha = min(1.0, 0.15 / gsd)
    for axis, _ in road_axes:
        dash_line = unary_union(
            [
                LineString([axis.interpolate(t), axis.interpolate(t + px(3))])
                for t in np.arange(0, axis.length, px(6))
            ]
        ).buffer(max(px(0.08), 0.5), cap_style="flat")
        m = _burn([dash_line], size)
        img[m] = img[m] * (1 - alpha) + 235 * alpha

    # buildings (placed first, drawn last) and trees
    sun = math.radians(rng.uniform(0, 360))
    tan_elev = 1 / math.tan(math.radians(rng.uniform(30, 60)))
    blocked = unary_union(roads).buffer(px(1.5)) if roads else Polygon()
    gap = max(px(2.0), 2.5)
    buildings: list[dict] = []
    placed: list[Polygon] = []
    attempts = int(min(220, 60 + 0.0006 * (size * gsd) ** 2))
    for _ in range(attempts):
        cx, cy = rng.uniform(0, size, 2)
        angle = road_axes[rng.integers(len(road_axes))][1] if rng.random() < 0.7 else rng.uniform(0, 180)
        poly, kind = _building(rng, cx, cy, angle + rng.normal(0, 3), gsd)
        if poly.intersects(blocked) or (placed and shapely.distance(poly, np.asarray(placed)).min() < gap):
            continue
        placed.append(poly)
        buildings.append(
            {"id": len(buildings) + 1, "kind": kind, "polygon_px": poly, "height": rng.uniform(3, 14)}
        )

    def shadow(poly: Polygon, height: float) -> Polygon:
        dx, dy = px(height * tan_elev) * math.cos(sun), px(height * tan_elev) * math.sin(sun)
        return unary_union([poly, affinity.translate(poly, dx, dy)]).convex_hull

    trees = []
    for _ in range(int(rng.integers(5, 60))):
        p = Point(rng.uniform(0, size, 2))
        if not p.intersects(blocked):
            trees.append(p.buffer(px(rng.uniform(1.5, 5))))
    shadows = [shadow(t, rng.uniform(4, 10)) for t in trees] + [
        shadow(b["polygon_px"], b["height"]) for b in buildings
    ]
    img[_burn(shadows, size)] *= 0.55
    tree_mask = _burn(trees, size)
    leaves = 1 + 0.18 * _noise(rng, size, px(0.7))
    img[tree_mask] = (np.array([52, 84, 40]) * leaves[..., None])[tree_mask]

    labels = np.zeros((size, size), dtype=np.int32)
    if buildings:
        labels = rasterize(
            [(b["polygon_px"], b["id"]) for b in buildings], out_shape=(size, size), dtype="int32"
        )
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    roof_texture = 1 + 0.05 * _noise(rng, size, px(0.4))
    for b in buildings:
        m = labels == b["id"]
        b["pixels"] = int(m.sum())
        if not b["pixels"]:
            continue
        colour = np.array(_ROOFS[rng.integers(len(_ROOFS))], float)
        rect = b["polygon_px"].minimum_rotated_rectangle
        c = np.asarray(rect.exterior.coords)[:4]
        e1, e2 = c[1] - c[0], c[2] - c[1]
        ridge = e1 if np.linalg.norm(e1) > np.linalg.norm(e2) else e2
        normal = np.array([-ridge[1], ridge[0]]) / (np.linalg.norm(ridge) + 1e-9)
        ctr = np.asarray(rect.centroid.coords[0])
        side = (xx[m] - ctr[0]) * normal[0] + (yy[m] - ctr[1]) * normal[1]
        shade = np.where(side > 0, 1.12, 0.82) if rng.random() < 0.65 else np.ones_like(side)
        img[m] = colour * (shade * roof_texture[m])[:, None]
    img = ndimage.gaussian_filter(img, sigma=(0.6, 0.6, 0)) + rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels, [b for b in buildings if b["pixels"]]


def generate_aerial(out_dir: str | Path, spec: SynthSpec | None = None) -> dict:
    """Write the dataset (Inria layout) and ``ground_truth.json``; returns the ground-truth dict."""
    spec = spec or SynthSpec()
    out = Path(out_dir)
    (out / "train" / "images").mkdir(parents=True, exist_ok=True)
    (out / "train" / "gt").mkdir(parents=True, exist_ok=True)
    rng_gsd = np.random.default_rng(spec.seed)
    truth: dict = {"spec": spec.__dict__ | {"cities": list(spec.cities)}, "tiles": {}}
    for ci, city in enumerate(spec.cities):
        epsg = CITY_CRS.get(city, 32631 + ci)
        for n in range(1, spec.tiles_per_city + 1):
            gsd = float(np.exp(rng_gsd.uniform(np.log(spec.gsd_min), np.log(spec.gsd_max))))
            gsd = round(gsd, 4)
            rng = np.random.default_rng([spec.seed, ci, n])
            image, labels, buildings = render_tile(rng, spec.size, gsd)
            x0, y0 = 400_000.0 + 3_000.0 * n, 5_000_000.0 + 20_000.0 * ci
            transform = Affine(gsd, 0.0, x0, 0.0, -gsd, y0)
            profile = {
                "driver": "GTiff",
                "width": spec.size,
                "height": spec.size,
                "crs": f"EPSG:{epsg}",
                "transform": transform,
                "tiled": True,
                "blockxsize": 256,
                "blockysize": 256,
                "compress": "deflate",
            }
            name = f"{city}{n}.tif"
            with rasterio.open(
                out / "train" / "images" / name, "w", count=3, dtype="uint8", **profile
            ) as dst:
                dst.write(image.transpose(2, 0, 1))
            with rasterio.open(out / "train" / "gt" / name, "w", count=1, dtype="uint8", **profile) as dst:
                dst.write(((labels > 0) * 255).astype(np.uint8)[None])
            items, frame = [], box(0, 0, spec.size, spec.size)
            for b in buildings:
                cx, cy = b["polygon_px"].centroid.coords[0]
                items.append(
                    {
                        "id": b["id"],
                        "kind": b["kind"],
                        "pixels": b["pixels"],
                        "area_m2": b["pixels"] * gsd * gsd,
                        "polygon_area_m2": b["polygon_px"].intersection(frame).area * gsd * gsd,
                        "centroid_xy": list(transform @ (cx, cy)),
                    }
                )
            truth["tiles"][f"train/images/{name}"] = {
                "gsd_m": gsd,
                "crs": f"EPSG:{epsg}",
                "width": spec.size,
                "height": spec.size,
                "built_area_m2": float((labels > 0).sum()) * gsd * gsd,
                "buildings": items,
            }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth
