"""Heavy, box-correct augmentation of real images that contain a rare class.

The recipe our users ran by hand (crop 80-95% and resize back, horizontal flip, rotation up to
30 degrees, brightness/contrast/saturation jitter, Gaussian blur, Gaussian noise), on
``torchvision.transforms.v2`` kernels applied to a ``tv_tensors.Image`` and the objects'
``tv_tensors.Mask`` stack. Every random parameter is drawn from a seeded numpy generator and saved
in the image's metadata, so a sample can be reproduced exactly.

Boxes are recomputed from the transformed masks (``masks_to_boxes``): after a rotation this gives the
tight box of the object, not the loose box of the rotated box's corners. A box-only object uses its
box as its mask (so it gets the rotated box's bounds, clipped to what stays in the frame). Objects
that keep less than ``min_visible`` of their (rescaled) area in the frame are dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from detrkit.synth.masks import decode_segmentation, encode_mask, has_segmentation


@dataclass(frozen=True)
class AugmentParams:
    """Ranges of the heavy augmentation (all sampled uniformly)."""

    crop_side: tuple[float, float] = (0.8, 0.95)
    flip_prob: float = 0.5
    rotation: float = 30.0
    brightness: float = 0.3
    contrast: float = 0.2
    saturation: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_sigma: float = 5.0
    min_visible: float = 0.3
    attempts: int = 5


def draw_ops(rng: np.random.Generator, params: AugmentParams, hw: tuple[int, int]) -> dict[str, Any]:
    """Draw one set of augmentation parameters for an image of size ``hw`` (JSON-ready)."""
    h, w = hw
    side = float(rng.uniform(*params.crop_side))
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    return {
        "crop": [int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw],
        "flip": bool(rng.random() < params.flip_prob),
        "angle": round(float(rng.uniform(-params.rotation, params.rotation)), 3),
        "brightness": round(float(rng.uniform(1 - params.brightness, 1 + params.brightness)), 4),
        "contrast": round(float(rng.uniform(1 - params.contrast, 1 + params.contrast)), 4),
        "saturation": round(float(rng.uniform(1 - params.saturation, 1 + params.saturation)), 4),
        "blur_sigma": round(float(rng.uniform(*params.blur_sigma)), 3)
        if rng.random() < params.blur_prob
        else 0.0,
        "noise_sigma": params.noise_sigma,
        "noise_seed": int(rng.integers(2**31)),
    }


def apply_ops(image: np.ndarray, masks: np.ndarray, ops: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``ops`` to ``uint8 [H, W, 3]`` and ``bool [N, H, W]``; returns the same shapes and types.

    Geometry (crop+resize back, flip, rotation about the centre) goes to both; photometric ops
    (jitter, blur, noise) to the image only. The corners a rotation uncovers are filled with the
    image's mean colour.
    """
    h, w = image.shape[:2]
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8)))
    top, left, ch, cw = ops["crop"]
    img = F.resized_crop(
        img, top, left, ch, cw, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    msk = F.resized_crop(msk, top, left, ch, cw, [h, w], interpolation=InterpolationMode.NEAREST)
    if ops["flip"]:
        img, msk = F.horizontal_flip(img), F.horizontal_flip(msk)
    if ops["angle"]:
        fill = [float(v) for v in img.float().mean(dim=(1, 2))]
        img = F.rotate(img, ops["angle"], interpolation=InterpolationMode.BILINEAR, fill=fill)
        msk = F.rotate(msk, ops["angle"], interpolation=InterpolationMode.NEAREST, fill=0)
    img = F.adjust_brightness(img, ops["brightness"])
    img = F.adjust_contrast(img, ops["contrast"])
    img = F.adjust_saturation(img, ops["saturation"])
    if ops["blur_sigma"] > 0:
        k = 2 * math.ceil(3 * ops["blur_sigma"]) + 1
        img = F.gaussian_blur(img, [k, k], [ops["blur_sigma"]] * 2)
    out = img.permute(1, 2, 0).numpy()
    if ops["noise_sigma"] > 0:
        noise = np.random.default_rng(ops["noise_seed"]).normal(0.0, ops["noise_sigma"], out.shape)
        out = np.clip(out + noise, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(out, dtype=np.uint8), msk.numpy().astype(bool)


def object_masks(anns: list[dict[str, Any]], hw: tuple[int, int]) -> np.ndarray:
    """``bool [N, H, W]``: each annotation's segmentation, or its box for box-only annotations."""
    h, w = hw
    out = np.zeros((len(anns), h, w), dtype=bool)
    for i, ann in enumerate(anns):
        if has_segmentation(ann.get("segmentation")):
            out[i] = decode_segmentation(ann["segmentation"], h, w)
        else:
            x, y, bw, bh = ann["bbox"]
            out[i, max(0, math.floor(y)) : math.ceil(y + bh), max(0, math.floor(x)) : math.ceil(x + bw)] = (
                True
            )
    return out


def augment_sample(
    image: np.ndarray,
    anns: list[dict[str, Any]],
    rng: np.random.Generator,
    params: AugmentParams,
    *,
    required_category: int | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Augment one image and its COCO annotations.

    Draws parameters until an instance of ``required_category`` survives (at most
    ``params.attempts`` times; then falls back to photometric-only ops, which keep every object).

    Returns:
        ``(image uint8 [H, W, 3], annotations without id/image_id, ops)``.
    """
    h, w = image.shape[:2]
    masks = object_masks(anns, (h, w))
    areas = masks.reshape(len(anns), -1).sum(1)
    ops: dict[str, Any] = {}
    for attempt in range(params.attempts + 1):
        ops = draw_ops(rng, params, (h, w))
        if attempt == params.attempts:
            ops.update(crop=[0, 0, h, w], flip=False, angle=0.0)
        out, new_masks = apply_ops(image, masks, ops)
        zoom = (h / ops["crop"][2]) * (w / ops["crop"][3])
        new_anns = _rebuild(anns, new_masks, areas * zoom, params.min_visible)
        done = required_category is None or any(a["category_id"] == required_category for a in new_anns)
        if done or attempt == params.attempts:
            break
    return out, new_anns, ops


def _rebuild(
    anns: list[dict[str, Any]], masks: np.ndarray, expected_areas: np.ndarray, min_visible: float
) -> list[dict[str, Any]]:
    """Annotations from transformed masks; objects under ``min_visible`` of their area are dropped."""
    visible = masks.reshape(len(anns), -1).sum(1)
    keep = [i for i in range(len(anns)) if visible[i] > 0 and visible[i] >= min_visible * expected_areas[i]]
    if not keep:
        return []
    boxes = masks_to_boxes(torch.from_numpy(masks[keep])).tolist()  # xyxy, inclusive max pixel
    out = []
    for i, (x0, y0, x1, y1) in zip(keep, boxes, strict=True):
        ann = {k: v for k, v in anns[i].items() if k not in ("id", "image_id")}
        ann["bbox"] = [x0, y0, x1 - x0 + 1.0, y1 - y0 + 1.0]
        if has_segmentation(anns[i].get("segmentation")):
            ann["segmentation"] = encode_mask(masks[i])
            ann["area"] = float(visible[i])
        else:
            ann["segmentation"] = []
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        out.append(ann)
    return out


def params_dict(params: AugmentParams) -> dict[str, Any]:
    """JSON-ready copy of the parameters (for metadata.json)."""
    return asdict(params)
