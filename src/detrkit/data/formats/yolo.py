"""YOLO / Ultralytics datasets: ``data.yaml`` + ``images/`` + ``labels/``, both directions.

``data.yaml`` keys: ``path`` (dataset root, relative to the YAML file; default its folder),
``train``/``val``/``test`` (a folder of images, a ``.txt`` list of images, or a list of those,
relative to the root; Roboflow's ``../train/images`` is also found when it is meant relative to the
root), ``names`` (a list, or a dict ``{index: name}``). The label file of ``.../images/x.jpg`` is
``.../labels/x.txt`` (the last ``images`` folder in the path becomes ``labels``, as in Ultralytics).

Label lines, normalised to the image size (after EXIF orientation): ``class cx cy w h`` (a box) or
``class x1 y1 x2 y2 ...`` (a polygon, at least 3 points; its box is the polygon's bounds). Class
index ``k`` becomes COCO category id ``k`` (so YOLO class indices and category ids are the same
numbers), or ``detrkit_category_ids[k]`` when the YAML has that list (written by
:func:`write_yolo`, so that COCO -> YOLO -> COCO keeps the ids). Boxes are kept unclipped:
``data check`` reports those outside the image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from detrkit.data.coco import Annotation, Category, CocoIndex, ImageInfo
from detrkit.data.formats.report import ReadReport
from detrkit.data.images import IMAGE_SUFFIXES, image_size
from detrkit.errors import DataError

SPLIT_KEYS = ("train", "val", "test")


def read_data_yaml(path: str | Path) -> dict[str, Any]:
    """Parse ``data.yaml`` and check its ``names``; returns the dict with ``names`` as a list."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})", path=path) from None
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})", path=path) from None
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: a YOLO data.yaml needs 'names' (a list or {{index: name}})", path=path)
    names = data["names"]
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: names indices must be 0..{len(keys) - 1}, got {keys}", path=path)
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must be a non-empty list or mapping", path=path)
    if "nc" in data and int(data["nc"]) != len(names):
        raise DataError(f"{path}: nc is {data['nc']} but names has {len(names)} entries", path=path)
    return {**data, "names": [str(n) for n in names]}


def dataset_root(yaml_path: Path, data: dict[str, Any]) -> Path:
    root = data.get("path")
    if not root:
        return yaml_path.parent
    root = Path(str(root)).expanduser()
    return root if root.is_absolute() else yaml_path.parent / root


def _resolve(root: Path, value: str) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    cand = root / p
    if not cand.exists() and value.startswith("../"):  # Roboflow: '../train/images' from the root
        alt = root / value[3:]
        if alt.exists():
            return alt
    return cand


def split_images(root: Path, value: str | Sequence[str], source: Path) -> tuple[list[Path], Path]:
    """The image files of one split entry and the folder their ``file_name`` is relative to."""
    values = [value] if isinstance(value, str) else list(value)
    files: list[Path] = []
    folders: list[Path] = []
    for v in values:
        p = _resolve(root, str(v))
        if p.is_dir():
            folders.append(p)
            files.extend(
                sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            )
        elif p.is_file() and p.suffix == ".txt":
            folders.append(root)
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    files.append(q if q.is_absolute() else (p.parent / q))
        else:
            raise DataError(f"{source}: split folder or list {p} not found", path=source)
    base = folders[0] if len(folders) == 1 else Path(os.path.commonpath([str(f) for f in folders]))
    return files, base


def label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` part), as Ultralytics."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_line(line: str, *, with_score: bool = False) -> tuple[int, list[float], float | None] | str:
    """``(class, coords, score)`` of one line, or a short reason why it is malformed.

    ``coords`` is ``[cx, cy, w, h]`` (a box) or ``[x1, y1, ...]`` (a polygon, >= 3 points);
    ``with_score``: the last value is a confidence (YOLO ``save_txt`` with ``save_conf``).
    """
    parts = line.split()
    try:
        values = [float(v) for v in parts]
    except ValueError:
        return "not numbers"
    score = None
    if with_score:
        if len(values) < 6:
            return f"{len(values)} values (expected class cx cy w h conf)"
        score = values.pop()
    if not values or values[0] != int(values[0]) or values[0] < 0:
        return f"class {parts[0] if parts else ''!r} is not an index"
    coords = values[1:]
    if len(coords) != 4 and (len(coords) % 2 or len(coords) < 6):
        return f"{len(coords)} coordinates (expected 4 for a box or an even number >= 6 for a polygon)"
    return int(values[0]), coords, score


def to_pixel_box(
    coords: list[float], width: int, height: int
) -> tuple[tuple[float, ...], list[float] | None]:
    """Normalised YOLO coordinates -> (COCO ``xywh`` pixels, polygon pixels or None)."""
    if len(coords) == 4:
        cx, cy, w, h = coords
        return ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height), None
    xs = [v * width for v in coords[0::2]]
    ys = [v * height for v in coords[1::2]]
    poly = [c for xy in zip(xs, ys, strict=True) for c in xy]
    return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)), poly


def polygon_area(poly: Sequence[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0


def read_yolo_split(
    yaml_path: str | Path, split: str, *, data: dict[str, Any] | None = None
) -> tuple[CocoIndex, Path, ReadReport]:
    """One split of a YOLO dataset as a COCO index (image and annotation ids from 1).

    Returns ``(index, images_dir, report)``: ``file_name`` is relative to ``images_dir``.
    """
    yaml_path = Path(yaml_path)
    data = read_data_yaml(yaml_path) if data is None else data
    if split not in data or not data[split]:
        raise DataError(f"{yaml_path}: no '{split}' split", path=yaml_path)
    names = data["names"]
    cat_ids = [int(c) for c in data.get("detrkit_category_ids") or range(len(names))]
    root = dataset_root(yaml_path, data)
    files, base = split_images(root, data[split], yaml_path)
    report = ReadReport(f"{yaml_path} [{split}]")
    images: list[ImageInfo] = []
    anns: list[Annotation] = []
    for path in files:
        lbl = label_path(path)
        if not path.is_file():
            report.add("label_without_image", len(images) + 1, f"{path} not found")
            continue
        (w, h), _ = image_size(path)
        image_id = len(images) + 1
        images.append(ImageInfo(image_id, path.relative_to(base).as_posix(), w, h))
        if not lbl.is_file():
            report.add("no_label_file", image_id, f"image {image_id}: no {lbl}")
            continue
        lines = [(n, line) for n, line in enumerate(lbl.read_text().splitlines(), 1) if line.strip()]
        if not lines:
            report.add("empty_label_file", image_id, f"image {image_id}: {lbl} is empty")
        for n, line in lines:
            parsed = parse_label_line(line)
            if isinstance(parsed, str):
                report.add("malformed_label_line", image_id, f"{lbl}:{n}: {parsed}")
                continue
            cls, coords, _ = parsed
            if cls >= len(names):
                report.add(
                    "unknown_class_index", image_id, f"{lbl}:{n}: class {cls} (names has {len(names)})"
                )
                continue
            box, poly = to_pixel_box(coords, w, h)
            area = polygon_area(poly) if poly else box[2] * box[3]
            seg = [poly] if poly else None
            anns.append(Annotation(len(anns) + 1, image_id, cat_ids[cls], box, area, 0, seg))
    for lbl_dir in _orphan_label_dirs(files):
        for lbl in _orphan_labels(lbl_dir, files):
            report.add("label_without_image", 0, f"{lbl}: no image with this name")
    cats = [Category(cid, name) for cid, name in zip(cat_ids, names, strict=True)]
    return CocoIndex(images=images, annotations=anns, categories=cats, source=yaml_path), base, report


def _orphan_label_dirs(files: Iterable[Path]) -> set[Path]:
    return {label_path(f).parent for f in files}


def _orphan_labels(lbl_dir: Path, files: Sequence[Path]) -> list[Path]:
    if not lbl_dir.is_dir():
        return []
    wanted = {label_path(f) for f in files}
    return sorted(p for p in lbl_dir.glob("*.txt") if p not in wanted and p.name != "classes.txt")


def _fmt(v: float) -> str:
    return f"{v:.10g}"


def write_yolo(
    splits: dict[str, tuple[CocoIndex, Path]],
    out: str | Path,
    *,
    segments: bool = False,
    link: bool = True,
) -> Path:
    """Write an Ultralytics dataset: ``out/data.yaml``, ``out/images/<split>/``, ``out/labels/<split>/``.

    Args:
        splits: ``{split: (index, images_dir)}``; every index must have the same categories.
        segments: write an annotation's single polygon as a segment line (else its box).
        link: symlink the images (else copy them).
    Returns the path of ``data.yaml``. Class ``k`` is the ``k``-th category in id order; the ids
    are kept in ``detrkit_category_ids`` (Ultralytics ignores the key).
    """
    import shutil

    out = Path(out)
    first = next(iter(splits.values()))[0]
    cats = sorted(first.categories, key=lambda c: c.id)
    label_of = {c.id: k for k, c in enumerate(cats)}
    for name, (index, _) in splits.items():
        if sorted(c.id for c in index.categories) != [c.id for c in cats]:
            raise DataError(f"split {name}: its categories differ from the first split's")
    for name, (index, images_dir) in splits.items():
        by_image: dict[int, list[Annotation]] = {}
        for a in index.annotations:
            by_image.setdefault(a.image_id, []).append(a)
        for im in index.images:
            dst = out / "images" / name / im.file_name
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = (Path(images_dir) / im.file_name).resolve()
            if not dst.exists():
                if link:
                    dst.symlink_to(src)
                else:
                    shutil.copy2(src, dst)
            lines = []
            for a in by_image.get(im.id, []):
                if a.iscrowd or a.category_id not in label_of:
                    continue
                seg = a.segmentation
                if segments and isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6:
                    pts = [v / (im.width if i % 2 == 0 else im.height) for i, v in enumerate(seg[0])]
                    lines.append(" ".join([str(label_of[a.category_id]), *map(_fmt, pts)]))
                    continue
                x, y, w, h = a.bbox_xywh
                vals = ((x + w / 2) / im.width, (y + h / 2) / im.height, w / im.width, h / im.height)
                lines.append(" ".join([str(label_of[a.category_id]), *map(_fmt, vals)]))
            lbl = out / "labels" / name / Path(im.file_name).with_suffix(".txt")
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text("".join(f"{line}\n" for line in lines))
    data = {
        "path": str(out.resolve()),  # absolute: Ultralytics reads a relative path from its datasets dir
        **{name: f"images/{name}" for name in splits},
        "names": {k: c.name for k, c in enumerate(cats)},
        "detrkit_category_ids": [c.id for c in cats],
    }
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
