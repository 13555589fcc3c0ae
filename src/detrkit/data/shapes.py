"""The built-in dataset: coloured geometric shapes on cluttered, textured backgrounds.

``generate_shapes(out, train=..., val=...)`` writes a COCO-format detection dataset::

    out/train/000000.jpg ...        JPEG (quality 90), size x size pixels
    out/val/000000.jpg ...
    out/annotations/train.json      COCO instances: polygon segmentation, area, bbox, iscrowd=0
    out/annotations/val.json

Classes (COCO category ids 1..8, in this order) and their share of instances (long-tailed)::

    circle 20%, square 20%, triangle 18%, ellipse 14%, hexagon 12%, ring 9%, star 4%, cross 3%

``star`` and ``cross`` are the *rare* classes (<= 5% of instances each): :data:`RARE_CLASSES`.

Long-tailed variant: ``class_counts={"star": 30, "cross": 30}`` (``detrkit data shapes --rare
star=30``) gives a split *exactly* that many instances of the named classes. The named classes
are taken out of the random class draw (the others keep their relative weights) and each of their
instances is the first shape of an image chosen up front (distinct images while there are enough,
seeded by ``(seed, split)``), so no later shape can hide it beyond :data:`MIN_VISIBLE`.
``val_class_counts`` does the same for the val split (a val set with, say, 300 instances of each
rare class measures their AP to well under a point).

Each image has a background made of a colour gradient and smooth low-frequency blobs, 2-7
distractors (random squiggles and straight lines, not annotated), 1-6 shapes with random saturated
colours, rotations and scales, and per-pixel noise over everything. A shape has the area of a circle
of radius 9-85 px (log-uniform, at 256 px; it scales with ``size``), so COCO small (~38%), medium
and large (~12%) objects all occur.

Occlusion: later shapes are drawn over earlier ones. A placement is accepted only if every earlier
shape keeps at least :data:`MIN_VISIBLE` (65%) of its area visible; the segmentation of every
instance is its *visible* outline (its polygon minus the later shapes that cover it, clipped to the
image), ``area`` is the area of that outline and ``bbox`` its tight bounds. Outlines with holes (a
ring, or a shape whose middle is covered) are cut into hole-free pieces, since COCO polygons cannot
hold holes; the pieces' union is the visible region. Each annotation also carries ``color``
(the RGB fill, before noise and JPEG compression).

Output is byte-identical for the same arguments, whatever ``workers`` is: every image draws from
its own random generator seeded by ``(seed, split, index)``, JPEG settings are fixed and the JSON
holds no timestamps.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import multiprocessing as mp
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely import affinity
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from detrkit.errors import DataError

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "ellipse",
    "hexagon",
    "ring",
    "star",
    "cross",
)
CLASS_WEIGHTS: tuple[float, ...] = (0.20, 0.20, 0.18, 0.14, 0.12, 0.09, 0.04, 0.03)
RARE_CLASSES: tuple[str, ...] = ("star", "cross")
MIN_VISIBLE = 0.65  # every shape keeps at least this share of its (in-image) area visible
MIN_IN_IMAGE = 0.6  # a new shape has at least this share of its area inside the image
JPEG_QUALITY = 90
_LO, _HI = 10, 236  # every drawn colour lies in this range (room for the pixel noise)
_NOISE_LUT = ((np.arange(256) * 19 // 256 - 9) % 256).astype(np.uint8)  # byte -> noise -9..9 mod 256
R_MIN, R_MAX = 9.0, 85.0  # equivalent-circle radius range of a shape at 256 px
_SPLIT_CODES = {"train": 1, "val": 2}
_BASE_SIZE = 256.0


@dataclass(frozen=True)
class ShapesPaths:
    """Where :func:`generate_shapes` wrote the dataset."""

    root: Path
    train_images: Path
    val_images: Path
    train_ann: Path
    val_ann: Path
    class_names: tuple[str, ...]


def generate_shapes(
    out_dir: str | Path,
    *,
    train: int,
    val: int,
    size: int = 256,
    seed: int = 0,
    workers: int = 1,
    class_counts: dict[str, int] | None = None,
    val_class_counts: dict[str, int] | None = None,
) -> ShapesPaths:
    """Generate the shapes dataset (``train`` + ``val`` images of ``size`` x ``size`` pixels).

    Args:
        out_dir: output folder (created; existing files of the same names are overwritten).
        train, val: number of images per split (>= 0).
        size: image side in pixels (>= 64).
        seed: base seed; the same arguments give byte-identical files.
        workers: processes drawing images in parallel (the result does not depend on it).
        class_counts: ``{class name: N}``: the train split holds exactly ``N`` instances of each
            named class (long-tailed variant, see the module docstring).
        val_class_counts: the same for the val split.
    Returns:
        :class:`ShapesPaths`.
    Raises:
        DataError: on a negative count, a size below 64, fewer than one worker, an unknown class,
            a negative count or more forced instances than the split can hold.
    """
    root = Path(out_dir)
    if train < 0 or val < 0:
        raise DataError(f"image counts must be >= 0, got train={train} val={val}", path=root)
    if size < 64:
        raise DataError(f"image size must be >= 64 pixels, got {size}", path=root)
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}", path=root)
    paths = ShapesPaths(
        root=root,
        train_images=root / "train",
        val_images=root / "val",
        train_ann=root / "annotations" / "train.json",
        val_ann=root / "annotations" / "val.json",
        class_names=CLASS_NAMES,
    )
    params = shapes_params(
        train=train,
        val=val,
        size=size,
        seed=seed,
        class_counts=class_counts,
        val_class_counts=val_class_counts,
    )
    _clear_owned(root)
    paths.train_ann.parent.mkdir(parents=True, exist_ok=True)
    for split, count, img_dir, ann_path, counts in (
        ("train", train, paths.train_images, paths.train_ann, class_counts),
        ("val", val, paths.val_images, paths.val_ann, val_class_counts),
    ):
        img_dir.mkdir(parents=True, exist_ok=True)
        plan = plan_class_counts(counts or {}, images=count, seed=seed, split=split, path=root)
        excluded = tuple(sorted(CLASS_NAMES.index(n) for n in counts or {}))
        jobs = [(split, i, size, seed, str(img_dir), excluded, plan.get(i, ())) for i in range(count)]
        records = list(_run_jobs(jobs, workers))
        coco = _assemble_coco(split, size, records)
        ann_path.write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    (root / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")  # last: marks a complete set
    return paths


#: the generation parameters, written next to the dataset (what ``data.shapes`` compares against)
PARAMS_FILE = "shapes.json"
_OWNED = ("train", "val", "annotations", PARAMS_FILE)


def shapes_params(
    *,
    train: int,
    val: int,
    size: int,
    seed: int,
    class_counts: dict[str, int] | None = None,
    val_class_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The parameters that determine the generated files (the same ones give the same bytes)."""
    return {
        "train": train,
        "val": val,
        "size": size,
        "seed": seed,
        "class_counts": dict(class_counts or {}),
        "val_class_counts": dict(val_class_counts or {}),
    }


def read_shapes_params(root: str | Path) -> dict[str, Any] | None:
    """The parameters a shapes folder was generated with (``None``: none recorded or unreadable)."""
    try:
        data = json.loads((Path(root) / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clear_owned(root: Path) -> None:
    """Before generating into ``root``: remove what an earlier generation wrote; refuse other files."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError("exists and is not a folder", path=root)
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _OWNED)
    if foreign:
        raise DataError(
            f"{root}: not empty and not a shapes dataset ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder",
            path=root,
        )
    for name in _OWNED:
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def plan_class_counts(
    counts: dict[str, int], *, images: int, seed: int, split: str, path: Path | None = None
) -> dict[int, tuple[int, ...]]:
    """Which images get the forced instances: ``{image index: (label, ...)}``.

    Instances are spread over a seeded random order of the images, one per image while there are
    more images than instances; an image holds at most 6 (the most shapes an image has).
    """
    unknown = [n for n in counts if n not in CLASS_NAMES]
    if unknown:
        raise DataError(
            f"unknown class(es) {', '.join(unknown)}; choose from {', '.join(CLASS_NAMES)}", path=path
        )
    bad = {n: c for n, c in counts.items() if c < 0}
    if bad:
        raise DataError(f"class counts must be >= 0, got {bad}", path=path)
    total = sum(counts.values())
    if total > 6 * images:
        raise DataError(
            f"{split}: {total} forced instances do not fit in {images} images (6 per image)", path=path
        )
    labels = [CLASS_NAMES.index(n) for n in sorted(counts, key=CLASS_NAMES.index) for _ in range(counts[n])]
    if not labels:
        return {}
    rng = np.random.default_rng([seed, _SPLIT_CODES.get(split, 3), 7919])
    order = rng.permutation(images)
    plan: dict[int, list[int]] = {}
    for k, label in enumerate(labels):
        plan.setdefault(int(order[k % images]), []).append(label)
    return {i: tuple(v) for i, v in plan.items()}


def _run_jobs(jobs: list[tuple], workers: int) -> Iterator[list[dict]]:
    if workers == 1 or len(jobs) < 2 * workers:
        for job in jobs:
            yield _write_one(job)
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_write_one, jobs, chunksize=16)


def _write_one(job: tuple) -> list[dict]:
    split, index, size, seed, img_dir, excluded, forced = job
    image, instances = render_image(
        size, seed=seed, split=split, index=index, exclude=excluded, forced=forced
    )
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    (Path(img_dir) / f"{index:06d}.jpg").write_bytes(buf.getvalue())
    return instances


def _assemble_coco(split: str, size: int, records: list[list[dict]]) -> dict[str, Any]:
    images, annotations = [], []
    ann_id = 1
    for index, instances in enumerate(records):
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{index:06d}.jpg", "width": size, "height": size})
        for inst in instances:
            annotations.append({"id": ann_id, "image_id": image_id, **inst})
            ann_id += 1
    return {
        "info": {"description": f"detrkit built-in shapes dataset ({split})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)
        ],
    }


# ---------------------------------------------------------------------------------------- drawing


def render_image(
    size: int,
    *,
    seed: int,
    split: str,
    index: int,
    exclude: tuple[int, ...] = (),
    forced: tuple[int, ...] = (),
) -> tuple[Image.Image, list[dict]]:
    """Draw one image and its annotations (without ``id``/``image_id``).

    ``exclude``: labels never drawn at random; ``forced``: labels drawn first, always placed (the
    long-tailed variant). With neither, the image is the one of the plain dataset.

    Returns:
        ``(RGB image of size x size, [{"category_id", "bbox": xywh pixels, "area",
        "segmentation": [[x0, y0, x1, y1, ...], ...], "iscrowd": 0, "color": [r, g, b]}, ...])``.
    """
    rng = np.random.default_rng([seed, _SPLIT_CODES.get(split, 3), index])
    scale = size / _BASE_SIZE
    image, bg_grid = _background(rng, size)
    draw = ImageDraw.Draw(image)
    _draw_clutter(rng, draw, size, scale)

    frame = box(0, 0, size, size)
    placed: list[dict] = []  # {"label", "color", "visible": geometry, "full_area"}
    weights = np.array(CLASS_WEIGHTS)
    if exclude:
        weights[list(exclude)] = 0.0
        weights /= weights.sum()
    slots = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.14, 0.22, 0.24, 0.2, 0.12, 0.08]))
    for slot in range(max(slots, len(forced))):
        is_forced = slot < len(forced)
        label = forced[slot] if is_forced else int(rng.choice(len(CLASS_NAMES), p=weights))
        for _attempt in range(200 if is_forced else 12):
            geom = _make_shape(rng, CLASS_NAMES[label], size, scale)
            gx0, gy0, gx1, gy1 = geom.bounds
            inside = (
                geom if gx0 >= 0 and gy0 >= 0 and gx1 <= size and gy1 <= size else geom.intersection(frame)
            )
            if inside.area < MIN_IN_IMAGE * geom.area:
                continue
            updated = [p["visible"].difference(geom) for p in placed]
            if any(u.area < MIN_VISIBLE * p["full_area"] for u, p in zip(updated, placed, strict=True)):
                continue
            colour = _shape_colour(rng, bg_grid, inside.bounds, size, [p["color"] for p in placed])
            for p, u in zip(placed, updated, strict=True):
                p["visible"] = u
            placed.append({"label": label, "color": colour, "visible": inside, "full_area": inside.area})
            _fill_geometry(image, geom, colour)
            break
        else:
            if is_forced:
                raise DataError(f"{split} image {index}: could not place a forced {CLASS_NAMES[label]}")

    # Pixel noise in [-9, 9] per channel, added modulo 256: every colour drawn lies in [_LO, _HI],
    # so the modular sum is the exact sum (no wrap-around).
    noise = np.take(_NOISE_LUT, np.frombuffer(rng.bytes(3 * size * size), dtype=np.uint8))
    image = Image.fromarray(np.asarray(image) + noise.reshape(size, size, 3))

    instances = []
    for p in placed:
        polys = [_polygon_coords(pc) for pc in _hole_free_pieces(p["visible"])]
        polys = [c for c in polys if len(c) >= 6 and polygon_area(c) >= 0.5]
        if not polys:
            continue
        xs = [v for c in polys for v in c[0::2]]
        ys = [v for c in polys for v in c[1::2]]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        instances.append(
            {
                "category_id": p["label"] + 1,
                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(sum(polygon_area(c) for c in polys), 2),
                "segmentation": polys,
                "iscrowd": 0,
                "color": list(p["color"]),
            }
        )
    return image, instances


def _background(rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """Muted colour gradient plus smooth blobs.

    Both are smooth, so they are evaluated on a coarse ``[g, g, 3]`` grid and upsampled once
    (bilinear). Returns ``(RGB image size x size, the grid as float [g, g, 3])``; values lie in
    [_LO, _HI] so that pixel noise can be added without overflow.
    """
    c0 = rng.uniform(70, 185) + rng.uniform(-25, 25, size=3)
    c1 = rng.uniform(70, 185) + rng.uniform(-25, 25, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    cells = int(rng.integers(3, 8))
    t = np.linspace(-0.5, 0.5, cells)
    ramp = math.cos(angle) * t[None, :] + math.sin(angle) * t[:, None] + 0.5  # [g, g] in ~[0, 1]
    grid = np.clip(c0 + (c1 - c0) * ramp[..., None] + rng.uniform(-28, 28, size=(cells, cells, 3)), _LO, _HI)
    small = Image.fromarray(grid.astype(np.uint8))
    return small.resize((size, size), Image.Resampling.BILINEAR), grid


def _draw_clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, scale: float) -> None:
    """Distractors that are not objects: random-walk squiggles and straight lines."""
    for _ in range(int(rng.integers(2, 8))):
        colour = tuple(int(c) for c in rng.integers(_LO, _HI + 1, size=3))
        width = max(1, round(float(rng.uniform(1, 3.5)) * scale))
        if rng.random() < 0.6:
            n = int(rng.integers(6, 18))
            start = rng.uniform(0, size, size=2)
            steps = rng.normal(0, 9 * scale, size=(n, 2)).cumsum(axis=0)
            pts = [(float(x), float(y)) for x, y in start + steps]
            draw.line(pts, fill=colour, width=width, joint="curve")
        else:
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)


def _make_shape(rng: np.random.Generator, name: str, size: int, scale: float) -> Polygon:
    """A shapely polygon (a ring has a hole) in pixel coordinates, randomly placed and rotated.

    Every shape has the area of a circle of radius ``r`` (log-uniform in [R_MIN, R_MAX] * scale).
    """
    r = math.exp(rng.uniform(math.log(R_MIN), math.log(R_MAX))) * scale
    cx, cy = (float(v) for v in rng.uniform(0.4 * r, size - 0.4 * r, size=2))
    rot = float(rng.uniform(0, 2 * math.pi))
    aspect = round(float(rng.uniform(0.4, 0.6)), 2) if name == "ellipse" else 1.0
    c, s = r * math.cos(rot), r * math.sin(rot)
    return affinity.affine_transform(_unit_shape(name, aspect), [c, -s, s, c, cx, cy])


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> list[tuple[float, float]]:
    return [
        (radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


@lru_cache(maxsize=64)
def _unit_shape(name: str, aspect: float = 1.0) -> Polygon:
    """The shape centred on the origin, scaled to the area of the unit circle (pi)."""
    if name == "circle":
        geom = Polygon(_regular(48))
    elif name == "square":
        geom = Polygon([(-1, -1), (1, -1), (1, 1), (-1, 1)])
    elif name == "triangle":
        geom = Polygon(_regular(3, phase=-math.pi / 2))
    elif name == "ellipse":
        geom = Polygon([(x, y * aspect) for x, y in _regular(48)])
    elif name == "hexagon":
        geom = Polygon(_regular(6))
    elif name == "ring":
        geom = Polygon(_regular(48), [_regular(48, 0.55)[::-1]])
    elif name == "star":
        outer, inner = _regular(5, 1.0, -math.pi / 2), _regular(5, 0.45, -math.pi / 2 + math.pi / 5)
        geom = Polygon([p for pair in zip(outer, inner, strict=True) for p in pair])
    elif name == "cross":
        a, b = 0.3, 0.9
        geom = Polygon(
            [
                (-a, -b),
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
            ]
        )
    else:
        raise ValueError(f"unknown shape {name!r}; expected one of {CLASS_NAMES}")
    k = math.sqrt(math.pi / geom.area)
    return affinity.scale(geom, k, k, origin=(0, 0))


def _shape_colour(
    rng: np.random.Generator,
    bg_grid: np.ndarray,
    bounds: tuple[float, ...],
    size: int,
    others: list[tuple[int, int, int]],
) -> tuple[int, int, int]:
    """A saturated colour that stands out from the local background and earlier shapes.

    ``bg_grid`` is the coarse ``[g, g, 3]`` background grid; ``bounds`` the shape's xyxy pixels.
    """
    g = bg_grid.shape[0]
    x0, y0, x1, y1 = (min(max(int(v * (g - 1) / size + 0.5), 0), g - 1) for v in bounds)
    mean = bg_grid[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).mean(axis=0)
    best, best_dist = (_HI, _LO, _LO), -1.0
    for _ in range(8):
        h, s, v = rng.uniform(0, 1), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0)
        rgb = np.array(colorsys.hsv_to_rgb(h, s, v)) * (_HI - _LO) + _LO
        dist = min([float(np.linalg.norm(rgb - mean))] + [float(np.linalg.norm(rgb - o)) for o in others])
        if dist > best_dist:
            best, best_dist = (int(rgb[0]), int(rgb[1]), int(rgb[2])), dist
        if dist > 100:
            break
    return best


def _fill_geometry(image: Image.Image, geom: Polygon, colour: tuple[int, int, int]) -> None:
    """Fill a polygon (holes stay see-through) with a flat colour."""
    draw = ImageDraw.Draw(image)
    exterior = [(float(x), float(y)) for x, y in geom.exterior.coords[:-1]]
    if not geom.interiors:
        draw.polygon(exterior, fill=colour)
        return
    x0, y0, x1, y1 = (int(math.floor(v)) for v in geom.bounds)
    x1, y1 = x1 + 2, y1 + 2
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    mdraw = ImageDraw.Draw(mask)
    mdraw.polygon([(x - x0, y - y0) for x, y in exterior], fill=255)
    for hole in geom.interiors:
        mdraw.polygon([(float(x) - x0, float(y) - y0) for x, y in hole.coords[:-1]], fill=0)
    image.paste(Image.new("RGB", mask.size, colour), (x0, y0), mask)


# ---------------------------------------------------------------------------------------- geometry


def _polygons_of(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    if isinstance(geom, (MultiPolygon, GeometryCollection)):
        return [p for g in geom.geoms for p in _polygons_of(g)]
    return []  # lines and points left by differences have no area


def _hole_free_pieces(geom: BaseGeometry) -> list[Polygon]:
    """Split a geometry into polygons without holes whose union is the geometry.

    A polygon with holes is cut by the vertical line through its first hole's centroid; each half
    is split again until no piece has a hole.
    """
    out: list[Polygon] = []
    todo = _polygons_of(geom)
    while todo:
        poly = todo.pop()
        if poly.area < 1e-6:
            continue
        if not poly.interiors:
            out.append(poly)
            continue
        cx = Polygon(poly.interiors[0]).centroid.x
        x0, y0, x1, y1 = poly.bounds
        for half in (box(x0 - 1, y0 - 1, cx, y1 + 1), box(cx, y0 - 1, x1 + 1, y1 + 1)):
            todo.extend(_polygons_of(poly.intersection(half)))
    out.sort(key=lambda p: p.bounds)
    return out


def polygon_area(coords: list[float]) -> float:
    """Area of a COCO polygon ``[x0, y0, x1, y1, ...]`` (shoelace formula, pixels^2)."""
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    twice = np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]) + x[-1] * y[0] - y[-1] * x[0]
    return float(abs(twice) / 2)


def _polygon_coords(poly: Polygon) -> list[float]:
    """COCO polygon ``[x0, y0, x1, y1, ...]`` (2 decimals, closing vertex dropped)."""
    coords = np.round(shapely.get_coordinates(poly.exterior)[:-1], 2)
    return [float(v) for v in coords.reshape(-1)]
