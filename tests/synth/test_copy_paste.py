"""Copy-paste geometry: pasted and occluded annotations must match the pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as pcm

from detrkit.synth.copy_paste import (
    Instance,
    PasteParams,
    SceneObject,
    feather_alpha,
    paste_instance,
    scene_from_annotations,
)
from detrkit.synth.masks import LocalMask, decode_local, decode_segmentation, encode_mask

BG = np.array([20, 40, 60], dtype=np.uint8)
FG = np.array([230, 200, 10], dtype=np.uint8)


def _disc(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - (h - 1) / 2) ** 2 / (h / 2) ** 2 + (xx - (w - 1) / 2) ** 2 / (w / 2) ** 2 <= 1.0


def _decode(seg: dict, h: int, w: int) -> np.ndarray:
    """Independent reference: pycocotools (not the faster_coco_eval copy used by the library)."""
    return pcm.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


@pytest.mark.parametrize("feather", [0, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pasted_mask_and_box_equal_changed_pixels(feather: int, seed: int) -> None:
    H, W = 96, 128
    image = np.broadcast_to(BG, (H, W, 3)).copy()
    mask = _disc(31, 23)
    inst = Instance(rgb=np.broadcast_to(FG, (31, 23, 3)).copy(), mask=mask, category_id=7)
    scene: list[SceneObject] = []
    params = PasteParams(feather=feather, scale_range=(0.7, 1.6))
    rec = paste_instance(image, scene, inst, np.random.default_rng(seed), params)
    assert rec is not None and len(scene) == 1
    ann = scene[0].annotation()
    changed = (image != BG).any(-1)
    got = _decode(ann["segmentation"], H, W)
    np.testing.assert_array_equal(got, changed)
    ys, xs = np.nonzero(changed)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert ann["area"] == changed.sum() == pcm.area(pcm.encode(np.asfortranarray(changed.astype(np.uint8))))
    # Where the mask is, the pasted colour weighs at least half: closer to FG than to BG (ties allowed).
    d_fg = np.abs(image[changed].astype(int) - FG).sum(-1)
    d_bg = np.abs(image[changed].astype(int) - BG).sum(-1)
    assert (d_fg <= d_bg + 3).all()
    if feather == 0:
        assert (image[changed] == FG).all()
    else:
        assert (image[changed] != FG).any()  # the edge really is blended


def test_feather_alpha_range_and_interior() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:18, 3:17] = True
    a = feather_alpha(mask, 2)
    assert (a[~mask] == 0).all()
    assert a[mask].min() >= 128 and a.max() == 256
    assert (a[5:15, 6:14] == 256).all()  # farther than the radius from any edge: opaque
    assert a[2, 10] < 256 and a[2, 3] <= a[2, 10]  # edge is soft, a corner softer still


def test_flip_and_scale_are_exact() -> None:
    H, W = 80, 80
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    rgb[:, :10] = FG  # left half coloured; the mask is the whole box
    mask = np.ones((10, 20), dtype=bool)
    inst = Instance(rgb=rgb, mask=mask, category_id=1)
    params = PasteParams(feather=0, scale_range=(2.0, 2.0), flip_prob=1.0)
    image = np.broadcast_to(BG, (H, W, 3)).copy()
    scene: list[SceneObject] = []
    rec = paste_instance(image, scene, inst, np.random.default_rng(3), params)
    assert rec is not None and rec["flip"] is True and rec["scale"] == 2.0
    x, y, w, h = rec["bbox"]
    assert (w, h) == (40, 20)
    patch = image[y : y + h, x : x + w]
    assert (patch[:, 22:] == FG).all() and (patch[:, :18] == 0).all()  # flipped: colour on the right


def _ann(seg_mask: np.ndarray, cat: int, ann_id: int) -> dict:
    ys, xs = np.nonzero(seg_mask)
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": cat,
        "iscrowd": 0,
        "area": float(seg_mask.sum()),
        "bbox": [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ],
        "segmentation": encode_mask(seg_mask),
    }


def test_occluded_object_is_shrunk_to_its_visible_pixels() -> None:
    H, W = 64, 64
    target = np.zeros((H, W), dtype=bool)
    target[10:40, 10:50] = True  # 30 x 40 box object, area 1200
    image = np.broadcast_to(BG, (H, W, 3)).copy()
    scene = scene_from_annotations([_ann(target, 3, 11)], H, W)
    # A 30 x 12 opaque bar; with max_size_frac=1 and a single allowed spot it must cover x in [38, 50).
    inst = Instance(rgb=np.broadcast_to(FG, (30, 12, 3)).copy(), mask=np.ones((30, 12), bool), category_id=5)
    params = PasteParams(
        feather=0, scale_range=(1.0, 1.0), flip_prob=0.0, max_cover=1.0, drop_occluded=0.9, attempts=1
    )

    class FixedRng:
        def uniform(self, lo: float, hi: float) -> float:
            return 1.0

        def random(self) -> float:
            return 1.0

        def integers(self, lo: int, hi: int) -> int:
            return {64 - 12 + 1: 38, 64 - 30 + 1: 10}[hi]

    paste_instance(image, scene, inst, FixedRng(), params)  # type: ignore[arg-type]
    occluded, pasted = scene
    ann = occluded.annotation()
    visible = target & ~(image != BG).any(-1)
    np.testing.assert_array_equal(_decode(ann["segmentation"], H, W), visible)
    assert ann["bbox"] == [10.0, 10.0, 28.0, 30.0] and ann["area"] == visible.sum() == 30 * 28
    assert pasted.annotation()["bbox"] == [38.0, 10.0, 12.0, 30.0]


def test_heavily_hidden_object_is_dropped_and_box_only_objects_shrink() -> None:
    H, W = 50, 50
    small = np.zeros((H, W), dtype=bool)
    small[20:26, 20:26] = True
    box_only = {
        "id": 2,
        "image_id": 1,
        "category_id": 4,
        "iscrowd": 0,
        "area": 100.0,
        "bbox": [0.0, 0.0, 10.0, 10.0],
        "segmentation": [],
    }
    scene = scene_from_annotations([_ann(small, 3, 1), box_only], H, W)
    inst = Instance(
        rgb=np.broadcast_to(FG, (30, 30, 3)).copy(),
        mask=np.ones((30, 30), bool),
        category_id=5,
        has_mask=False,
    )
    params = PasteParams(
        feather=0, scale_range=(1.0, 1.0), max_size_frac=1.0, max_cover=1.0, drop_occluded=0.5, attempts=1
    )

    class FixedRng:
        def uniform(self, lo: float, hi: float) -> float:
            return 1.0

        def random(self) -> float:
            return 1.0

        def integers(self, lo: int, hi: int) -> int:
            return 5  # paste covers [5, 35)^2: all of `small` (dropped), 25 of the 100 box-only pixels

    rec = paste_instance(np.broadcast_to(BG, (H, W, 3)).copy(), scene, inst, FixedRng(), params)  # type: ignore[arg-type]
    assert rec is not None and rec["dropped"] == 1 and rec["shrunk"] == 1
    kept, pasted = scene
    ann = kept.annotation()
    # box-only object [0,10)^2 minus [5,35)^2 is an L shape; its box stays [0,0,10,10], area is the box area.
    assert ann["bbox"] == [0.0, 0.0, 10.0, 10.0] and ann["segmentation"] == []
    assert pasted.annotation()["segmentation"] == [] and pasted.annotation()["bbox"] == [5.0, 5.0, 30.0, 30.0]


def test_decode_segmentation_matches_pycocotools() -> None:
    h, w = 40, 60
    poly = [[5.0, 5.0, 50.0, 8.0, 30.0, 35.0], [40.0, 30.0, 55.0, 30.0, 55.0, 38.0, 40.0, 38.0]]
    ref = pcm.decode(pcm.merge(pcm.frPyObjects(poly, h, w))).astype(bool)
    np.testing.assert_array_equal(decode_segmentation(poly, h, w), ref)
    rle = encode_mask(ref)
    np.testing.assert_array_equal(decode_segmentation(rle, h, w), ref)
    unc = {"size": [h, w], "counts": _uncompressed_counts(ref)}
    np.testing.assert_array_equal(decode_segmentation(unc, h, w), ref)
    lm = LocalMask.from_full(ref)
    np.testing.assert_array_equal(lm.to_full(h, w), ref)


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major, as COCO
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], change])).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_local_rle_equals_full_image_rle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    H, W = 37, 53
    full = np.zeros((H, W), bool)
    y0, x0 = int(rng.integers(0, 20)), int(rng.integers(0, 30))
    h, w = int(rng.integers(1, H - y0 + 1)), int(rng.integers(1, W - x0 + 1))
    full[y0 : y0 + h, x0 : x0 + w] = rng.random((h, w)) < 0.5
    if seed == 0:
        full[:] = False
        full[0, 0] = full[-1, -1] = True  # runs touching both ends of the column-major order
    lm = LocalMask.from_full(full)
    ref = pcm.encode(np.asfortranarray(full.astype(np.uint8)))
    assert lm.encode(H, W) == {"size": [H, W], "counts": ref["counts"].decode()}


@pytest.mark.parametrize("seed", range(6))
def test_local_decode_equals_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    H, W = 41, 59
    polys = [
        rng.uniform([0, 0], [W, H], (int(rng.integers(3, 9)), 2)).ravel().tolist()
        for _ in range(1 + seed % 3)
    ]
    ref = pcm.decode(pcm.merge(pcm.frPyObjects(polys, H, W))).astype(bool)
    lm = decode_local(polys, H, W)
    np.testing.assert_array_equal(lm.to_full(H, W), ref)
    rle = pcm.encode(np.asfortranarray(ref.astype(np.uint8)))
    np.testing.assert_array_equal(
        decode_local({"size": [H, W], "counts": rle["counts"].decode()}, H, W).to_full(H, W), ref
    )
    np.testing.assert_array_equal(
        decode_local({"size": [H, W], "counts": _uncompressed_counts(ref)}, H, W).to_full(H, W), ref
    )
    assert decode_local([], H, W).area == 0
