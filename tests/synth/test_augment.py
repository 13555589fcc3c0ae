"""Heavy augmentation: boxes and masks follow the pixels, against hand geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as pcm

from detrkit.synth.augment import AugmentParams, apply_ops, augment_sample, draw_ops, object_masks
from detrkit.synth.masks import encode_mask

H, W = 96, 128


def _scene() -> tuple[np.ndarray, list[dict]]:
    image = np.full((H, W, 3), 40, np.uint8)
    rect = np.zeros((H, W), bool)
    rect[30:50, 40:90] = True  # 50 x 20 rectangle centred at (65, 40)
    image[rect] = (250, 250, 250)
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 1000.0,
            "bbox": [40.0, 30.0, 50.0, 20.0],
            "segmentation": encode_mask(rect),
            "color": [250, 250, 250],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 0,
            "area": 100.0,
            "bbox": [5.0, 70.0, 10.0, 10.0],
            "segmentation": [],
        },
    ]
    return image, anns


def _ops(**kw) -> dict:
    ops = {
        "crop": [0, 0, H, W],
        "flip": False,
        "angle": 0.0,
        "brightness": 1.0,
        "contrast": 1.0,
        "saturation": 1.0,
        "blur_sigma": 0.0,
        "noise_sigma": 0.0,
        "noise_seed": 0,
    }
    ops.update(kw)
    return ops


@pytest.mark.parametrize("angle", [-30.0, -12.5, 20.0, 30.0])
def test_rotation_box_is_the_rotated_rectangle_bounds(angle: float) -> None:
    image, anns = _scene()
    out, masks = apply_ops(image, object_masks(anns, (H, W)), _ops(angle=angle))
    ys, xs = np.nonzero(masks[0])
    # Hand geometry: half extents of a 50x20 rectangle rotated by `angle`, about the image centre.
    a = math.radians(angle)
    hw = 25 * abs(math.cos(a)) + 10 * abs(math.sin(a))
    hh = 25 * abs(math.sin(a)) + 10 * abs(math.cos(a))
    cx, cy = W / 2, H / 2
    dx, dy = 65 - cx, 40 - cy
    # torchvision rotates counter-clockwise for positive angles (image y axis pointing down).
    rx, ry = cx + dx * math.cos(a) + dy * math.sin(a), cy - dx * math.sin(a) + dy * math.cos(a)
    assert abs(xs.min() - (rx - hw)) <= 1.5 and abs(xs.max() + 1 - (rx + hw)) <= 1.5
    assert abs(ys.min() - (ry - hh)) <= 1.5 and abs(ys.max() + 1 - (ry + hh)) <= 1.5
    bright = out.mean(-1) > 145  # the rectangle's pixels, rotated with bilinear interpolation
    assert (masks[0] & bright).sum() / masks[0].sum() > 0.9 and (
        bright & ~masks[0]
    ).sum() / bright.sum() < 0.1


def test_augment_sample_boxes_come_from_masks_and_flip_is_exact() -> None:
    image, anns = _scene()
    out_img, new, _ = augment_sample(
        image,
        anns,
        np.random.default_rng(0),
        AugmentParams(
            attempts=0,
            noise_sigma=0.0,
            blur_prob=0.0,
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            flip_prob=1.0,
        ),
    )
    # attempts=0 -> the fallback: no crop, no rotation, but the drawn flip is dropped too; pixels untouched.
    np.testing.assert_array_equal(out_img, image)
    assert [a["bbox"] for a in new] == [[40.0, 30.0, 50.0, 20.0], [5.0, 70.0, 10.0, 10.0]]
    out, masks = apply_ops(image, object_masks(anns, (H, W)), _ops(flip=True))
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(masks[0], object_masks(anns, (H, W))[0][:, ::-1])


def test_crop_resize_and_dropping_objects_left_out_of_the_frame() -> None:
    image, anns = _scene()
    rng = np.random.default_rng(3)
    for _ in range(20):
        out, new, ops = augment_sample(image, anns, rng, AugmentParams(), required_category=1)
        rect = [a for a in new if a["category_id"] == 1]
        assert len(rect) == 1 and rect[0]["color"] == [250, 250, 250]
        seg = rect[0]["segmentation"]
        mk = pcm.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
        ys, xs = np.nonzero(mk)
        assert rect[0]["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert rect[0]["area"] == mk.sum()
        small = [a for a in new if a["category_id"] == 2]
        if small:  # box-only: no mask in the output, a box inside the frame
            x, y, w, h = small[0]["bbox"]
            assert small[0]["segmentation"] == [] and x >= 0 and y >= 0 and x + w <= W and y + h <= H
        assert set(ops) >= {"crop", "flip", "angle", "noise_seed"}


def test_draw_ops_ranges() -> None:
    rng = np.random.default_rng(0)
    p = AugmentParams()
    for _ in range(50):
        ops = draw_ops(rng, p, (H, W))
        top, left, ch, cw = ops["crop"]
        assert 0.8 * H - 1 <= ch <= 0.95 * H + 1 and top + ch <= H and left + cw <= W
        assert abs(ops["angle"]) <= 30 and 0.7 <= ops["brightness"] <= 1.3
