"""Draw ground truth and predicted boxes on an image.

Ground truth is green, predictions are red; each box gets a label (class name, plus the score for
predictions) in white text on a filled background of the box colour. Line width and font size
scale with the image (legible from 64 px thumbnails to 4000 px photos). Boxes are ``xyxy`` in
pixels of the image as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GT_COLOR: tuple[int, int, int] = (0, 200, 0)
PRED_COLOR: tuple[int, int, int] = (230, 0, 0)
TEXT_COLOR: tuple[int, int, int] = (255, 255, 255)

BoxesLike = Sequence[Sequence[float]] | np.ndarray | object  # also a torch.Tensor [N, 4]


def _as_array(x: object | None, cols: int | None) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    arr = np.asarray(x, dtype=np.float64)
    if cols is not None:
        arr = arr.reshape(-1, cols)
    return arr.reshape(-1) if cols is None else arr


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable font of ``size`` px: DejaVu Sans when available, else Pillow's built-in one."""
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def style_for(width: int, height: int) -> tuple[int, int]:
    """``(line_width, font_size)`` in pixels for an image of ``width`` x ``height``."""
    side = max(min(width, height), 1)
    return max(1, round(side / 300)), max(8, round(side / 40))


def draw_detections(
    image: Image.Image,
    *,
    gt_boxes_xyxy: BoxesLike | None = None,
    gt_labels: Sequence[int] | np.ndarray | object | None = None,
    pred_boxes_xyxy: BoxesLike | None = None,
    pred_labels: Sequence[int] | np.ndarray | object | None = None,
    pred_scores: Sequence[float] | np.ndarray | object | None = None,
    class_names: Sequence[str],
) -> Image.Image:
    """Return a copy of ``image`` (RGB) with GT boxes in green and predicted boxes in red.

    Args:
        image: any PIL image (converted to RGB; the input is not modified).
        gt_boxes_xyxy: ``[N, 4]`` xyxy pixels (list, numpy array or tensor) or None.
        gt_labels: ``[N]`` contiguous labels indexing ``class_names`` (None: no text).
        pred_boxes_xyxy: ``[M, 4]`` xyxy pixels or None.
        pred_labels: ``[M]`` contiguous labels (None: only scores are written).
        pred_scores: ``[M]`` scores in [0, 1] (None: only class names are written).
        class_names: name of each contiguous label; an out-of-range label is written as its number.
    Returns:
        A new RGB image of the same size.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    line, font_size = style_for(*out.size)
    font = _font(font_size)

    def name(label: float) -> str:
        i = int(label)
        return class_names[i] if 0 <= i < len(class_names) else str(i)

    gt = _as_array(gt_boxes_xyxy, 4)
    if gt is not None:
        labels = _as_array(gt_labels, None)
        for i, b in enumerate(gt):
            text = name(labels[i]) if labels is not None else None
            _draw_box(draw, b, GT_COLOR, line, text, font, out.size, below=True)
    pred = _as_array(pred_boxes_xyxy, 4)
    if pred is not None:
        labels = _as_array(pred_labels, None)
        scores = _as_array(pred_scores, None)
        # draw low scores first so that the most confident boxes end up on top
        order = np.argsort(scores, kind="stable") if scores is not None else np.arange(len(pred))
        for i in order:
            parts = []
            if labels is not None:
                parts.append(name(labels[i]))
            if scores is not None:
                parts.append(f"{scores[i]:.2f}")
            _draw_box(draw, pred[i], PRED_COLOR, line, " ".join(parts) or None, font, out.size, below=False)
    return out


def _draw_box(
    draw: ImageDraw.ImageDraw,
    box: np.ndarray,
    colour: tuple[int, int, int],
    line: int,
    text: str | None,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    size: tuple[int, int],
    *,
    below: bool,
) -> None:
    """One rectangle and its label; the label sits above the box (``below``: inside its bottom)
    and is kept inside the image."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        return
    x0, x1 = sorted((min(max(x0, 0), w - 1), min(max(x1, 0), w - 1)))
    y0, y1 = sorted((min(max(y0, 0), h - 1), min(max(y1, 0), h - 1)))
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
    if not text:
        return
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = max(1, th // 5)
    bw, bh = tw + 2 * pad, th + 2 * pad
    tx = min(max(x0, 0), max(w - bw, 0))
    ty = y1 - bh if below else y0 - bh
    if ty < 0:
        ty = y0  # no room above: put the label inside the top of the box
    ty = min(max(ty, 0), max(h - bh, 0))
    draw.rectangle([tx, ty, tx + bw, ty + bh], fill=colour)
    draw.text((tx + pad - left, ty + pad - top), text, fill=TEXT_COLOR, font=font)
