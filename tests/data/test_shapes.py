"""The built-in shapes dataset: determinism, valid COCO, long tail, geometry and colours."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from detrkit.data.shapes import (
    CLASS_NAMES,
    CLASS_WEIGHTS,
    RARE_CLASSES,
    generate_shapes,
    polygon_area,
    render_image,
)
from detrkit.errors import DataError


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory):
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "a", train=24, val=8, seed=3)


def test_layout_and_paths(small_set) -> None:
    assert small_set.class_names == CLASS_NAMES
    assert len(list(small_set.train_images.glob("*.jpg"))) == 24
    assert len(list(small_set.val_images.glob("*.jpg"))) == 8
    assert small_set.train_ann == small_set.root / "annotations" / "train.json"
    assert small_set.val_ann.is_file()


def test_byte_identical_across_runs_and_workers(small_set, tmp_path: Path) -> None:
    again = generate_shapes(tmp_path / "b", train=24, val=8, seed=3, workers=1)
    parallel = generate_shapes(tmp_path / "c", train=24, val=8, seed=3, workers=2)
    reference = _all_bytes(small_set.root)
    assert len(reference) == 24 + 8 + 2 + 1  # images, two annotation files, shapes.json
    assert _all_bytes(again.root) == reference
    assert _all_bytes(parallel.root) == reference
    other_seed = generate_shapes(tmp_path / "d", train=2, val=0, seed=4)
    assert (other_seed.train_images / "000000.jpg").read_bytes() != reference["train/000000.jpg"]


def test_image_does_not_depend_on_split_size() -> None:
    # per-image seeds come from (seed, split, index): image 5 is the same in any run length
    a, ann_a = render_image(256, seed=0, split="train", index=5)
    b, ann_b = render_image(256, seed=0, split="train", index=5)
    c, _ = render_image(256, seed=0, split="val", index=5)
    assert a.tobytes() == b.tobytes() and ann_a == ann_b
    assert a.tobytes() != c.tobytes()


def test_valid_coco_loaded_by_pycocotools(small_set) -> None:
    for ann_path, img_dir in (
        (small_set.train_ann, small_set.train_images),
        (small_set.val_ann, small_set.val_images),
    ):
        coco = COCO(str(ann_path))
        assert sorted(coco.getCatIds()) == list(range(1, len(CLASS_NAMES) + 1))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(img_dir / img["file_name"]) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (img["width"], img["height"])
        anns = coco.loadAnns(coco.getAnnIds())
        assert anns and all(a["iscrowd"] == 0 for a in anns)
        assert len({a["id"] for a in anns}) == len(anns)
        per_image = Counter(a["image_id"] for a in anns)
        assert max(per_image.values()) <= 6


def test_boxes_and_areas_match_polygons(small_set) -> None:
    data = json.loads(small_set.train_ann.read_text())
    for ann in data["annotations"]:
        xs = [v for poly in ann["segmentation"] for v in poly[0::2]]
        ys = [v for poly in ann["segmentation"] for v in poly[1::2]]
        x, y, w, h = ann["bbox"]
        assert x == pytest.approx(min(xs), abs=0.011) and y == pytest.approx(min(ys), abs=0.011)
        assert x + w == pytest.approx(max(xs), abs=0.011) and y + h == pytest.approx(max(ys), abs=0.011)
        assert x >= 0 and y >= 0 and x + w <= 256.001 and y + h <= 256.001
        assert w > 0 and h > 0
        assert ann["area"] == pytest.approx(sum(polygon_area(p) for p in ann["segmentation"]), abs=0.02)
        assert ann["area"] <= w * h + 1e-6


def test_polygon_area_hand_computed() -> None:
    assert polygon_area([0, 0, 4, 0, 4, 3, 0, 3]) == pytest.approx(12.0)
    assert polygon_area([0, 0, 4, 0, 0, 3]) == pytest.approx(6.0)
    assert polygon_area([0, 0, 0, 3, 4, 0]) == pytest.approx(6.0)  # orientation does not matter


def test_segmentation_is_visible_region_and_has_drawn_colour(small_set) -> None:
    """Rasterised outlines of one image do not overlap (occlusion removed), and their interior
    pixels have the annotated fill colour (within noise and JPEG error)."""
    coco = COCO(str(small_set.train_ann))
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(small_set.train_images / img["file_name"]).convert("RGB"), dtype=float)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for i, (ann, mask) in enumerate(zip(anns, masks, strict=True)):
            # rasterised polygon area agrees with the annotated area (boundary pixels aside)
            assert abs(int(mask.sum()) - ann["area"]) <= 0.12 * ann["area"] + 40
            for other in masks[i + 1 :]:
                assert (mask & other).sum() <= 0.02 * min(mask.sum(), other.sum()) + 30
            core = ndimage.binary_erosion(mask, iterations=3)
            if core.sum() < 30:
                continue
            median = np.median(pixels[core], axis=0)
            assert np.abs(median - np.asarray(ann["color"], dtype=float)).max() <= 12, (img, ann["id"])
            checked += 1
    assert checked >= 40


def test_long_tailed_with_rare_classes() -> None:
    counts: Counter[int] = Counter()
    areas: list[float] = []
    n_per_image: list[int] = []
    for index in range(300):
        _, instances = render_image(256, seed=0, split="train", index=index)
        counts.update(a["category_id"] for a in instances)
        areas.extend(a["area"] for a in instances)
        n_per_image.append(len(instances))
    total = sum(counts.values())
    shares = {CLASS_NAMES[k - 1]: v / total for k, v in counts.items()}
    assert set(shares) == set(CLASS_NAMES)
    assert len(RARE_CLASSES) >= 2
    assert {n for n, w in zip(CLASS_NAMES, CLASS_WEIGHTS, strict=True) if w <= 0.05} == set(RARE_CLASSES)
    for name in RARE_CLASSES:
        assert shares[name] <= 0.055, shares
    common = max(shares.values())
    assert common >= 4 * min(shares[name] for name in RARE_CLASSES)
    # 1-6 objects per image, about 3 on average
    assert min(n_per_image) >= 1 and max(n_per_image) <= 6
    assert 2.5 <= total / 300 <= 4.0
    # COCO small (< 32^2), medium and large (> 96^2) objects all occur
    small = sum(a < 32**2 for a in areas) / total
    large = sum(a > 96**2 for a in areas) / total
    assert 0.15 <= small <= 0.6 and 0.05 <= large <= 0.3


def test_other_sizes_scale_objects(tmp_path: Path) -> None:
    paths = generate_shapes(tmp_path, train=3, val=1, size=96, seed=1)
    coco = COCO(str(paths.train_ann))
    assert all(img["width"] == img["height"] == 96 for img in coco.loadImgs(coco.getImgIds()))
    assert all(a["bbox"][0] + a["bbox"][2] <= 96.001 for a in coco.loadAnns(coco.getAnnIds()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": -1, "val": 0}, "counts"),
        ({"train": 1, "val": 0, "size": 32}, "size"),
        ({"train": 1, "val": 0, "workers": 0}, "workers"),
    ],
)
def test_bad_arguments_raise_data_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        generate_shapes(tmp_path / "x", **kwargs)
    assert str(tmp_path / "x") in str(info.value)
    assert "\n" not in str(info.value)


def test_class_counts_give_exact_rare_instances(tmp_path: Path) -> None:
    counts = {"star": 7, "cross": 4}
    paths = generate_shapes(
        tmp_path / "lt", train=40, val=12, size=96, seed=5, class_counts=counts, val_class_counts={"star": 15}
    )
    train = COCO(str(paths.train_ann))
    by_name = {c["name"]: c["id"] for c in train.loadCats(train.getCatIds())}
    for name in CLASS_NAMES:
        n = len(train.getAnnIds(catIds=[by_name[name]]))
        assert n == counts.get(name, n) and n > 0, (name, n)
    # one forced instance per image while there are enough images
    holders = [
        a["image_id"] for a in train.loadAnns(train.getAnnIds(catIds=[by_name["star"], by_name["cross"]]))
    ]
    assert len(set(holders)) == len(holders) == 11
    val = COCO(str(paths.val_ann))
    assert len(val.getAnnIds(catIds=[by_name["star"]])) == 15
    # more forced instances than images: several per image, still exact
    dense = generate_shapes(tmp_path / "dense", train=3, val=0, size=96, seed=1, class_counts={"cross": 8})
    dense_coco = COCO(str(dense.train_ann))
    assert len(dense_coco.getAnnIds(catIds=[by_name["cross"]])) == 8
    # boxes still match the polygons (visible outlines) in the long-tailed variant
    for ann in train.loadAnns(train.getAnnIds()):
        xs, ys = ann["segmentation"][0][0::2], ann["segmentation"][0][1::2]
        assert ann["bbox"][0] <= min(xs) + 1e-6 and ann["bbox"][1] <= min(ys) + 1e-6


def test_class_counts_are_deterministic_and_leave_plain_images_alone(tmp_path: Path) -> None:
    a = generate_shapes(tmp_path / "a", train=10, val=0, size=64, seed=2, class_counts={"star": 3}, workers=2)
    b = generate_shapes(tmp_path / "b", train=10, val=0, size=64, seed=2, class_counts={"star": 3})
    assert _all_bytes(a.root) == _all_bytes(b.root)
    plain_img, plain_ann = render_image(64, seed=2, split="train", index=4)
    same_img, same_ann = render_image(64, seed=2, split="train", index=4, exclude=(), forced=())
    assert plain_img.tobytes() == same_img.tobytes() and plain_ann == same_ann


@pytest.mark.parametrize(
    ("counts", "match"),
    [({"blob": 3}, "unknown class"), ({"star": -1}, ">= 0"), ({"star": 13}, "do not fit")],
)
def test_bad_class_counts_raise_data_error(tmp_path: Path, counts: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        generate_shapes(tmp_path / "x", train=2, val=0, size=64, class_counts=counts)


def test_generating_into_an_old_dataset_leaves_no_old_images(tmp_path: Path) -> None:
    from detrkit.data.shapes import read_shapes_params

    root = tmp_path / "shapes"
    generate_shapes(root, train=6, val=2, size=64, seed=0)
    generate_shapes(root, train=3, val=1, size=64, seed=5)  # fewer images: the old ones must go
    assert len(list((root / "train").iterdir())) == 3 and len(list((root / "val").iterdir())) == 1
    assert len(json.loads((root / "annotations" / "train.json").read_text())["images"]) == 3
    assert read_shapes_params(root) == {"train": 3, "val": 1, "size": 64, "seed": 5, "class_counts": {},
                                        "val_class_counts": {}}  # fmt: skip


def test_generating_into_a_folder_with_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not empty and not a shapes dataset \(notes.txt\)"):
        generate_shapes(tmp_path, train=2, val=1, size=64, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_data_shapes_config_regenerates_when_the_parameters_differ(tmp_path: Path) -> None:
    from detrkit.config import load_config
    from detrkit.engine.builders import ensure_shapes

    root = tmp_path / "shapes"
    first = ensure_shapes(
        load_config(None, [f"data.shapes={{out: {root}, train: 4, val: 2, size: 64}}"]).data
    )
    assert len(json.loads(Path(first.train_ann).read_text())["images"]) == 4
    stamp = (root / "annotations" / "train.json").stat().st_mtime_ns
    ensure_shapes(load_config(None, [f"data.shapes={{out: {root}, train: 4, val: 2, size: 64}}"]).data)
    assert (root / "annotations" / "train.json").stat().st_mtime_ns == stamp  # same parameters: reused
    ensure_shapes(load_config(None, [f"data.shapes={{out: {root}, train: 7, val: 2, size: 64}}"]).data)
    coco = json.loads((root / "annotations" / "train.json").read_text())
    assert len(coco["images"]) == 7 == len(list((root / "train").iterdir()))  # config.yaml tells the truth
