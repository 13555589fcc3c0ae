"""A bank of object instances cut from real training images, for copy-paste (offline and online).

``InstanceBank.from_coco(index, images_dir, category_ids=[...])`` reads every image that holds an
instance of the chosen classes once and keeps, per class, the instances' pixels (their box) and
masks (decoded from polygons/RLE; an all-True box for box-only annotations, pasted as a soft-edged
box crop). Crowd annotations and instances under ``min_area`` pixels are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detrkit.data.coco import Annotation, CocoIndex, ImageInfo
from detrkit.data.images import load_image_rgb
from detrkit.errors import DataError
from detrkit.synth.copy_paste import Instance
from detrkit.synth.masks import decode_segmentation, has_segmentation


def ann_to_dict(ann: Annotation) -> dict[str, Any]:
    """A :class:`~detrkit.data.coco.Annotation` as a plain COCO annotation dict."""
    d: dict[str, Any] = {
        "id": ann.id,
        "image_id": ann.image_id,
        "category_id": ann.category_id,
        "bbox": [float(v) for v in ann.bbox_xywh],
        "area": float(ann.area),
        "iscrowd": int(ann.iscrowd),
        "segmentation": ann.segmentation if ann.segmentation is not None else [],
    }
    d.update(ann.extra)
    return d


def load_rgb_array(images_dir: str | Path, info: ImageInfo) -> np.ndarray:
    """``uint8 [H, W, 3]`` writable copy of an image; raises :class:`DataError` if its size is not
    the one the annotation file records (masks would not line up)."""
    path = Path(images_dir) / info.file_name
    array = np.array(load_image_rgb(path))
    if array.shape[:2] != (info.height, info.width):
        raise DataError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]} "
            f"but the annotations say {info.width}x{info.height}",
            path=path,
        )
    return array


def cut_instance(image: np.ndarray, ann: dict[str, Any], min_area: int = 0) -> Instance | None:
    """Cut one annotation's pixels and mask out of ``uint8 [H, W, 3]`` (None when empty/too small)."""
    height, width = image.shape[:2]
    x, y, w, h = ann["bbox"]
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    with_mask = has_segmentation(ann.get("segmentation"))
    if with_mask:
        mask = decode_segmentation(ann["segmentation"], height, width)[y0:y1, x0:x1]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            return None
        ry0, ry1, rx0, rx1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        mask = np.ascontiguousarray(mask[ry0:ry1, rx0:rx1])
        x0, y0, x1, y1 = x0 + rx0, y0 + ry0, x0 + rx1, y0 + ry1
    else:
        mask = np.ones((y1 - y0, x1 - x0), dtype=bool)
    if int(mask.sum()) < min_area:
        return None
    return Instance(
        rgb=np.ascontiguousarray(image[y0:y1, x0:x1]),
        mask=mask,
        category_id=int(ann["category_id"]),
        has_mask=with_mask,
        source_image_id=int(ann.get("image_id", -1)),
        source_ann_id=int(ann.get("id", -1)),
    )


@dataclass
class InstanceBank:
    """Instances per COCO category id, to paste."""

    by_category: dict[int, list[Instance]] = field(default_factory=dict)

    @classmethod
    def from_coco(
        cls,
        index: CocoIndex,
        images_dir: str | Path,
        *,
        category_ids: Iterable[int],
        min_area: int = 64,
        max_per_class: int | None = None,
        seed: int = 0,
    ) -> InstanceBank:
        """Cut the instances of ``category_ids`` from the images of ``index``.

        Args:
            index: annotations whose instances to cut.
            images_dir: folder the ``file_name`` entries are relative to.
            category_ids: COCO category ids to collect.
            min_area: instances with fewer mask pixels are skipped.
            max_per_class: keep at most this many instances per class (a seeded random subset).
            seed: seed of that subset.
        """
        wanted = set(int(c) for c in category_ids)
        chosen: dict[int, list[Annotation]] = defaultdict(list)
        for a in index.annotations:
            if a.category_id in wanted and not a.iscrowd:
                chosen[a.category_id].append(a)
        rng = np.random.default_rng(seed)
        keep: list[Annotation] = []
        for cid in sorted(chosen):
            anns = chosen[cid]
            if max_per_class is not None and len(anns) > max_per_class:
                anns = [anns[i] for i in sorted(rng.choice(len(anns), max_per_class, replace=False))]
            keep.extend(anns)
        per_image: dict[int, list[Annotation]] = defaultdict(list)
        for a in keep:
            per_image[a.image_id].append(a)
        infos = index.image_by_id()
        bank = cls({cid: [] for cid in sorted(wanted)})
        for image_id, anns in per_image.items():
            if image_id not in infos:
                continue
            image = load_rgb_array(images_dir, infos[image_id])
            for a in anns:
                inst = cut_instance(image, ann_to_dict(a), min_area)
                if inst is not None:
                    bank.by_category[a.category_id].append(inst)
        return bank

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_category.values())

    def counts(self) -> dict[int, int]:
        """Instances per category id."""
        return {cid: len(v) for cid, v in self.by_category.items()}

    def sample(
        self, category_id: int, rng: np.random.Generator, *, avoid_image_id: int | None = None
    ) -> Instance:
        """A random instance of ``category_id``, preferring ones not cut from ``avoid_image_id``."""
        pool = self.by_category.get(category_id) or []
        if not pool:
            raise KeyError(f"no instances of category {category_id} in the bank")
        for _ in range(4):
            inst = pool[int(rng.integers(len(pool)))]
            if inst.source_image_id != avoid_image_id:
                return inst
        return inst
