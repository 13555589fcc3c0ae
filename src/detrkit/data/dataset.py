"""``CocoDetection``: a COCO instances file (plus optional extra files) as a detection dataset.

``ds[i]`` returns ``(image, target)``:

- ``image``: ``uint8 [3, H, W]`` RGB after the transforms (not normalised: batches are normalised
  on the device by :meth:`detrkit.data.collate.Batch.normalized`);
- ``target``: ``{"boxes": float32 [N, 4] cxcywh normalised by the unpadded (W, H),
  "labels": int64 [N] contiguous 0..K-1, "image_id": int, "orig_size": int64 [2] (h, w) from the
  file, "size": int64 [2] (h, w) after the transforms}``.

Crowd annotations (``iscrowd=1``) are left out of targets; evaluation reads them from the JSON.

Bad data never crashes an epoch:

- *bad boxes* are handled once, at construction, by ``on_bad_box``: ``"error"`` raises
  :class:`~detrkit.errors.AnnotationError` naming the file and the first annotation id; ``"drop"``
  removes them; ``"clip"`` clips them to the image and removes those left empty. Annotations with
  an unknown category id count as bad boxes. The counts are in :attr:`CocoDetection.bad_boxes`.
- *bad images* (missing, corrupt, truncated, or not the size the JSON says) make ``ds[i]`` return
  ``None``: the image is skipped, logged once, and counted in :attr:`CocoDetection.skipped` (in
  the process that loaded it). :func:`detrkit.data.collate.collate_detection` drops ``None``
  samples and reports their number as ``Batch.skipped``, which is how the count reaches the main
  process when DataLoader workers are used.

``extra`` adds more ``(annotation file, images dir)`` pairs (e.g. synthetic data). Their category
*names* must be a subset of the main file's; labels follow the main file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from detrkit.boxes import box_xyxy_to_cxcywh
from detrkit.data.check import classify_boxes
from detrkit.data.coco import CocoIndex
from detrkit.data.images import read_image_tensor
from detrkit.data.transforms import make_target
from detrkit.errors import AnnotationError, DataError, ImageError

log = logging.getLogger("detrkit.data")
BadBoxPolicy = Literal["error", "drop", "clip"]
Sample = tuple[Tensor, dict[str, Any]]


class _Record:
    """What ``__getitem__`` needs for one image: boxes xyxy pixels ``float32 [N, 4]``, labels."""

    __slots__ = ("path", "image_id", "width", "height", "boxes_xyxy", "labels")

    def __init__(
        self, path: str, image_id: int, width: int, height: int, boxes: np.ndarray, labels: np.ndarray
    ):
        self.path, self.image_id, self.width, self.height = path, image_id, width, height
        self.boxes_xyxy, self.labels = boxes, labels


def _as_index(ann: CocoIndex | str | Path) -> CocoIndex:
    return ann if isinstance(ann, CocoIndex) else CocoIndex.load(ann)


class CocoDetection(Dataset):
    """Detection dataset over one or more COCO files (see the module docstring for the contract).

    Args:
        ann: annotation file or loaded :class:`CocoIndex` (defines the classes).
        images_dir: folder that ``file_name`` is relative to.
        transforms: a pipeline from :func:`detrkit.data.transforms.build_transforms`, or ``None``.
        on_bad_box: ``"error"``, ``"drop"`` or ``"clip"``.
        extra: more ``(annotation, images_dir)`` pairs appended after the main one.
    """

    def __init__(
        self,
        ann: CocoIndex | str | Path,
        images_dir: str | Path,
        *,
        transforms: Callable[..., Any] | None = None,
        on_bad_box: BadBoxPolicy = "drop",
        extra: Sequence[tuple[CocoIndex | str | Path, str | Path]] = (),
    ) -> None:
        if on_bad_box not in ("error", "drop", "clip"):
            raise ValueError(f"on_bad_box must be 'error', 'drop' or 'clip', got {on_bad_box!r}")
        self.index = _as_index(ann)
        self.transforms = transforms
        self.on_bad_box = on_bad_box
        self.category_ids = self.index.category_ids
        self.class_names = self.index.class_names
        self.cat_id_to_label = self.index.cat_id_to_label
        self.bad_boxes = {"degenerate": 0, "outside": 0, "unknown_category": 0, "clipped": 0}
        self.skipped = 0
        self.skipped_ids: list[int] = []
        self._records: list[_Record] = []
        self._add(self.index, Path(images_dir), None)
        label_of_name = dict(zip(self.class_names, range(len(self.class_names)), strict=True))
        for extra_ann, extra_dir in extra:
            idx = _as_index(extra_ann)
            unknown = [c.name for c in idx.categories if c.name not in label_of_name]
            if unknown:
                raise DataError(
                    f"{idx.source}: categories {unknown[:5]} are not in {self.index.source} "
                    f"(extra annotation files must use the main file's class names)",
                    path=idx.source,
                )
            self._add(idx, Path(extra_dir), {c.id: label_of_name[c.name] for c in idx.categories})

    # ------------------------------------------------------------------ construction
    def _add(self, index: CocoIndex, images_dir: Path, cat_to_label: dict[int, int] | None) -> None:
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: images folder not found", path=images_dir)
        cat_to_label = cat_to_label if cat_to_label is not None else index.cat_id_to_label
        seen: set[int] = set()
        for im in index.images:
            if im.id in seen:
                raise AnnotationError(f"{index.source}: duplicate image id {im.id}", path=index.source)
            seen.add(im.id)
        if index.annotations:
            arr = index.ann_arrays()
            keep = (arr["iscrowd"] == 0) & np.isin(arr["image_id"], np.fromiter(seen, np.int64, len(seen)))
            boxes, img_ids, cat_ids, ann_ids = (
                arr["bbox_xywh"][keep],
                arr["image_id"][keep],
                arr["category_id"][keep],
                arr["id"][keep],
            )
        else:
            boxes, img_ids = np.zeros((0, 4)), np.zeros(0, np.int64)
            cat_ids, ann_ids = np.zeros(0, np.int64), np.zeros(0, np.int64)
        sizes = {im.id: (im.width, im.height) for im in index.images}
        wh = np.array([sizes[int(i)] for i in img_ids], dtype=np.float64).reshape(-1, 2)
        degenerate, outside = classify_boxes(boxes, wh[:, 0], wh[:, 1])
        unknown = ~np.isin(cat_ids, np.fromiter(cat_to_label, np.int64, len(cat_to_label)))
        bad = degenerate | outside | unknown
        if self.on_bad_box == "error" and bad.any():
            k = int(np.flatnonzero(bad)[0])
            why = (
                "unknown category id"
                if unknown[k]
                else "box w/h <= 0"
                if degenerate[k]
                else "box outside image"
            )
            raise AnnotationError(
                f"{index.source}: annotation {ann_ids[k]} (image {img_ids[k]}): {why}, bbox "
                f"{[round(float(v), 2) for v in boxes[k]]}; {int(bad.sum())} bad annotation(s) in total "
                f"(use on_bad_box='drop' or 'clip', see `detrkit data check`)",
                path=index.source,
            )
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        clipped = np.empty_like(xyxy)
        np.clip(xyxy[:, 0::2], 0, wh[:, :1], out=clipped[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, wh[:, 1:], out=clipped[:, 1::2])
        if self.on_bad_box == "clip":
            drop = degenerate | unknown | (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
            self.bad_boxes["clipped"] += int((outside & ~drop).sum())
        else:
            drop = bad
        self.bad_boxes["degenerate"] += int(degenerate.sum())
        self.bad_boxes["outside"] += int((outside & ~unknown).sum())
        self.bad_boxes["unknown_category"] += int(unknown.sum())
        keep = ~drop
        lut = dict(cat_to_label)
        labels = np.array([lut[int(c)] for c in cat_ids[keep]], dtype=np.int64)
        boxes_keep = clipped[keep].astype(np.float32)
        img_keep = img_ids[keep]
        order = np.argsort(img_keep, kind="stable")
        uniq, starts = np.unique(img_keep[order], return_index=True)
        ends = np.append(starts[1:], len(order)) if len(starts) else starts  # no box kept at all
        span = {int(u): (s, e) for u, s, e in zip(uniq, starts, ends, strict=True)}
        root = str(images_dir)
        for im in index.images:
            s, e = span.get(im.id, (0, 0))
            sel = order[s:e]
            self._records.append(
                _Record(f"{root}/{im.file_name}", im.id, im.width, im.height, boxes_keep[sel], labels[sel])
            )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def labels_per_image(self) -> list[np.ndarray]:
        """Contiguous labels ``int64 [N_i]`` of every image, in dataset order (for samplers)."""
        return [r.labels for r in self._records]

    def image_path(self, i: int) -> Path:
        return Path(self._records[i].path)

    def _skip(self, rec: _Record, reason: str) -> None:
        self.skipped += 1
        self.skipped_ids.append(rec.image_id)
        log.warning("skipping image %s: %s", rec.image_id, reason)

    def __getitem__(self, i: int) -> Sample | None:
        rec = self._records[i]
        try:
            img = read_image_tensor(rec.path)
        except ImageError as err:
            self._skip(rec, str(err))
            return None
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if (w, h) != (rec.width, rec.height):
            self._skip(rec, f"{rec.path} is {w}x{h} but the annotation file says {rec.width}x{rec.height}")
            return None
        boxes = torch.from_numpy(rec.boxes_xyxy)
        labels = torch.from_numpy(rec.labels)
        if self.transforms is not None:
            image, target = self.transforms(tv_tensors.Image(img), make_target(boxes, labels, (h, w)))
            img = image.as_subclass(Tensor)
            boxes = target["boxes"].as_subclass(Tensor)
            labels = target["labels"]
            h, w = int(img.shape[-2]), int(img.shape[-1])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        return img, {
            "boxes": box_xyxy_to_cxcywh(boxes.to(torch.float32)) / scale,
            "labels": labels,
            "image_id": rec.image_id,
            "orig_size": torch.tensor([rec.height, rec.width], dtype=torch.int64),
            "size": torch.tensor([h, w], dtype=torch.int64),
        }
