"""Instance masks for synthesis: COCO segmentations <-> boolean arrays, and local masks.

A COCO segmentation is a polygon list, an uncompressed RLE (``counts`` a list) or a compressed RLE
(``counts`` a string); all three decode to a boolean ``[H, W]`` array through the COCO mask API
(``faster_coco_eval.core.mask``, the same C code as ``pycocotools.mask``). New masks are written as
compressed RLE, which is exact (polygons are not).

A :class:`LocalMask` is a boolean mask cropped to its bounding box plus the box's top-left corner, so
that pastes only ever touch the pixels near an object (no full-image arrays per object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as coco_mask


def has_segmentation(segmentation: Any) -> bool:
    """True when ``segmentation`` holds a polygon or an RLE (box-only datasets have ``[]``/None)."""
    if isinstance(segmentation, dict):
        return "counts" in segmentation and "size" in segmentation
    if isinstance(segmentation, list):
        return any(isinstance(p, list | tuple) and len(p) >= 6 for p in segmentation)
    return False


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygons or RLE) -> ``bool [height, width]``.

    Polygons with fewer than three points are ignored; an RLE whose ``size`` differs from
    ``(height, width)`` raises ``ValueError``.
    """
    rle = _to_rle(segmentation, height, width)
    if isinstance(rle["counts"], list):
        rle = coco_mask.frPyObjects(rle, height, width)
    return coco_mask.decode(rle).view(bool)


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Polygons or (un)compressed RLE -> one COCO RLE dict (``counts`` str/bytes or list)."""
    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} does not match the image size {[height, width]}")
        return segmentation
    polygons = [[float(v) for v in p] for p in segmentation if isinstance(p, list | tuple) and len(p) >= 6]
    if not polygons:
        return {"size": [height, width], "counts": [height * width]}
    rles = coco_mask.frPyObjects(polygons, height, width)
    return coco_mask.merge(rles) if len(rles) > 1 else rles[0]


def rle_string_to_counts(counts: str | bytes) -> list[int]:
    """Decompress COCO's RLE string (the ``rleFrString`` LEB128-like code) to run lengths."""
    data = counts.encode("ascii") if isinstance(counts, str) else counts
    out: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_local(segmentation: Any, height: int, width: int) -> LocalMask:
    """COCO segmentation -> :class:`LocalMask` (tight), decoding only the object's columns.

    Equal to ``LocalMask.from_full(decode_segmentation(...))`` without the image-sized array.
    """
    rle = _to_rle(segmentation, height, width)
    counts = rle["counts"]
    runs = np.asarray(counts if isinstance(counts, list) else rle_string_to_counts(counts), dtype=np.int64)
    ends = np.cumsum(runs)
    starts = ends - runs
    on = np.arange(runs.size) % 2 == 1
    on &= runs > 0
    if not on.any():
        return LocalMask(0, 0, np.zeros((0, 0), dtype=bool))
    s_on, e_on = starts[on], ends[on]
    cx0, cx1 = int(s_on[0] // height), int((e_on[-1] - 1) // height) + 1
    lo = cx0 * height
    edges = np.zeros((cx1 - cx0) * height + 1, dtype=np.int32)
    np.add.at(edges, s_on - lo, 1)
    np.add.at(edges, e_on - lo, -1)
    band = np.cumsum(edges[:-1], dtype=np.int32).astype(bool).reshape(cx1 - cx0, height).T
    local = LocalMask(cx0, 0, band)
    local.tighten()
    return local


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """``bool [H, W]`` -> compressed COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def encode_local(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict[str, Any]:
    """Compressed COCO RLE of a mask stored inside a box, without building the image-sized array.

    ``mask`` is ``bool [h, w]`` with its top-left pixel at ``(x0, y0)`` of a ``height x width``
    image. Runs are counted on the ``height x w`` column band (COCO RLE is column-major), the
    columns left and right of it added as one zero run each; the result equals
    :func:`encode_mask` of the full mask.
    """
    h, w = mask.shape
    if h == 0 or w == 0 or not mask.any():
        return encode_mask(np.zeros((height, width), dtype=bool))
    band = np.zeros((w, height), dtype=np.int8)
    band[:, y0 : y0 + h] = mask.T
    flat = band.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size])))
    counts = runs.tolist()
    if flat[0]:
        counts.insert(0, 0)
    counts[0] += x0 * height
    tail = (width - x0 - w) * height
    if flat[-1]:
        if tail:
            counts.append(tail)
    else:
        counts[-1] += tail
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    c = rle["counts"]
    return {"size": [height, width], "counts": c.decode("ascii") if isinstance(c, bytes) else c}


def mask_bbox_xyxy(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight integer box ``(x0, y0, x1, y1)`` (exclusive ``x1, y1``) of a bool mask; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass
class LocalMask:
    """A boolean mask stored inside its bounding box.

    Attributes:
        x0, y0: top-left corner of the stored array in image pixels.
        mask: ``bool [h, w]``; pixel ``(y, x)`` of the image is ``mask[y - y0, x - x0]``.
    """

    x0: int
    y0: int
    mask: np.ndarray

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @classmethod
    def from_full(cls, mask: np.ndarray) -> LocalMask:
        """Crop a full-image ``bool [H, W]`` mask to its tight box (an empty mask gives a 0x0 one)."""
        box = mask_bbox_xyxy(mask)
        if box is None:
            return cls(0, 0, np.zeros((0, 0), dtype=bool))
        x0, y0, x1, y1 = box
        return cls(x0, y0, np.ascontiguousarray(mask[y0:y1, x0:x1]))

    @classmethod
    def from_box(cls, bbox_xywh: tuple[float, float, float, float], height: int, width: int) -> LocalMask:
        """Pixels covered by a COCO ``xywh`` box (floor/ceil to whole pixels, clipped to the image)."""
        x, y, w, h = bbox_xywh
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
        return cls(x0, y0, np.ones((max(0, y1 - y0), max(0, x1 - x0)), dtype=bool))

    def tighten(self) -> None:
        """Shrink the stored array to the tight box of its True pixels (in place)."""
        box = mask_bbox_xyxy(self.mask)
        if box is None:
            self.mask = np.zeros((0, 0), dtype=bool)
            return
        bx0, by0, bx1, by1 = box
        self.mask = np.ascontiguousarray(self.mask[by0:by1, bx0:bx1])
        self.x0 += bx0
        self.y0 += by0

    def bbox_xywh(self) -> list[float]:
        """COCO ``[x, y, w, h]`` of the stored (tight) array."""
        return [float(self.x0), float(self.y0), float(self.mask.shape[1]), float(self.mask.shape[0])]

    def encode(self, height: int, width: int) -> dict[str, Any]:
        """Compressed COCO RLE of this mask in a ``height x width`` image (see :func:`encode_local`)."""
        return encode_local(self.mask, self.x0, self.y0, height, width)

    def to_full(self, height: int, width: int) -> np.ndarray:
        """``bool [height, width]`` image-sized copy."""
        full = np.zeros((height, width), dtype=bool)
        full[self.y0 : self.y1, self.x0 : self.x1] = self.mask
        return full

    def covered_by(self, other: LocalMask) -> int:
        """Number of True pixels of ``self`` that ``other`` also covers."""
        ox0, oy0 = max(self.x0, other.x0), max(self.y0, other.y0)
        ox1, oy1 = min(self.x1, other.x1), min(self.y1, other.y1)
        if ox0 >= ox1 or oy0 >= oy1:
            return 0
        a = self.mask[oy0 - self.y0 : oy1 - self.y0, ox0 - self.x0 : ox1 - self.x0]
        b = other.mask[oy0 - other.y0 : oy1 - other.y0, ox0 - other.x0 : ox1 - other.x0]
        return int(np.count_nonzero(a & b))

    def subtract(self, other: LocalMask) -> bool:
        """Remove ``other``'s pixels from ``self`` (in place); True when something was removed."""
        ox0, oy0 = max(self.x0, other.x0), max(self.y0, other.y0)
        ox1, oy1 = min(self.x1, other.x1), min(self.y1, other.y1)
        if ox0 >= ox1 or oy0 >= oy1:
            return False
        a = self.mask[oy0 - self.y0 : oy1 - self.y0, ox0 - self.x0 : ox1 - self.x0]
        b = other.mask[oy0 - other.y0 : oy1 - other.y0, ox0 - other.x0 : ox1 - other.x0]
        hit = a & b
        if not hit.any():
            return False
        a &= ~b
        return True
