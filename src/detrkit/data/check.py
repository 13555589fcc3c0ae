"""Validate a COCO dataset: annotations against themselves, and against the image files.

:func:`check_dataset` returns a :class:`CheckReport` with, per problem kind, a count and the first
few offending ids. The same rules drive training-time loading: :func:`classify_boxes` is what
``CocoDetection``'s ``on_bad_box`` policy uses, and image sizes are compared the same way.

Sizes: JSON ``width``/``height`` must describe the image *after* EXIF orientation, because
:func:`detrkit.data.images.load_image_rgb` applies it (as any image viewer does, and as annotation
tools show it). When the JSON instead matches the stored, un-rotated pixels, the problem is reported
as ``exif_size_mismatch`` so that it can be told apart from a plain ``size_mismatch``.

Boxes (COCO ``xywh`` pixels): ``degenerate_box`` when ``w <= 0``, ``h <= 0`` or a value is not
finite; ``box_outside_image`` when the box extends more than :data:`OUTSIDE_TOLERANCE_PX` beyond the
image; ``box_at_border`` (a notice, not a problem) when it extends beyond the image by at most that
tolerance: such boxes are clipped when loading (COCO itself has boxes a fraction of a pixel over the
border), and reported with their count and ids so that a systematic shift is visible.

Notices (:data:`NOTICE_KINDS`) are reported but do not make a report fail (``data check`` exits 0
for them alone); the dataset readers of :mod:`detrkit.data.formats` add their own kinds (empty
label files, ...) to the same report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detrkit.data.coco import CocoIndex, ImageInfo
from detrkit.data.images import image_size, verify_image
from detrkit.errors import ImageError

OUTSIDE_TOLERANCE_PX = 1.0

PROBLEM_KINDS: dict[str, str] = {
    "duplicate_image_id": "image ids used by more than one image",
    "duplicate_annotation_id": "annotation ids used by more than one annotation",
    "duplicate_category_id": "category ids used by more than one category",
    "unknown_category": "annotations whose category_id is not in 'categories'",
    "dangling_annotation": "annotations whose image_id is not in 'images'",
    "degenerate_box": "boxes with w <= 0, h <= 0 or non-finite values",
    "box_outside_image": f"boxes extending more than {OUTSIDE_TOLERANCE_PX:g} px outside their image",
    "box_at_border": f"boxes within {OUTSIDE_TOLERANCE_PX:g} px of the border, clipped (notice)",
    "missing_image": "image files that do not exist",
    "unreadable_image": "image files that are corrupt, truncated or not images",
    "size_mismatch": "JSON width/height differ from the image file",
    "exif_size_mismatch": "JSON width/height match the stored pixels, not the EXIF-rotated image",
}
IMAGE_KINDS = ("missing_image", "unreadable_image", "size_mismatch", "exif_size_mismatch")
#: kinds reported for information only: they do not make :attr:`CheckReport.ok` false.
NOTICE_KINDS = frozenset({"box_at_border", "empty_label_file", "no_label_file"})


@dataclass
class Problem:
    """One problem kind: how many, and the first few offending ids with a short detail each."""

    count: int = 0
    ids: list[int] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, ident: int, detail: str, max_examples: int) -> None:
        self.count += 1
        if len(self.ids) < max_examples:
            self.ids.append(ident)
            self.details.append(detail)


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`. ``ok`` is true when no problem was found."""

    annotation_file: str
    images_dir: str | None
    num_images: int
    num_annotations: int
    num_categories: int
    problems: dict[str, Problem]
    images_checked: int = 0

    @property
    def ok(self) -> bool:
        """No problem found (notices such as ``box_at_border`` do not count)."""
        return self.num_problems == 0

    @property
    def num_problems(self) -> int:
        return sum(p.count for k, p in self.problems.items() if k not in NOTICE_KINDS)

    @property
    def num_notices(self) -> int:
        return sum(p.count for k, p in self.problems.items() if k in NOTICE_KINDS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "annotation_file": self.annotation_file,
            "images_dir": self.images_dir,
            "ok": self.ok,
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "num_categories": self.num_categories,
            "images_checked": self.images_checked,
            "problems": {
                k: {
                    "count": p.count,
                    "ids": p.ids,
                    "details": p.details,
                    "description": describe(k),
                    "notice": k in NOTICE_KINDS,
                }
                for k, p in self.problems.items()
            },
        }


def classify_boxes(
    bbox_xywh: np.ndarray, width: np.ndarray, height: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Find bad COCO boxes.

    Args:
        bbox_xywh: ``float [N, 4]`` COCO ``(x, y, w, h)`` pixels.
        width, height: ``[N]`` (or scalars): size of each box's image, pixels.
    Returns:
        ``(degenerate bool[N], outside bool[N])``: degenerate = ``w <= 0``, ``h <= 0`` or non-finite;
        outside = not degenerate and more than :data:`OUTSIDE_TOLERANCE_PX` beyond the image.
    """
    b = np.asarray(bbox_xywh, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        degenerate = ~np.isfinite(b).all(axis=1) | (b[:, 2] <= 0) | (b[:, 3] <= 0)
        tol = OUTSIDE_TOLERANCE_PX
        outside = (
            (b[:, 0] < -tol)
            | (b[:, 1] < -tol)
            | (b[:, 0] + b[:, 2] > np.asarray(width) + tol)
            | (b[:, 1] + b[:, 3] > np.asarray(height) + tol)
        )
    return degenerate, outside & ~degenerate


#: the kinds only dataset readers report (:mod:`detrkit.data.formats`; ``data check`` has
#: :data:`PROBLEM_KINDS`); kept here, below the readers, so that :func:`describe` needs no import.
READER_KINDS: dict[str, str] = {
    "unknown_class_index": "label lines whose class index is not in the names (line left out)",
    "malformed_label_line": "label lines that are not 'class cx cy w h' or a polygon (line left out)",
    "label_without_image": "label/XML files whose image does not exist (left out)",
    "empty_label_file": "empty label files: negative images, kept (notice)",
    "no_label_file": "images without a label file: negative images, kept (notice)",
    "missing_annotation_file": "images listed in a split file without their annotation file (left out)",
    "unknown_class_name": "objects whose class name is not in the given names (left out)",
}


def describe(kind: str) -> str:
    """One-line description of a problem kind (of :data:`PROBLEM_KINDS` or a dataset reader's)."""
    if kind in PROBLEM_KINDS:
        return PROBLEM_KINDS[kind]
    return READER_KINDS.get(kind, kind)


def border_boxes(bbox_xywh: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """``bool [N]``: boxes beyond the image by more than 0 and at most :data:`OUTSIDE_TOLERANCE_PX`
    (clipped when loading); degenerate and outside boxes (:func:`classify_boxes`) are excluded."""
    b = np.asarray(bbox_xywh, dtype=np.float64).reshape(-1, 4)
    degenerate, outside = classify_boxes(b, width, height)
    with np.errstate(invalid="ignore"):
        over = (
            (b[:, 0] < 0)
            | (b[:, 1] < 0)
            | (b[:, 0] + b[:, 2] > np.asarray(width))
            | (b[:, 1] + b[:, 3] > np.asarray(height))
        )
    return over & ~degenerate & ~outside


def _duplicates(ids: Iterable[int]) -> list[int]:
    seen: set[int] = set()
    dup: list[int] = []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    return dup


def check_annotations(index: CocoIndex, *, max_examples: int = 5) -> dict[str, Problem]:
    """Problems visible in the JSON alone (ids, categories, boxes); every kind is present."""
    problems = {k: Problem() for k in PROBLEM_KINDS}
    for kind, objs in (
        ("duplicate_image_id", index.images),
        ("duplicate_annotation_id", index.annotations),
        ("duplicate_category_id", index.categories),
    ):
        for i in _duplicates(o.id for o in objs):
            problems[kind].add(i, f"id {i} appears again", max_examples)
    if not index.annotations:
        return problems
    arr = index.ann_arrays()
    images = index.image_by_id()
    cat_ids = np.array(sorted({c.id for c in index.categories}), dtype=np.int64)
    unknown = ~np.isin(arr["category_id"], cat_ids)
    img_ids = np.fromiter(images, np.int64, len(images))
    dangling = ~np.isin(arr["image_id"], img_ids)
    sizes = {i: (im.width, im.height) for i, im in images.items()}
    wh = np.array([sizes.get(int(i), (np.inf, np.inf)) for i in arr["image_id"]], dtype=np.float64)
    degenerate, outside = classify_boxes(arr["bbox_xywh"], wh[:, 0], wh[:, 1])
    outside &= ~dangling
    border = border_boxes(arr["bbox_xywh"], wh[:, 0], wh[:, 1]) & ~dangling
    for k in np.flatnonzero(unknown):
        problems["unknown_category"].add(
            int(arr["id"][k]), f"annotation {arr['id'][k]}: category_id {arr['category_id'][k]}", max_examples
        )
    for k in np.flatnonzero(dangling):
        problems["dangling_annotation"].add(
            int(arr["id"][k]), f"annotation {arr['id'][k]}: image_id {arr['image_id'][k]}", max_examples
        )
    for kind, mask in (
        ("degenerate_box", degenerate),
        ("box_outside_image", outside),
        ("box_at_border", border),
    ):
        for k in np.flatnonzero(mask):
            bbox = [round(float(v), 2) for v in arr["bbox_xywh"][k]]
            problems[kind].add(
                int(arr["id"][k]),
                f"annotation {arr['id'][k]}: bbox {bbox} in image {arr['image_id'][k]} "
                f"({wh[k, 0]:g}x{wh[k, 1]:g})",
                max_examples,
            )
    return problems


def _check_one(im: ImageInfo, images_dir: Path, decode: bool) -> tuple[str, str] | None:
    path = images_dir / im.file_name
    if not path.is_file():
        return "missing_image", f"image {im.id}: {path} not found"
    try:
        (w, h), raw = (verify_image if decode else image_size)(path)
    except ImageError as err:
        return "unreadable_image", f"image {im.id}: {err}"
    if (w, h) != (im.width, im.height):
        kind = "exif_size_mismatch" if raw == (im.width, im.height) else "size_mismatch"
        return kind, f"image {im.id}: {path.name} is {w}x{h}, JSON says {im.width}x{im.height}"
    return None


def check_images(
    index: CocoIndex,
    images_dir: str | Path,
    *,
    decode: bool = True,
    workers: int | None = None,
    max_examples: int = 5,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Problem]:
    """Open (and with ``decode``, fully decode) every image; returns the image problem kinds.

    Decoding runs in a thread pool (Pillow releases the GIL while decoding). ``progress(n)`` is
    called after each image with ``n = 1``.
    """
    images_dir = Path(images_dir)
    problems = {k: Problem() for k in IMAGE_KINDS}
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda im: _check_one(im, images_dir, decode), index.images, chunksize=16)
        for im, res in zip(index.images, results, strict=True):
            if res is not None:
                problems[res[0]].add(im.id, res[1], max_examples)
            if progress is not None:
                progress(1)
    return problems


def check_dataset(
    index: CocoIndex | str | Path,
    images_dir: str | Path | None = None,
    *,
    decode: bool = True,
    workers: int | None = None,
    max_examples: int = 5,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Run every check; the image-file checks only when ``images_dir`` is given.

    Raises :class:`~detrkit.errors.AnnotationError` when the file cannot be parsed at all.
    """
    if not isinstance(index, CocoIndex):
        index = CocoIndex.load(index)
    problems = check_annotations(index, max_examples=max_examples)
    checked = 0
    if images_dir is not None:
        problems.update(
            check_images(
                index,
                images_dir,
                decode=decode,
                workers=workers,
                max_examples=max_examples,
                progress=progress,
            )
        )
        checked = len(index.images)
    return CheckReport(
        annotation_file=str(index.source) if index.source else "<dict>",
        images_dir=None if images_dir is None else str(images_dir),
        num_images=len(index.images),
        num_annotations=len(index.annotations),
        num_categories=len(index.categories),
        problems=problems,
        images_checked=checked,
    )
