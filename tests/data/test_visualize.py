"""draw_detections: colours where the boxes are, legible labels at any image size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detrkit.data.visualize import GT_COLOR, PRED_COLOR, draw_detections, style_for


def _is(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(colour)).max() <= 2)


def test_gt_green_pred_red_at_box_edges() -> None:
    image = Image.new("RGB", (200, 160), (90, 90, 90))
    out = draw_detections(
        image,
        gt_boxes_xyxy=[[20, 30, 90, 120]],
        gt_labels=[0],
        pred_boxes_xyxy=torch.tensor([[110.0, 40.0, 180.0, 140.0]]),
        pred_labels=torch.tensor([1]),
        pred_scores=torch.tensor([0.87]),
        class_names=["cat", "dog"],
    )
    px = np.asarray(out)
    assert out.size == image.size and out is not image
    assert np.asarray(image)[35, 20].tolist() == [90, 90, 90]  # the input is not modified
    assert _is(px[60, 20], GT_COLOR) and _is(px[60, 90], GT_COLOR)  # left/right edges of the GT box
    assert _is(px[80, 110], PRED_COLOR) and _is(px[80, 180], PRED_COLOR)
    assert _is(px[100, 55], (90, 90, 90))  # inside the GT box stays untouched below the label
    assert _is(px[5, 5], (90, 90, 90))
    # labels: filled background of the box colour with white text
    red_label = px[max(40 - 20, 0) : 40, 110:180]
    assert (np.abs(red_label.astype(int) - PRED_COLOR).max(axis=-1) <= 2).sum() > 50
    assert (red_label.min(axis=-1) > 200).sum() > 5  # white glyph pixels


@pytest.mark.parametrize("side", [64, 4000])
def test_small_and_huge_images(side: int) -> None:
    image = Image.new("L", (side, side * 3 // 4), 128)
    s = side / 100
    out = draw_detections(
        image,
        pred_boxes_xyxy=np.array([[10 * s, 10 * s, 60 * s, 50 * s], [-5, -5, 2 * side, 2 * side]]),
        pred_labels=[0, 5],  # 5: out of range -> drawn as its number
        pred_scores=[0.5, 0.9],
        gt_boxes_xyxy=np.zeros((0, 4)),
        class_names=["thing"],
    )
    assert out.mode == "RGB" and out.size == image.size
    line, font = style_for(*out.size)
    assert (line, font) == ((1, 8) if side == 64 else (10, 75))
    px = np.asarray(out)
    red = (np.abs(px.astype(int) - PRED_COLOR).max(axis=-1) <= 2).sum()
    assert red > (20 if side == 64 else 20000)


def test_nothing_to_draw_returns_copy() -> None:
    image = Image.new("RGB", (50, 40), (1, 2, 3))
    out = draw_detections(image, class_names=[])
    assert out.tobytes() == image.tobytes()
