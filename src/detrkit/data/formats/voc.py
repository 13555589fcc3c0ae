"""Pascal VOC folders -> COCO: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Boxes: VOC ``xmin ymin xmax ymax`` are 1-based inclusive pixel indices; COCO ``x = xmin - 1``,
``y = ymin - 1``, ``w = xmax - x``, ``h = ymax - y`` (as Detectron2 reads VOC). Categories are the
object names sorted alphabetically with ids 1..K (or the given ``names`` in that order). Objects
marked ``difficult`` are kept and keep ``difficult: 1`` in the annotation (a count is noted).
Splits: ``ImageSets/Main/{train,val,test}.txt`` (``trainval`` when there is no ``train``); without
``ImageSets`` every XML file is the ``train`` split.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from detrkit.data.coco import Annotation, Category, CocoIndex, ImageInfo
from detrkit.data.formats.report import ReadReport
from detrkit.errors import AnnotationError, DataError


def voc_root(path: Path) -> Path | None:
    """The folder holding ``Annotations/`` and ``JPEGImages/`` (also inside ``VOCdevkit/VOC20xx``)."""
    cands = [path, *sorted(path.glob("VOC*")), *sorted(path.glob("VOCdevkit/VOC*"))]
    for c in cands:
        if (c / "Annotations").is_dir() and (c / "JPEGImages").is_dir():
            return c
    return None


def voc_splits(root: Path) -> dict[str, list[str]]:
    """``{split: [image id stems]}`` from ``ImageSets/Main``; all XML files as ``train`` without it."""
    main = root / "ImageSets" / "Main"
    lists = {p.stem: p for p in main.glob("*.txt") if "_" not in p.stem} if main.is_dir() else {}
    if "train" not in lists and "trainval" in lists:
        lists["train"] = lists.pop("trainval")
    lists.pop("trainval", None)
    if not lists:
        return {"train": sorted(p.stem for p in (root / "Annotations").glob("*.xml"))}
    return {
        k: [s.split()[0] for s in p.read_text().splitlines() if s.strip()] for k, p in sorted(lists.items())
    }


def _parse(xml_path: Path) -> tuple[str, int, int, list[tuple[str, tuple[float, ...], int]]]:
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as err:
        raise AnnotationError(f"{xml_path}: not a readable VOC XML file ({err})", path=xml_path) from None
    size = root.find("size")
    try:
        w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))  # type: ignore[union-attr,arg-type]
    except (AttributeError, TypeError, ValueError):
        raise AnnotationError(f"{xml_path}: missing or bad <size><width>/<height>", path=xml_path) from None
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            raise AnnotationError(
                f"{xml_path}: object {name!r} has no valid <bndbox>", path=xml_path
            ) from None
        difficult = int(float(obj.findtext("difficult") or 0))
        objects.append((name, (x0 - 1, y0 - 1, x1 - (x0 - 1), y1 - (y0 - 1)), difficult))
    return (root.findtext("filename") or "").strip(), w, h, objects


def voc_class_names(root: Path) -> list[str]:
    """Every object name in ``Annotations/*.xml``, sorted."""
    names: set[str] = set()
    for xml_path in (root / "Annotations").glob("*.xml"):
        names.update(n for n, _, _ in _parse(xml_path)[3])
    return sorted(names)


def read_voc_split(
    root: str | Path, split: str, *, names: list[str] | None = None
) -> tuple[CocoIndex, Path, ReadReport]:
    """One VOC split as a COCO index (ids from 1); ``file_name`` relative to ``JPEGImages/``."""
    root = Path(root)
    splits = voc_splits(root)
    if split not in splits:
        raise DataError(f"{root}: no VOC split {split!r} (found {', '.join(splits)})", path=root)
    names = names if names is not None else voc_class_names(root)
    cat_of = {n: k + 1 for k, n in enumerate(names)}
    report = ReadReport(f"{root} [{split}]")
    images: list[ImageInfo] = []
    anns: list[Annotation] = []
    difficult = 0
    jpeg = root / "JPEGImages"
    for stem in splits[split]:
        xml_path = root / "Annotations" / f"{stem}.xml"
        if not xml_path.is_file():
            report.add(
                "missing_annotation_file", 0, f"{xml_path} not found (listed in ImageSets/Main/{split}.txt)"
            )
            continue
        filename, w, h, objects = _parse(xml_path)
        filename = filename or f"{stem}.jpg"
        if not (jpeg / filename).is_file():
            report.add("label_without_image", 0, f"{xml_path}: {jpeg / filename} not found")
            continue
        image_id = len(images) + 1
        images.append(ImageInfo(image_id, filename, w, h))
        if not objects:
            report.add("empty_label_file", image_id, f"image {image_id}: {xml_path} has no objects")
        for name, box, diff in objects:
            if name not in cat_of:
                report.add("unknown_class_name", image_id, f"{xml_path}: {name!r}")
                continue
            extra = {"difficult": 1} if diff else {}
            difficult += diff
            anns.append(
                Annotation(len(anns) + 1, image_id, cat_of[name], box, box[2] * box[3], 0, None, extra)
            )
    if difficult:
        report.note(
            f"{root} [{split}]: {difficult} objects marked difficult kept (annotation key 'difficult: 1')"
        )
    cats = [Category(k + 1, n) for k, n in enumerate(names)]
    return CocoIndex(images=images, annotations=anns, categories=cats, source=root), jpeg, report
