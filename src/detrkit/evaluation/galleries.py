"""Galleries: for each class, the worst false positives and the worst misses, drawn on the image.

Worst false positive: the highest-scoring prediction of the class that is not a true positive
(one per image). Worst miss: the largest GT of the class that no prediction matched (one per
image). Each tile is a crop around the offending box (outlined in yellow), with some context,
resized so that boxes and labels are legible; GT is green and predictions are red
(``draw_detections``), and only predictions above the report's confidence threshold are drawn,
plus the offending one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detrkit.data.images import load_image_rgb
from detrkit.errors import ImageError
from detrkit.evaluation.detections import DetectionData
from detrkit.evaluation.errors import DT_KIND_NAMES, GT_FN_CLS, GT_FN_LOC, GT_MISSED, TP, ErrorAnalysis

GT_KIND_NAMES = {GT_MISSED: "missed", GT_FN_LOC: "poorly localised", GT_FN_CLS: "wrong class"}


@dataclass(frozen=True)
class Tile:
    """One gallery tile: PNG bytes and a caption."""

    png: bytes
    caption: str
    image_file: str


@dataclass(frozen=True)
class ClassGallery:
    class_name: str
    false_positives: list[Tile]
    misses: list[Tile]
    skipped: int  # tiles whose image could not be read


def _one_per_image(rows: np.ndarray, images: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``rows`` (already in priority order) with distinct images."""
    _, first = np.unique(images, return_index=True)
    return rows[np.sort(first)][:n]


def worst_false_positives(data: DetectionData, errors: ErrorAnalysis, label: int, n: int) -> np.ndarray:
    """Prediction rows: the ``n`` highest-scoring non-TP predictions of ``label``, distinct images."""
    rows = np.flatnonzero((data.dt_label == label) & (errors.dt_kind > TP) & ~errors.dt_ignored)
    rows = rows[np.argsort(-data.dt_score[rows], kind="stable")]
    return _one_per_image(rows, data.dt_image[rows], n)


def worst_misses(data: DetectionData, errors: ErrorAnalysis, label: int, n: int) -> np.ndarray:
    """GT rows: the ``n`` largest unmatched GT of ``label``, distinct images."""
    rows = np.flatnonzero((data.gt_label == label) & (errors.gt_kind >= GT_MISSED))
    rows = rows[np.argsort(-data.gt_area[rows], kind="stable")]
    return _one_per_image(rows, data.gt_image[rows], n)


def _xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    return np.c_[boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]]


def render_tile(
    image: Image.Image,
    data: DetectionData,
    image_index: int,
    focus_xywh: np.ndarray,
    *,
    focus_dt: int | None,
    score_thresh: float,
    tile_size: int = 320,
    work_size: int = 200,
) -> bytes:
    """Crop around ``focus_xywh`` (with context), draw GT and predictions, return PNG bytes.

    The crop is drawn at ``work_size`` px and enlarged to ``tile_size`` px, so labels end up about
    13 px high whatever the image size; the box in question gets a yellow outline.
    """
    x, y, w, h = (float(v) for v in focus_xywh)
    side = max(w, h) * 2.0 + 48
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = max(0.0, cx - side / 2), max(0.0, cy - side / 2)
    x1, y1 = min(float(image.width), cx + side / 2), min(float(image.height), cy + side / 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        x0, y0, x1, y1 = 0.0, 0.0, float(image.width), float(image.height)
    crop = image.crop((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))
    scale = work_size / max(crop.width, crop.height)
    crop = crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR
    )
    offset = np.array([int(x0), int(y0), int(x0), int(y0)], dtype=np.float64)

    def to_tile(xyxy: np.ndarray) -> np.ndarray:
        return (xyxy - offset) * scale

    g = np.flatnonzero((data.gt_image == image_index) & ~data.gt_crowd)
    d = np.flatnonzero((data.dt_image == image_index) & (data.dt_score >= score_thresh))
    if focus_dt is not None and focus_dt not in d:
        d = np.r_[d, focus_dt]
    from detrkit.data.visualize import draw_detections  # the one drawing style of the package

    drawn = draw_detections(
        crop,
        gt_boxes_xyxy=to_tile(_xyxy(data.gt_boxes_xywh[g])),
        gt_labels=data.gt_label[g],
        pred_boxes_xyxy=to_tile(_xyxy(data.dt_boxes_xywh[d])),
        pred_labels=data.dt_label[d],
        pred_scores=data.dt_score[d],
        class_names=data.class_names,
    )
    up = tile_size / work_size
    drawn = drawn.resize((round(drawn.width * up), round(drawn.height * up)), Image.LANCZOS)
    fx0, fy0, fx1, fy1 = (to_tile(_xyxy(np.asarray([focus_xywh], dtype=np.float64)))[0] * up).tolist()
    ImageDraw.Draw(drawn).rectangle((fx0 - 4, fy0 - 4, fx1 + 4, fy1 + 4), outline=(255, 200, 0), width=2)
    buf = io.BytesIO()
    drawn.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def build_galleries(
    data: DetectionData,
    errors: ErrorAnalysis,
    images_dir: str | Path,
    *,
    per_class: int = 3,
    score_thresh: float = 0.3,
    tile_size: int = 320,
) -> list[ClassGallery]:
    """Tiles of the worst false positives and misses of every class (images read from ``images_dir``)."""
    images_dir = Path(images_dir)
    cache: dict[int, Image.Image | None] = {}

    def image(i: int) -> Image.Image | None:
        if i not in cache:
            try:
                cache[i] = load_image_rgb(images_dir / data.image_files[i])
            except ImageError:
                cache[i] = None
        return cache[i]

    out = []
    for label, name in enumerate(data.class_names):
        fps, misses, skipped = [], [], 0
        for row in worst_false_positives(data, errors, label, per_class):
            img_i = int(data.dt_image[row])
            im = image(img_i)
            if im is None:
                skipped += 1
                continue
            kind = DT_KIND_NAMES[int(errors.dt_kind[row])]
            png = render_tile(
                im,
                data,
                img_i,
                data.dt_boxes_xywh[row],
                focus_dt=int(row),
                score_thresh=score_thresh,
                tile_size=tile_size,
            )
            caption = f"{data.image_files[img_i]} · {kind} error · score {data.dt_score[row]:.2f}"
            fps.append(Tile(png=png, caption=caption, image_file=data.image_files[img_i]))
        for row in worst_misses(data, errors, label, per_class):
            img_i = int(data.gt_image[row])
            im = image(img_i)
            if im is None:
                skipped += 1
                continue
            png = render_tile(
                im,
                data,
                img_i,
                data.gt_boxes_xywh[row],
                focus_dt=None,
                score_thresh=score_thresh,
                tile_size=tile_size,
            )
            w, h = data.gt_boxes_xywh[row, 2:]
            caption = (
                f"{data.image_files[img_i]} · {GT_KIND_NAMES[int(errors.gt_kind[row])]} · {w:.0f}×{h:.0f} px"
            )
            misses.append(Tile(png=png, caption=caption, image_file=data.image_files[img_i]))
        out.append(ClassGallery(class_name=name, false_positives=fps, misses=misses, skipped=skipped))
        cache.clear()
    return out
