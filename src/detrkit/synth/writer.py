"""Writes a synthetic dataset: images, a COCO file, per-image metadata and a grid of samples.

Layout of ``out/``::

    images/<class>_<n>.jpg      the synthetic images (``.png`` with ``image_format="png"``)
    annotations.json            COCO instances; same categories as the source file; image and
                                annotation ids start above the source's largest ids, so the file can
                                be trained on next to the source (``data.extra``) without clashes
    metadata.json               {"method", "params", "source", "images": [{file_name, class, ...}]}
    samples.png                 a grid of up to ``grid_size`` samples with their boxes drawn

``file_name`` entries are relative to ``out/images``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detrkit.data.coco import CocoIndex

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


@dataclass
class SynthSample:
    """One synthetic image.

    Attributes:
        image: ``uint8 [H, W, 3]`` RGB.
        annotations: COCO annotations without ``id``/``image_id`` (``bbox`` xywh pixels).
        class_name: the rare class this image was made for.
        meta: JSON-ready method details (source image, parameters, pastes, prompt...).
        new: indices of the annotations the method added (pasted or generated); None: those of
            ``class_name``'s category (augment). The quality filter checks these.
    """

    image: np.ndarray
    annotations: list[dict[str, Any]]
    class_name: str
    meta: dict[str, Any] = field(default_factory=dict)
    new: list[int] | None = None


class SynthWriter:
    """Accumulates :class:`SynthSample` s into ``out_dir`` (see the module docstring)."""

    def __init__(
        self,
        out_dir: str | Path,
        source: CocoIndex,
        *,
        method: str,
        params: dict[str, Any],
        image_format: str = "jpg",
        jpeg_quality: int = 95,
        grid_size: int = 16,
    ) -> None:
        if image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
        self.out_dir = Path(out_dir)
        self.images_dir = self.out_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.method = method
        self.params = params
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.grid_size = grid_size
        self._next_image_id = max((im.id for im in source.images), default=0) + 1
        self._next_ann_id = max((a.id for a in source.annotations), default=0) + 1
        self._images: list[dict[str, Any]] = []
        self._anns: list[dict[str, Any]] = []
        self._meta: list[dict[str, Any]] = []
        self._per_class: dict[str, int] = {}
        self._grid: list[Image.Image] = []
        self._names = {c.id: c.name for c in source.categories}

    def add(self, sample: SynthSample) -> str:
        """Write one image and record its annotations; returns its file name."""
        n = self._per_class.get(sample.class_name, 0)
        self._per_class[sample.class_name] = n + 1
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in sample.class_name)
        file_name = f"{safe}_{n:05d}.{self.image_format}"
        pil = Image.fromarray(sample.image)
        if self.image_format == "jpg":
            pil.save(self.images_dir / file_name, quality=self.jpeg_quality)
        else:
            pil.save(self.images_dir / file_name, compress_level=1)
        image_id = self._next_image_id
        self._next_image_id += 1
        h, w = sample.image.shape[:2]
        self._images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for ann in sample.annotations:
            self._anns.append({"id": self._next_ann_id, "image_id": image_id, **ann})
            self._next_ann_id += 1
        self._meta.append(
            {"file_name": file_name, "image_id": image_id, "class": sample.class_name, **sample.meta}
        )
        if self._wants_grid_sample(sample.class_name):
            self._grid.append(self._thumbnail(pil, sample.annotations))
        return file_name

    def _wants_grid_sample(self, class_name: str) -> bool:
        if len(self._grid) >= self.grid_size:
            return False
        # Up to an even share per class, so every class shows in the grid.
        share = max(1, self.grid_size // max(1, len(self.params.get("classes", []))))
        return self._per_class[class_name] <= share

    def _thumbnail(self, pil: Image.Image, anns: list[dict[str, Any]], side: int = 256) -> Image.Image:
        scale = side / max(pil.size)
        thumb = pil.resize(
            (max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR
        )
        draw = ImageDraw.Draw(thumb)
        for ann in anns:
            x, y, w, h = (v * scale for v in ann["bbox"])
            colour = _PALETTE[ann["category_id"] % len(_PALETTE)]
            draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
            draw.text(
                (x + 2, y + 1), self._names.get(ann["category_id"], str(ann["category_id"])), fill=colour
            )
        canvas = Image.new("RGB", (side, side), (32, 32, 32))
        canvas.paste(thumb, (0, 0))
        return canvas

    def finish(self, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``annotations.json``, ``metadata.json`` (plus ``extra_meta`` keys, e.g. the quality
        filter's counts) and ``samples.png``; returns a summary."""
        coco = {
            "info": {"description": f"detrkit synth ({self.method})"},
            "images": self._images,
            "annotations": self._anns,
            "categories": [
                {"id": c.id, "name": c.name, "supercategory": c.supercategory, **c.extra}
                for c in self.source.categories
            ],
        }
        ann_path = self.out_dir / "annotations.json"
        ann_path.write_text(json.dumps(coco, separators=(",", ":")))
        meta = {
            "method": self.method,
            "params": self.params,
            "source": str(self.source.source) if self.source.source is not None else None,
            **(extra_meta or {}),
            "images": self._meta,
        }
        (self.out_dir / "metadata.json").write_text(json.dumps(meta, indent=1))
        grid_path = self.out_dir / "samples.png"
        if self._grid:
            cols = math.ceil(math.sqrt(len(self._grid)))
            rows = math.ceil(len(self._grid) / cols)
            side = self._grid[0].width
            grid = Image.new("RGB", (cols * side, rows * side), (0, 0, 0))
            for i, tile in enumerate(self._grid):
                grid.paste(tile, ((i % cols) * side, (i // cols) * side))
            grid.save(grid_path, compress_level=1)
        return {
            "out": str(self.out_dir),
            "annotations": str(ann_path),
            "images": len(self._images),
            "instances": len(self._anns),
            "per_class": dict(self._per_class),
            "samples": str(grid_path) if self._grid else None,
        }
