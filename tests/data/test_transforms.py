"""Transform presets: boxes after flip, resize and crop against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from detrkit.data.transforms import (
    DETR_SCALES,
    RandomSizeCrop,
    build_transforms,
    make_target,
    normalize_uint8,
)


def _sample(w: int, h: int, boxes: list[list[float]], labels: list[int] | None = None):
    img = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    lbl = torch.tensor(labels if labels is not None else list(range(len(boxes))), dtype=torch.int64)
    return img, make_target(torch.tensor(boxes, dtype=torch.float32), lbl, (h, w))


def test_flip_of_known_box() -> None:
    # light preset on a square image of its own frame size: no rescale, no crop, only the flip.
    t = build_transforms("light", train=True, size=96, flip_prob=1.0, scale_range=(1.0, 1.0))
    img, target = _sample(96, 96, [[10, 20, 30, 60]])
    out_img, out = t(img, target)
    assert tuple(out_img.shape) == (3, 96, 96)
    # x' = W - x: [96 - 30, 20, 96 - 10, 60]
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[66.0, 20, 86, 60]]))


def test_val_resize_by_known_factor() -> None:
    t = build_transforms("val", train=False, size=32, max_size=1000)
    img, target = _sample(96, 64, [[10, 8, 30, 24]])
    out_img, out = t(img, target)
    assert tuple(out_img.shape) == (3, 32, 48)  # shorter side 64 -> 32: factor 0.5
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[5.0, 4, 15, 12]]))


def test_val_resize_capped_by_max_size() -> None:
    t = build_transforms("val", train=False, size=64, max_size=80)
    img, target = _sample(200, 100, [[50, 25, 100, 75]])
    out_img, out = t(img, target)
    assert tuple(out_img.shape) == (3, 40, 80)  # 64/100 would make it 128 wide > 80: factor 0.4
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[20.0, 10, 40, 30]]))


def test_random_size_crop_shifts_clips_and_drops_boxes() -> None:
    boxes = [[2, 2, 12, 12], [30, 30, 70, 60], [80, 5, 98, 40], [45, 70, 55, 78]]
    pipeline = v2.Compose([RandomSizeCrop(30, 50), v2.SanitizeBoundingBoxes(min_size=1)])
    dropped_somewhere = False
    for seed in range(20):
        img, target = _sample(100, 80, boxes)
        torch.manual_seed(seed)
        p = RandomSizeCrop(30, 50).make_params([img])
        torch.manual_seed(seed)
        out_img, out = pipeline(img, target)
        assert 30 <= p["width"] <= 50 and 30 <= p["height"] <= 50
        assert tuple(out_img.shape) == (3, p["height"], p["width"])
        torch.testing.assert_close(
            out_img, img[:, p["top"] : p["top"] + p["height"], p["left"] : p["left"] + p["width"]]
        )
        expected, labels = [], []
        for k, (x0, y0, x1, y1) in enumerate(boxes):  # by hand: shift, clip to the window
            bx0, bx1 = (min(max(v - p["left"], 0), p["width"]) for v in (x0, x1))
            by0, by1 = (min(max(v - p["top"], 0), p["height"]) for v in (y0, y1))
            if bx1 - bx0 >= 1 and by1 - by0 >= 1:
                expected.append([bx0, by0, bx1, by1])
                labels.append(k)
        dropped_somewhere |= len(labels) < len(boxes)
        torch.testing.assert_close(
            out["boxes"].as_subclass(torch.Tensor), torch.tensor(expected, dtype=torch.float32).reshape(-1, 4)
        )
        assert out["labels"].tolist() == labels
    assert dropped_somewhere


def test_detr_train_preset_sizes_and_boxes() -> None:
    t = build_transforms("detr", train=True, size=256)
    scales = [round(s * 256 / 800) for s in DETR_SCALES]
    max_size = round(1333 * 256 / 800)
    torch.manual_seed(0)
    for _ in range(12):
        img, target = _sample(200, 120, [[10, 10, 190, 110], [50, 40, 60, 50]])
        out_img, out = t(img, target)
        h, w = out_img.shape[-2:]
        assert max(h, w) <= max_size
        assert any(abs(min(h, w) - s) <= 1 for s in scales) or max(h, w) >= max_size - 1
        b = out["boxes"].as_subclass(torch.Tensor)
        assert len(b) == len(out["labels"]) >= 1  # the large box always survives some part
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_detr_eval_preset_default_size() -> None:
    t = build_transforms("detr", train=False)
    out_img, _ = t(*_sample(128, 96, [[1, 1, 5, 5]]))
    # shorter 96 -> 800; longer int(128 * 800 / 96) = int(1066.7) = 1066 (< 1333), as DETR truncates
    assert tuple(out_img.shape[-2:]) == (800, 1066)


def test_light_preset_colour_jitter_can_be_turned_off() -> None:
    # No flip, no rescale, no colour jitter: the image comes back unchanged; with jitter it does not.
    img, target = _sample(64, 64, [[10, 20, 30, 60]])
    plain = build_transforms(
        "light", train=True, size=64, flip_prob=0.0, scale_range=(1.0, 1.0), color_jitter=0.0, hue=0.0
    )
    assert torch.equal(plain(img, target)[0], img)
    torch.manual_seed(0)
    jitter = build_transforms("light", train=True, size=64, flip_prob=0.0, scale_range=(1.0, 1.0))
    assert not torch.equal(jitter(img, target)[0], img)


def test_light_preset_is_fixed_size() -> None:
    t = build_transforms("light", train=True, size=64)
    torch.manual_seed(0)
    for w, h in ((100, 40), (50, 90), (64, 64)):
        out_img, out = t(*_sample(w, h, [[5, 5, 30, 30]]))
        assert tuple(out_img.shape) == (3, 64, 64)
    ev = build_transforms("light", train=False, size=64)
    assert tuple(ev(*_sample(100, 40, [[5, 5, 30, 30]]))[0].shape) == (3, 25, 64)  # longer side -> 64


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown transform preset 'yolo'"):
        build_transforms("yolo", train=True)


def test_normalize_uint8_matches_torchvision() -> None:
    img = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    ref = v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(
        v2.ToDtype(torch.float32, scale=True)(img)
    )
    torch.testing.assert_close(normalize_uint8(img), ref, atol=1e-5, rtol=1e-5)
