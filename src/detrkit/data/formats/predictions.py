"""Predictions of other tools -> COCO results, matched to a COCO ground truth.

Formats (:data:`PREDICTION_FORMATS`; ``auto`` picks by content):

- ``coco``: a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` whose ids
  are the ground truth's (detrkit ``predict``, pycocotools, Detectron2, mmdet).
- ``yolo-txt``: a folder of YOLO ``save_txt`` files (``save_conf=True``), ``<image stem>.txt`` with
  ``class cx cy w h conf`` lines normalised to the image size (a polygon before ``conf`` is read
  by its bounds).
- ``ultralytics``: Ultralytics ``save_json`` output: ``image_id`` is the image file's stem (an int
  when it is numeric), ``bbox`` is ``[x, y, w, h]`` pixels, ``category_id`` is the class index + 1
  (Ultralytics' ``class_map`` for any non-COCO dataset); ``auto`` takes a list as Ultralytics when
  an ``image_id`` is a string or an entry has ``file_name``, or when an id the GT lacks is the
  stem of a GT image.
- ``roboflow``: Roboflow inference responses ``{"predictions": [{"x", "y", "width", "height",
  "confidence", "class"}]}`` (``x``/``y`` the box centre, pixels), as a JSON object ``{file name:
  response}`` or a list of responses with ``image_path``/``file_name``; classes by name.

Class index ``k`` (YOLO, Ultralytics) is the ``k``-th GT category in id order, leaving out a
Roboflow placeholder category (as Roboflow's own YOLO export does), which is also the YOLO class of
a dataset converted by :mod:`detrkit.data.formats` in either direction. Images match the
GT's ``file_name``, then its base name, then its stem; a prediction for no GT image, an unknown
class or a malformed line raises :class:`~detrkit.errors.AnnotationError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detrkit.data.coco import CocoIndex
from detrkit.data.formats.coco import placeholder_categories
from detrkit.data.formats.yolo import parse_label_line, to_pixel_box
from detrkit.errors import AnnotationError

PREDICTION_FORMATS: tuple[str, ...] = ("auto", "coco", "yolo-txt", "ultralytics", "roboflow")


class _Images:
    """GT image lookup by file name, base name or stem (ambiguous keys are refused)."""

    def __init__(self, gt: CocoIndex) -> None:
        self.ids = {im.id for im in gt.images}
        self.size = {im.id: (im.width, im.height) for im in gt.images}
        self.keys: list[dict[str, int | None]] = [{}, {}, {}]
        for im in gt.images:
            p = Path(im.file_name)
            for table, key in zip(self.keys, (im.file_name, p.name, p.stem), strict=True):
                table[key] = None if key in table and table[key] != im.id else im.id

    def find(self, name: Any, source: Path) -> int:
        text = str(name)
        # a stem may itself contain dots (Roboflow: 'IMG_1_jpg.rf.3f2a'): try it whole first
        for table, key in ((0, text), (1, Path(text).name), (2, text), (2, Path(text).stem)):
            table = self.keys[table]
            if key in table:
                if table[key] is None:
                    raise AnnotationError(f"{source}: image {text!r} matches several GT images", path=source)
                return int(table[key])  # type: ignore[arg-type]
        raise AnnotationError(f"{source}: image {text!r} is not an image of the ground truth", path=source)


def _class_to_cat(gt: CocoIndex, k: int, source: Path, where: str) -> int:
    cats = sorted(c.id for c in gt.categories)
    if not 0 <= k < len(cats):
        raise AnnotationError(
            f"{source}: {where}: class index {k} (the GT has {len(cats)} classes)", path=source
        )
    return cats[k]


def read_yolo_txt(folder: Path, gt: CocoIndex) -> list[dict[str, Any]]:
    images = _Images(gt)
    out: list[dict[str, Any]] = []
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise AnnotationError(f"{folder}: no YOLO .txt prediction files in the folder", path=folder)
    for f in files:
        image_id = images.find(f.stem, f)
        w, h = images.size[image_id]
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parsed = parse_label_line(line, with_score=True)
            if isinstance(parsed, str):
                raise AnnotationError(f"{f}:{n}: {parsed} (save_txt with save_conf=True?)", path=f)
            cls, coords, score = parsed
            box, _ = to_pixel_box(coords, w, h)
            cat = _class_to_cat(gt, cls, f, f"line {n}")
            out.append({"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score})
    return out


def _is_ultralytics(rows: list[Any], gt: CocoIndex) -> bool:
    """Ultralytics when an entry has ``file_name`` or a string ``image_id``, or when an int
    ``image_id`` the GT lacks is the stem of a GT image (numeric file names); otherwise COCO
    results (whose unknown ids :func:`~detrkit.evaluation.coco.validate_predictions` reports)."""
    ids = {im.id for im in gt.images}
    stems = {Path(im.file_name).stem for im in gt.images}
    for r in rows:
        if not isinstance(r, Mapping):
            return False
        image_id = r.get("image_id")
        if not isinstance(image_id, int | float | str | None):
            return False  # a list or mapping: the COCO reader names the bad entry
        if "file_name" in r or isinstance(image_id, str):
            return True
        if image_id not in ids and str(image_id) in stems:
            return True
    return False


def read_ultralytics(
    rows: list[Any], gt: CocoIndex, source: Path, *, class_base: int = 1
) -> list[dict[str, Any]]:
    images = _Images(gt)
    out = []
    for i, r in enumerate(rows):
        try:
            name = r.get("file_name") or r["image_id"]
            k = int(r["category_id"]) - class_base
            box = [float(v) for v in r["bbox"]]
            score = float(r["score"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise AnnotationError(
                f"{source}: entry #{i} needs image_id, category_id, bbox [x, y, w, h] and score", path=source
            ) from None
        cat = _class_to_cat(
            gt, k, source, f"entry #{i} (category_id {r['category_id']} = class + {class_base})"
        )
        out.append({"image_id": images.find(name, source), "category_id": cat, "bbox": box, "score": score})
    return out


def read_roboflow(data: Any, gt: CocoIndex, source: Path) -> list[dict[str, Any]]:
    images = _Images(gt)
    by_name = {c.name: c.id for c in gt.categories}
    if isinstance(data, Mapping) and "predictions" in data:
        data = [data]
    items = (
        list(data.items())
        if isinstance(data, Mapping)
        else [
            (r.get("image_path") or r.get("file_name") or (r.get("image") or {}).get("file_name"), r)
            for r in data
        ]
    )
    out = []
    for name, resp in items:
        if name is None:
            raise AnnotationError(f"{source}: a response without image_path/file_name", path=source)
        image_id = images.find(name, source)
        preds = resp.get("predictions", []) if isinstance(resp, Mapping) else resp
        for p in preds:
            cls = p.get("class")
            if cls not in by_name:
                raise AnnotationError(
                    f"{source}: class {cls!r} is not a GT category ({', '.join(by_name)})", path=source
                )
            w, h = float(p["width"]), float(p["height"])
            box = [float(p["x"]) - w / 2, float(p["y"]) - h / 2, w, h]
            out.append(
                {
                    "image_id": image_id,
                    "category_id": by_name[cls],
                    "bbox": box,
                    "score": float(p["confidence"]),
                }
            )
    return out


def read_predictions(
    source: str | Path, gt: CocoIndex | str | Path, *, fmt: str = "auto", class_base: int = 1
) -> tuple[list[dict[str, Any]], str]:
    """Read ``source`` as COCO results for ``gt``; returns ``(results, format used)``.

    Args:
        class_base: Ultralytics JSON ``category_id`` minus this is the class index (1 for
            Ultralytics 8.x on non-COCO data; 0 for older versions).
    """
    source = Path(source)
    if fmt not in PREDICTION_FORMATS:
        raise AnnotationError(
            f"unknown prediction format {fmt!r} (choose from {', '.join(PREDICTION_FORMATS)})"
        )
    gt = _without_placeholder(gt if isinstance(gt, CocoIndex) else CocoIndex.load(gt))
    if not source.exists():
        raise AnnotationError(f"{source}: prediction file or folder not found", path=source)
    if source.is_dir() or fmt == "yolo-txt":
        if not source.is_dir():
            raise AnnotationError(f"{source}: YOLO predictions are a folder of .txt files", path=source)
        labels = source / "labels"
        return read_yolo_txt(labels if labels.is_dir() else source, gt), "yolo-txt"
    try:
        data = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{source}: not a readable JSON file ({err})", path=source) from None
    if fmt == "roboflow" or (fmt == "auto" and _looks_roboflow(data)):
        return read_roboflow(data, gt, source), "roboflow"
    if isinstance(data, Mapping) and "annotations" in data:
        data = data["annotations"]
    if not isinstance(data, list):
        raise AnnotationError(
            f"{source}: expected a JSON list of results, got {type(data).__name__}", path=source
        )
    if fmt == "ultralytics" or (fmt == "auto" and _is_ultralytics(data, gt)):
        return read_ultralytics(data, gt, source, class_base=class_base), "ultralytics"
    return data, "coco"


def _without_placeholder(gt: CocoIndex) -> CocoIndex:
    """``gt`` without a Roboflow placeholder category: class ``k`` of a model trained on the export
    (by detrkit, Ultralytics or Roboflow) is the ``k``-th *real* category."""
    drop = set(placeholder_categories(gt))
    if not drop:
        return gt
    cats = [c for c in gt.categories if c.id not in drop]
    return CocoIndex(images=gt.images, annotations=gt.annotations, categories=cats, source=gt.source)


def _looks_roboflow(data: Any) -> bool:
    if isinstance(data, Mapping):
        if "predictions" in data:
            return True
        return bool(data) and all(isinstance(v, Mapping) and "predictions" in v for v in data.values())
    return bool(data) and isinstance(data, list) and isinstance(data[0], Mapping) and "predictions" in data[0]


def predictions_source(
    pred: str | Path, gt: CocoIndex | str | Path, *, fmt: str = "auto", class_base: int = 1
) -> tuple[Path | list[dict[str, Any]], str]:
    """``pred`` itself when it is a COCO results file (so errors name it), else the converted results."""
    results, used = read_predictions(pred, gt, fmt=fmt, class_base=class_base)
    return (Path(pred) if used == "coco" else results), used
