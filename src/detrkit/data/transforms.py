"""Training and evaluation transform presets on ``torchvision.transforms.v2``.

Every preset is called as ``image, target = t(image, target)`` with

- ``image``: ``tv_tensors.Image`` ``uint8 [3, H, W]``;
- ``target``: a dict with ``"boxes"`` (``tv_tensors.BoundingBoxes``, format XYXY, pixels,
  ``canvas_size=(H, W)``) and ``"labels"`` (``int64 [N]``); other keys pass through untouched.

Presets return ``uint8`` images, which datasets and batches keep; the float32 model input is made on
the device from the batch (:func:`detrkit.data.collate.normalize_images`). :func:`normalize_uint8`
does the same for one image on the CPU (the reference the batch path is tested against). Boxes that end up empty (cropped away, or under ``min_box_size`` pixels) are dropped with
their labels by ``SanitizeBoundingBoxes``.

``detr`` (train) follows the DETR paper (Carion et al., 2020, ``datasets/coco.py``): horizontal flip,
then with probability 1/2 either a multi-scale resize of the shorter side to one of ``scales`` (longer
side at most ``max_size``), or resize to one of ``crop_scales``, random crop of a size in
``crop_size`` and the same multi-scale resize. ``detr`` (eval) and ``val`` resize the shorter side to
``size`` (longer side at most ``max_size``). ``light`` (train) is for small images: flip, colour
jitter, scale jitter around a ``size x size`` frame, then a random crop/pad to exactly ``size x size``;
``light`` (eval) resizes the longer side to ``size``.

Passing ``size`` to the ``detr`` preset scales the whole recipe by ``size / 800`` (so ``size=256``
trains on shorter sides 154..256, max 427), which is what the small-image demo uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

PRESETS = ("detr", "val", "light")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETR_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
DETR_MAX_SIZE = 1333
DETR_CROP_SCALES = (400, 500, 600)
DETR_CROP_SIZE = (384, 600)


class RandomSizeCrop(v2.Transform):
    """Crop a random ``h x w`` window, ``h, w`` uniform in ``[min_size, min(max_size, image side)]``.

    The DETR ``RandomSizeCrop``: the window size is drawn first, then its position. Boxes are cut
    to the window (a box entirely outside becomes empty and is removed by a later sanitize).
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()).item())
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()).item())
        top = int(torch.randint(0, height - h + 1, ()).item())
        left = int(torch.randint(0, width - w + 1, ()).item())
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _scaled(values: Sequence[int], factor: float) -> tuple[int, ...]:
    return tuple(max(1, round(v * factor)) for v in values)


def build_transforms(
    preset: str,
    *,
    train: bool,
    size: int | None = None,
    max_size: int | None = None,
    scales: Sequence[int] | None = None,
    crop_scales: Sequence[int] | None = None,
    crop_size: tuple[int, int] | None = None,
    flip_prob: float = 0.5,
    scale_range: tuple[float, float] = (0.75, 1.25),
    color_jitter: float = 0.2,
    hue: float = 0.02,
    min_box_size: float = 1.0,
) -> v2.Compose:
    """Build a transform pipeline (see the module docstring for each preset).

    Args:
        preset: ``"detr"``, ``"val"`` or ``"light"``.
        train: random augmentation when true; the deterministic eval resize otherwise
            (``val`` is always deterministic).
        size: eval shorter side (``detr``/``val``; default 800) or frame side (``light``; default
            256). For ``detr`` it also scales the training recipe by ``size / 800``.
        max_size: cap on the longer side (default ``1333 * size / 800``).
        scales: ``detr`` multi-scale shorter sides (default DETR's 480..800, scaled).
        crop_scales: ``detr`` shorter sides before the random crop (default 400, 500, 600, scaled).
        crop_size: ``detr`` ``(min, max)`` crop side (default 384..600, scaled).
        flip_prob: horizontal flip probability (train).
        scale_range: ``light`` scale jitter range (train).
        color_jitter: ``light`` brightness/contrast/saturation jitter (train); 0 turns colour
            jitter off.
        hue: ``light`` hue jitter (train; the slowest part of the preset on the CPU: 14.8 against
            8.3 ms per 128-px image without it, 5.5 without any colour jitter).
        min_box_size: boxes narrower or shorter than this many pixels are dropped.
    Returns:
        a ``v2.Compose`` mapping ``(Image uint8 [3,H,W], target)`` to the same types.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown transform preset {preset!r}; choose one of {', '.join(PRESETS)}")
    sanitize = v2.SanitizeBoundingBoxes(min_size=min_box_size)
    if preset == "light":
        side = size or 256
        if not train:
            return v2.Compose([v2.Resize(size=None, max_size=side), sanitize])
        colour = []
        if color_jitter > 0 or hue > 0:
            colour = [
                v2.ColorJitter(
                    brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=hue
                )
            ]
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(flip_prob),
                *colour,
                v2.ScaleJitter(target_size=(side, side), scale_range=scale_range),
                v2.RandomCrop(side, pad_if_needed=True),
                sanitize,
            ]
        )
    factor = 1.0 if size is None else size / DETR_SCALES[-1]
    eval_size = size or DETR_SCALES[-1]
    max_side = max_size or round(DETR_MAX_SIZE * factor)
    if preset == "val" or not train:
        return v2.Compose([v2.Resize(size=eval_size, max_size=max_side), sanitize])
    scales_ = tuple(scales) if scales else _scaled(DETR_SCALES, factor)
    crop_scales_ = tuple(crop_scales) if crop_scales else _scaled(DETR_CROP_SCALES, factor)
    crop_lo, crop_hi = crop_size or _scaled(DETR_CROP_SIZE, factor)
    multiscale = v2.RandomShortestSize(min_size=list(scales_), max_size=max_side)
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(flip_prob),
            v2.RandomChoice(
                [
                    multiscale,
                    v2.Compose(
                        [
                            v2.RandomShortestSize(min_size=list(crop_scales_)),
                            RandomSizeCrop(crop_lo, crop_hi),
                            v2.RandomShortestSize(min_size=list(scales_), max_size=max_side),
                        ]
                    ),
                ]
            ),
            sanitize,
        ]
    )


_MEAN_255 = torch.tensor(IMAGENET_MEAN).mul(255).view(3, 1, 1)
_INV_STD_255 = torch.tensor(IMAGENET_STD).mul(255).reciprocal().view(3, 1, 1)


def normalize_uint8(image: Tensor) -> Tensor:
    """``uint8 [3, H, W]`` -> ``float32 [3, H, W]`` ImageNet-normalised, ``(x/255 - mean) / std``.

    Computed as ``(x - 255 mean) * (1 / (255 std))``: one conversion and two in-place passes instead of
    ``ToDtype(scale=True)`` + ``Normalize``. The result is contiguous. torchvision's uint8 resize
    returns a channels-last view; converting it plane by plane (each a stride-3 gather into a
    contiguous float plane) is about 1.5x faster than one channels-last -> contiguous ``.to``, and
    normalising (then padding in collate) in the channels-last layout would cost 2-3x more.
    """
    if image.ndim != 3 or image.stride(0) != 1:
        out = image.to(torch.float32, memory_format=torch.contiguous_format)
    else:
        out = torch.empty(image.shape, dtype=torch.float32)
        for c in range(image.shape[0]):
            out[c].copy_(image[c])
    out.sub_(_MEAN_255).mul_(_INV_STD_255)
    return out


def make_target(boxes_xyxy: Tensor, labels: Tensor, canvas_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Wrap ``[N, 4]`` xyxy pixel boxes and ``int64 [N]`` labels for the presets."""
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes_xyxy, format="XYXY", canvas_size=canvas_hw),
        "labels": labels,
    }
