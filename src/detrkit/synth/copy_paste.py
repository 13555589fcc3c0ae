"""Copy-paste of object instances (Ghiasi et al., 2021), exact to the pixel.

An :class:`Instance` (pixels plus a mask, cut from a source image) is scaled, maybe flipped and
given a feathered alpha, then pasted into a target image at a place where it hides at most
``max_cover`` of any object already there. Objects the paste hides are updated: their visible mask,
box and area are recomputed, and an object hidden over ``drop_occluded`` of its original area is
dropped.

Feathering is inward: the outermost ``feather`` pixels of the pasted mask blend 50-100% with the
background and nothing outside the mask changes. So the pasted object's annotation (mask, box, area)
is exactly the set of pixels the paste changed, and at every one of them the pasted object weighs at
least half.

All arrays are ``uint8 [H, W, 3]`` RGB images and ``bool [h, w]`` masks; all work is local to the
pasted crop (integer blending, no full-image float conversions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from detrkit.synth.masks import LocalMask, decode_local, has_segmentation


@dataclass(frozen=True)
class Instance:
    """An object cut from a source image.

    Attributes:
        rgb: ``uint8 [h, w, 3]`` pixels of the object's box.
        mask: ``bool [h, w]`` object pixels (all True for a box-only annotation).
        category_id: COCO category id.
        has_mask: False when cut from a box-only annotation (pasted as a soft-edged box crop).
        source_image_id, source_ann_id: where it was cut from (for metadata).
    """

    rgb: np.ndarray
    mask: np.ndarray
    category_id: int
    has_mask: bool = True
    source_image_id: int = -1
    source_ann_id: int = -1


@dataclass(frozen=True)
class PasteParams:
    """How instances are pasted.

    Attributes:
        scale_range: uniform scale factor range applied to the source size.
        flip_prob: probability of a horizontal flip.
        feather: width in pixels of the inward alpha ramp (0 = hard edge).
        max_size_frac: a pasted instance is at most this fraction of the image width and height.
        min_size: a pasted instance is at least this many pixels on its shorter side (else skipped).
        max_cover: placement rejects spots that would hide more than this fraction of any object.
        drop_occluded: objects hidden over this fraction of their original area are dropped.
        min_visible_px: objects with fewer visible pixels than this are dropped.
        attempts: random placements tried before taking the least occluding one.
    """

    scale_range: tuple[float, float] = (0.6, 1.4)
    flip_prob: float = 0.5
    feather: int = 2
    max_size_frac: float = 0.6
    min_size: int = 6
    max_cover: float = 0.3
    drop_occluded: float = 0.7
    min_visible_px: int = 16
    attempts: int = 12


@dataclass
class SceneObject:
    """An object in the image being edited; its mask is decoded only when a paste comes near it.

    ``ann`` is the original COCO annotation (None for pasted objects); ``changed`` marks objects
    whose visible region differs from ``ann``.
    """

    category_id: int
    bbox_xyxy: tuple[int, int, int, int]
    has_mask: bool
    ann: dict[str, Any] | None = None
    pasted: bool = False
    changed: bool = False
    _region: LocalMask | None = None
    _orig_area: int = -1
    _size: tuple[int, int] = (0, 0)

    @classmethod
    def from_annotation(cls, ann: dict[str, Any], height: int, width: int) -> SceneObject:
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = (
            max(0, int(np.floor(x))),
            max(0, int(np.floor(y))),
            min(width, int(np.ceil(x + w))),
            min(height, int(np.ceil(y + h))),
        )
        return cls(
            int(ann["category_id"]),
            box,
            has_segmentation(ann.get("segmentation")),
            ann=ann,
            _size=(height, width),
        )

    @property
    def region(self) -> LocalMask:
        """Visible pixels (decoded from the annotation on first use)."""
        if self._region is None:
            assert self.ann is not None
            h, w = self._size
            if self.has_mask:
                region = decode_local(self.ann["segmentation"], h, w)
            else:
                region = LocalMask.from_box(tuple(self.ann["bbox"]), h, w)
            self._region = region
            self._orig_area = region.area
        return self._region

    @property
    def orig_area(self) -> int:
        self.region  # noqa: B018 - decodes on first use
        return self._orig_area

    def annotation(self) -> dict[str, Any]:
        """COCO annotation (without ``id``/``image_id``) of the object as it now looks."""
        if not self.changed and self.ann is not None:
            return {k: v for k, v in self.ann.items() if k not in ("id", "image_id")}
        region = self.region
        out: dict[str, Any] = dict(self.ann) if self.ann is not None else {"iscrowd": 0}
        out.pop("id", None)
        out.pop("image_id", None)
        out["category_id"] = self.category_id
        out["bbox"] = region.bbox_xywh()
        if self.has_mask:
            out["segmentation"] = region.encode(*self._size)
            out["area"] = float(region.area)
        else:
            out["segmentation"] = []
            out["area"] = float(region.mask.shape[0] * region.mask.shape[1])
        return out


def scene_from_annotations(anns: list[dict[str, Any]], height: int, width: int) -> list[SceneObject]:
    """Scene objects of an image's COCO annotations (masks decoded lazily)."""
    return [SceneObject.from_annotation(a, height, width) for a in anns]


@dataclass
class PreparedInstance:
    """An instance resized/flipped for one paste, with its blending weights precomputed."""

    mask: np.ndarray  # bool [h, w], tight
    weighted_rgb: np.ndarray  # uint16 [h, w, 3] = rgb * a
    inv_alpha: np.ndarray  # uint16 [h, w, 1] = 256 - a
    scale: float
    flipped: bool
    source: Instance = field(repr=False)


def feather_alpha(mask: np.ndarray, radius: int) -> np.ndarray:
    """Inward-feathered alpha of a tight mask, quantised to ``uint16 [h, w]`` in ``{0, 128..256}``.

    ``a = 0`` outside the mask; inside, ``a = 128 + 128 * clip(2 * boxblur(mask) - 1, 0, 1)`` with a
    ``(2r+1)^2`` box blur (zero outside the array), so edge pixels get at least 128/256.
    """
    if radius <= 0:
        return mask.astype(np.uint16) * 256
    h, w = mask.shape
    k = 2 * radius + 1
    padded = np.zeros((h + 2 * radius + 1, w + 2 * radius + 1), dtype=np.float32)
    padded[radius + 1 : radius + 1 + h, radius + 1 : radius + 1 + w] = mask
    integral = padded.cumsum(0).cumsum(1)
    window = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    ramp = np.clip(window * (2.0 / (k * k)) - 1.0, 0.0, 1.0)
    alpha = np.rint(128.0 + 128.0 * ramp).astype(np.uint16)
    alpha[~mask] = 0
    return alpha


def prepare_instance(
    instance: Instance, *, scale: float, flip: bool, feather: int, max_hw: tuple[int, int], min_size: int
) -> PreparedInstance | None:
    """Resize (bilinear pixels, bilinear-then-threshold mask), flip and feather an instance.

    The scale is lowered so that the result fits in ``max_hw``; returns None when the result is
    smaller than ``min_size`` pixels on a side or its mask is empty.
    """
    h, w = instance.mask.shape
    scale = min(scale, max_hw[0] / h, max_hw[1] / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if min(nh, nw) < min_size:
        return None
    rgb, mask = instance.rgb, instance.mask
    if (nh, nw) != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        if instance.has_mask:
            mask8 = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR))
            mask = mask8 >= 128
        else:
            mask = np.ones((nh, nw), dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    rgb = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    if flip:
        mask, rgb = mask[:, ::-1], rgb[:, ::-1]
    mask = np.ascontiguousarray(mask)
    a = feather_alpha(mask, feather)[..., None]
    return PreparedInstance(
        mask=mask,
        weighted_rgb=rgb.astype(np.uint16) * a,
        inv_alpha=256 - a,
        scale=float(scale),
        flipped=bool(flip),
        source=instance,
    )


def blend(image: np.ndarray, prepared: PreparedInstance, x0: int, y0: int) -> None:
    """Alpha-blend ``prepared`` into ``image`` (in place) with its top-left corner at ``(x0, y0)``.

    ``out = (rgb * a + bg * (256 - a) + 128) >> 8`` in ``uint16`` (at most 65408, no overflow).
    """
    h, w = prepared.mask.shape
    region = image[y0 : y0 + h, x0 : x0 + w]
    out = prepared.weighted_rgb + region * prepared.inv_alpha
    out += 128
    out >>= 8
    region[...] = out


def _hidden_fraction(obj: SceneObject, paste: LocalMask) -> float:
    covered = obj.region.covered_by(paste)
    if covered == 0:
        return 1.0 - obj.region.area / max(obj.orig_area, 1)
    return 1.0 - (obj.region.area - covered) / max(obj.orig_area, 1)


def _boxes_intersect(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def choose_position(
    scene: list[SceneObject],
    hw: tuple[int, int],
    image_hw: tuple[int, int],
    mask: np.ndarray,
    rng: np.random.Generator,
    params: PasteParams,
) -> tuple[int, int, float]:
    """Random top-left corner where the paste hides at most ``max_cover`` of any object.

    Tries ``params.attempts`` uniform positions (the instance stays inside the image) and returns the
    first acceptable one, else the one with the smallest worst-case hidden fraction, with that
    fraction.
    """
    h, w = hw
    best: tuple[int, int, float] | None = None
    for _ in range(max(1, params.attempts)):
        x0 = int(rng.integers(0, image_hw[1] - w + 1))
        y0 = int(rng.integers(0, image_hw[0] - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        paste = LocalMask(x0, y0, mask)
        worst = 0.0
        for obj in scene:
            if _boxes_intersect(obj.bbox_xyxy, box):
                worst = max(worst, _hidden_fraction(obj, paste))
                if best is not None and worst >= best[2]:
                    break
        if best is None or worst < best[2]:
            best = (x0, y0, worst)
        if worst <= params.max_cover:
            break
    assert best is not None
    return best


def add_to_scene(
    scene: list[SceneObject],
    region: LocalMask,
    category_id: int,
    has_mask: bool,
    image_hw: tuple[int, int],
    params: PasteParams,
) -> tuple[int, int]:
    """Put a new object (its pixels ``region``) on top of ``scene`` (in place).

    Objects it hides are shrunk to their visible pixels (box, mask and area recomputed) or dropped
    when hidden over ``params.drop_occluded`` of their original area or left with fewer than
    ``params.min_visible_px`` pixels. Returns ``(shrunk, dropped)`` counts.
    """
    box = (region.x0, region.y0, region.x1, region.y1)
    shrunk = dropped = 0
    kept: list[SceneObject] = []
    for obj in scene:
        if _boxes_intersect(obj.bbox_xyxy, box) and obj.region.subtract(region):
            obj.changed = True
            visible = obj.region.area
            if (
                visible < params.min_visible_px
                or 1.0 - visible / max(obj.orig_area, 1) > params.drop_occluded
            ):
                dropped += 1
                continue
            obj.region.tighten()
            r = obj.region
            obj.bbox_xyxy = (r.x0, r.y0, r.x1, r.y1)
            shrunk += 1
        kept.append(obj)
    new = SceneObject(category_id, box, has_mask, pasted=True, changed=True, _size=image_hw)
    new._region = region
    new._orig_area = region.area
    kept.append(new)
    scene[:] = kept
    return shrunk, dropped


def paste_instance(
    image: np.ndarray,
    scene: list[SceneObject],
    instance: Instance,
    rng: np.random.Generator,
    params: PasteParams,
    *,
    category_id: int | None = None,
) -> dict[str, Any] | None:
    """Paste one instance into ``image`` (in place) and update ``scene`` (in place).

    ``category_id`` overrides the id the new scene object gets (e.g. a contiguous label online).

    Returns a JSON-ready record of the paste (source ids, scale, flip, box, worst hidden fraction,
    number of objects shrunk and dropped), or None when the instance cannot fit at ``min_size``.
    """
    height, width = image.shape[:2]
    lo, hi = params.scale_range
    scale = float(rng.uniform(lo, hi))
    flip = bool(rng.random() < params.flip_prob)
    max_hw = (max(1, int(height * params.max_size_frac)), max(1, int(width * params.max_size_frac)))
    prepared = prepare_instance(
        instance, scale=scale, flip=flip, feather=params.feather, max_hw=max_hw, min_size=params.min_size
    )
    if prepared is None:
        return None
    h, w = prepared.mask.shape
    x0, y0, worst = choose_position(scene, (h, w), (height, width), prepared.mask, rng, params)
    blend(image, prepared, x0, y0)
    shrunk, dropped = add_to_scene(
        scene,
        LocalMask(x0, y0, prepared.mask.copy()),
        instance.category_id if category_id is None else category_id,
        instance.has_mask,
        (height, width),
        params,
    )
    return {
        "category_id": instance.category_id,
        "source_image_id": instance.source_image_id,
        "source_ann_id": instance.source_ann_id,
        "scale": round(prepared.scale, 4),
        "flip": prepared.flipped,
        "bbox": [x0, y0, w, h],
        "hidden_max": round(worst, 4),
        "shrunk": shrunk,
        "dropped": dropped,
    }
