"""A typed, fast index of a COCO instances file.

:class:`CocoIndex` validates the *structure* of a COCO detection file (required keys and their
types) while loading and raises :class:`~detrkit.errors.AnnotationError` naming the file and the
offending image/annotation/category id and field. *Semantic* problems (duplicate ids, boxes outside
the image, unknown category ids, annotations of missing images) do not stop loading: they are
reported by :mod:`detrkit.data.check` and handled by the dataset's ``on_bad_box`` policy.

Boxes are COCO ``xywh`` in pixels, as in the file. Contiguous labels ``0..K-1`` follow the sorted
COCO category ids (:attr:`CocoIndex.category_ids`).

Loading is a single pass over plain dicts into slotted dataclasses; per-image grouping and the numpy
views (:meth:`CocoIndex.ann_arrays`) are built lazily on first use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detrkit.errors import AnnotationError

_IMAGE_KEYS = frozenset({"id", "file_name", "width", "height"})
_ANN_KEYS = frozenset({"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"})
_CAT_KEYS = frozenset({"id", "name", "supercategory"})


@dataclass(slots=True)
class ImageInfo:
    """One ``images`` entry. ``width``/``height`` in pixels; ``extra`` keeps the other keys."""

    id: int
    file_name: str
    width: int
    height: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Annotation:
    """One ``annotations`` entry; ``bbox_xywh`` is COCO ``(x, y, w, h)`` in pixels."""

    id: int
    image_id: int
    category_id: int
    bbox_xywh: tuple[float, float, float, float]
    area: float
    iscrowd: int
    segmentation: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Category:
    """One ``categories`` entry."""

    id: int
    name: str
    supercategory: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_NUM_TYPES = frozenset({int, float})


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


_INT64 = 2**63


def _check_int64(
    images: list[ImageInfo], annotations: list[Annotation], categories: list[Category], fail: Any
) -> None:
    """Ids and image sizes must fit int64 (they become NumPy/PyTorch arrays); one line names one."""
    columns = (
        ("image", "id", [im.id for im in images]),
        ("image", "width", [im.width for im in images]),
        ("image", "height", [im.height for im in images]),
        ("annotation", "id", [a.id for a in annotations]),
        ("annotation", "image_id", [a.image_id for a in annotations]),
        ("annotation", "category_id", [a.category_id for a in annotations]),
        ("category", "id", [c.id for c in categories]),
    )
    for what, key, values in columns:
        if values and (max(values) >= _INT64 or min(values) < -_INT64):
            bad = next(v for v in values if not -_INT64 <= v < _INT64)
            raise fail(f"{what} field '{key}' = {bad} does not fit a 64-bit integer")


class CocoIndex:
    """Images, annotations and categories of one COCO instances file.

    Attributes:
        images: ``list[ImageInfo]`` in file order.
        annotations: ``list[Annotation]`` in file order.
        categories: ``list[Category]`` in file order.
        source: the file it came from (used in error messages), or ``None``.
        extra: other top-level keys (``info``, ``licenses``, ...), written back by :meth:`to_dict`.
    """

    def __init__(
        self,
        *,
        images: list[ImageInfo],
        annotations: list[Annotation],
        categories: list[Category],
        source: str | Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.images = images
        self.annotations = annotations
        self.categories = categories
        self.source = None if source is None else Path(source)
        self.extra = dict(extra or {})
        self._by_image: dict[int, list[Annotation]] | None = None
        self._arrays: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def load(cls, path: str | Path) -> CocoIndex:
        """Read and validate ``path``; raises :class:`AnnotationError` naming the file."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise AnnotationError(f"{path}: annotation file not found", path=path) from None
        except IsADirectoryError:
            raise AnnotationError(f"{path}: is a directory, expected a COCO JSON file", path=path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AnnotationError(f"{path}: not valid JSON ({err})", path=path) from None
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | Path | None = None) -> CocoIndex:
        """Build an index from a parsed COCO dict; raises :class:`AnnotationError` on bad structure."""
        where = str(source) if source is not None else "<dict>"

        def fail(msg: str) -> AnnotationError:
            return AnnotationError(f"{where}: {msg}", path=source)

        if not isinstance(d, Mapping):
            raise fail(f"top level must be a JSON object, got {type(d).__name__}")
        for key in ("images", "annotations", "categories"):
            if key not in d:
                raise fail(f"missing top-level key '{key}'")
            if not isinstance(d[key], list):
                raise fail(f"'{key}' must be a list, got {type(d[key]).__name__}")

        images: list[ImageInfo] = []
        for i, im in enumerate(d["images"]):
            if not isinstance(im, dict):
                raise fail(f"images[{i}] must be an object")
            try:
                iid, fn, w, h = im["id"], im["file_name"], im["width"], im["height"]
            except KeyError as err:
                raise fail(f"images[{i}] (id={im.get('id')!r}) is missing '{err.args[0]}'") from None
            if not _is_int(iid):
                raise fail(f"images[{i}] field 'id' must be an integer, got {iid!r}")
            if not isinstance(fn, str) or not fn:
                raise fail(f"image id={iid} field 'file_name' must be a non-empty string")
            if not (_is_int(w) and _is_int(h)):
                raise fail(f"image id={iid} fields 'width'/'height' must be integers, got {w!r}x{h!r}")
            extra = {k: v for k, v in im.items() if k not in _IMAGE_KEYS}
            images.append(ImageInfo(int(iid), fn, int(w), int(h), extra))

        annotations: list[Annotation] = []
        append = annotations.append
        num_types = _NUM_TYPES
        for i, a in enumerate(d["annotations"]):
            try:
                aid, img_id, cat_id, bbox = a["id"], a["image_id"], a["category_id"], a["bbox"]
                x, y, w, h = bbox
            except KeyError as err:
                raise fail(f"annotation id={a.get('id')!r} (index {i}) is missing '{err.args[0]}'") from None
            except (TypeError, ValueError):
                if not isinstance(a, dict):
                    raise fail(f"annotations[{i}] must be an object") from None
                raise fail(
                    f"annotation id={a.get('id')!r} field 'bbox' must be 4 numbers [x, y, w, h]"
                ) from None
            if not (type(aid) is int and type(img_id) is int and type(cat_id) is int):
                bad = [k for k in ("id", "image_id", "category_id") if not _is_int(a[k])]
                if bad:
                    raise fail(
                        f"annotation id={aid!r} field '{bad[0]}' must be an integer, got {a[bad[0]]!r}"
                    )
                aid, img_id, cat_id = int(aid), int(img_id), int(cat_id)
            if not (
                type(x) in num_types
                and type(y) in num_types
                and type(w) in num_types
                and type(h) in num_types
            ):
                if not all(_is_num(v) for v in (x, y, w, h)):
                    raise fail(
                        f"annotation id={aid} field 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}"
                    )
                x, y, w, h = float(x), float(y), float(w), float(h)
            area = a.get("area")
            if area is None:
                area = float(w) * float(h)
            elif type(area) not in num_types:
                raise fail(f"annotation id={aid} field 'area' must be a number, got {area!r}")
            crowd = a.get("iscrowd", 0)
            if type(crowd) is not int:
                if type(crowd) is not bool:
                    raise fail(f"annotation id={aid} field 'iscrowd' must be 0 or 1, got {crowd!r}")
                crowd = int(crowd)
            extra = {k: v for k, v in a.items() if k not in _ANN_KEYS} if not a.keys() <= _ANN_KEYS else {}
            append(Annotation(aid, img_id, cat_id, (x, y, w, h), area, crowd, a.get("segmentation"), extra))

        categories: list[Category] = []
        for i, c in enumerate(d["categories"]):
            if not isinstance(c, dict):
                raise fail(f"categories[{i}] must be an object")
            try:
                cid, name = c["id"], c["name"]
            except KeyError as err:
                raise fail(f"category id={c.get('id')!r} (index {i}) is missing '{err.args[0]}'") from None
            if not _is_int(cid):
                raise fail(f"categories[{i}] field 'id' must be an integer, got {cid!r}")
            if not isinstance(name, str):
                raise fail(f"category id={cid} field 'name' must be a string, got {name!r}")
            extra = {k: v for k, v in c.items() if k not in _CAT_KEYS}
            categories.append(Category(int(cid), name, str(c.get("supercategory", "") or ""), extra))

        _check_int64(images, annotations, categories, fail)
        rest = {k: v for k, v in d.items() if k not in ("images", "annotations", "categories")}
        return cls(images=images, annotations=annotations, categories=categories, source=source, extra=rest)

    def to_dict(self) -> dict[str, Any]:
        """A COCO dict (``bbox`` as ``[x, y, w, h]`` lists) that :meth:`from_dict` reads back."""
        out: dict[str, Any] = dict(self.extra)
        out["images"] = [
            {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height, **im.extra}
            for im in self.images
        ]
        anns = []
        for a in self.annotations:
            d = {
                "id": a.id,
                "image_id": a.image_id,
                "category_id": a.category_id,
                "bbox": list(a.bbox_xywh),
                "area": a.area,
                "iscrowd": a.iscrowd,
            }
            if a.segmentation is not None:
                d["segmentation"] = a.segmentation
            if a.extra:
                d.update(a.extra)
            anns.append(d)
        out["annotations"] = anns
        out["categories"] = [
            {"id": c.id, "name": c.name, "supercategory": c.supercategory, **c.extra} for c in self.categories
        ]
        return out

    def save(self, path: str | Path) -> Path:
        """Write valid COCO JSON to ``path`` (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, separators=(",", ":"))
        tmp.replace(path)
        return path

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"CocoIndex({self.source or '<dict>'}: {len(self.images)} images, "
            f"{len(self.annotations)} annotations, {len(self.categories)} categories)"
        )

    def anns_by_image(self, image_id: int) -> list[Annotation]:
        """Annotations of ``image_id`` in file order (``[]`` when it has none)."""
        if self._by_image is None:
            by: dict[int, list[Annotation]] = {}
            for a in self.annotations:
                lst = by.get(a.image_id)
                if lst is None:
                    by[a.image_id] = [a]
                else:
                    lst.append(a)
            self._by_image = by
        return self._by_image.get(image_id, [])

    def ann_arrays(self) -> dict[str, np.ndarray]:
        """Numpy views of all annotations, in file order (cached).

        Returns ``{"id": int64[N], "image_id": int64[N], "category_id": int64[N],
        "bbox_xywh": float64[N, 4] (COCO pixels), "area": float64[N], "iscrowd": int64[N]}``.
        """
        if self._arrays is None:
            anns = self.annotations
            n = len(anns)
            self._arrays = {
                "id": np.fromiter((a.id for a in anns), np.int64, n),
                "image_id": np.fromiter((a.image_id for a in anns), np.int64, n),
                "category_id": np.fromiter((a.category_id for a in anns), np.int64, n),
                "bbox_xywh": np.array([a.bbox_xywh for a in anns], np.float64).reshape(n, 4),
                "area": np.fromiter((a.area for a in anns), np.float64, n),
                "iscrowd": np.fromiter((a.iscrowd for a in anns), np.int64, n),
            }
        return self._arrays

    @property
    def category_ids(self) -> list[int]:
        """Sorted COCO category ids; position ``k`` is contiguous label ``k``."""
        return sorted({c.id for c in self.categories})

    @property
    def class_names(self) -> list[str]:
        """Category names in contiguous label order."""
        names = {c.id: c.name for c in self.categories}
        return [names[i] for i in self.category_ids]

    @property
    def cat_id_to_label(self) -> dict[int, int]:
        """COCO category id -> contiguous label ``0..K-1``."""
        return {cid: k for k, cid in enumerate(self.category_ids)}

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        """Contiguous label ``0..K-1`` -> COCO category id."""
        return dict(enumerate(self.category_ids))

    def image_by_id(self) -> dict[int, ImageInfo]:
        """``{image id: ImageInfo}`` (the last one wins on duplicate ids)."""
        return {im.id: im for im in self.images}
