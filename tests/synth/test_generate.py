"""Offline synthesis end to end: files, ids, metadata, and annotations checked against pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as pcm

from detrkit.data.coco import CocoIndex
from detrkit.synth.copy_paste import PasteParams
from detrkit.synth.generate import SynthOptions, choose_classes, synthesize
from detrkit.synth.rare import SynthError

from .conftest import BLUE, GREY, RED


def _mask(ann: dict, h: int, w: int) -> np.ndarray:
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        return pcm.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
    return pcm.decode(pcm.merge(pcm.frPyObjects(seg, h, w))).astype(bool)


@pytest.mark.parametrize("scaled", [False, True])
def test_copy_paste_files_ids_and_exact_masks(solid_dataset, tmp_path, scaled: bool) -> None:
    ann_path, images = solid_dataset
    index = CocoIndex.load(ann_path)
    scale = (0.6, 1.5) if scaled else (1.0, 1.0)
    opts = SynthOptions(
        method="copy-paste",
        per_class=6,
        seed=3,
        image_format="png",
        min_area=16,
        paste=PasteParams(feather=0, max_cover=0.5, drop_occluded=0.6, scale_range=scale),
    )
    summary = synthesize(index, images, tmp_path / "out", classes=["disc"], options=opts)
    assert summary["images"] == 6 and summary["per_class"] == {"disc": 6}
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert coco["categories"] == json.loads(ann_path.read_text())["categories"]
    assert min(im["id"] for im in coco["images"]) > 107 and min(a["id"] for a in coco["annotations"]) > 507
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert meta["method"] == "copy-paste" and len(meta["images"]) == 6
    assert Image.open(tmp_path / "out" / "samples.png").size[0] > 0
    CocoIndex.load(tmp_path / "out" / "annotations.json")  # valid for our loader
    pasted_total = 0
    for im, m in zip(coco["images"], meta["images"], strict=True):
        assert m["file_name"] == im["file_name"] and m["source_image"].endswith(".png")
        pixels = np.asarray(Image.open(tmp_path / "out" / "images" / im["file_name"]).convert("RGB"))
        h, w = pixels.shape[:2]
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        for cat, colour in ((2, RED), (1, BLUE)):
            union = np.zeros((h, w), bool)
            for a in anns:
                if a["category_id"] == cat:
                    mk = _mask(a, h, w)
                    ys, xs = np.nonzero(mk)
                    assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                    union |= mk
            if not scaled:  # hard edges, no resampling: a class's pixels are exactly its masks' union
                np.testing.assert_array_equal(union, (pixels == colour).all(-1))
            elif cat == 2:  # resampled edges: inside, at least half red; outside, untouched pixels
                d_red = np.abs(pixels[union].astype(int) - RED).sum(-1)
                d_grey = np.abs(pixels[union].astype(int) - GREY).sum(-1)
                assert (d_red <= d_grey + 3).all()
                outside = pixels[~union]
                assert ((outside == GREY).all(-1) | (outside == BLUE).all(-1)).all()
            else:  # blue objects were never resampled: exact
                np.testing.assert_array_equal(union, (pixels == colour).all(-1))
        pasted_total += len(m["pastes"])
        assert sum(a["category_id"] == 2 for a in anns) >= len(m["pastes"]) >= 1
    assert pasted_total >= 6


def test_augment_keeps_the_class_and_is_reproducible(shapes_dataset, tmp_path) -> None:
    index = CocoIndex.load(shapes_dataset.train_ann)
    classes = choose_classes(index, rare_k=1)
    opts = SynthOptions(method="augment", per_class=4, seed=1, image_format="png")
    synthesize(index, shapes_dataset.train_images, tmp_path / "a", classes=classes, options=opts)
    synthesize(index, shapes_dataset.train_images, tmp_path / "b", classes=classes, options=opts)
    a = json.loads((tmp_path / "a" / "annotations.json").read_text())
    b = json.loads((tmp_path / "b" / "annotations.json").read_text())
    assert a == b
    cid = {c["name"]: c["id"] for c in a["categories"]}[classes[0]]
    for im in a["images"]:
        assert any(x["category_id"] == cid for x in a["annotations"] if x["image_id"] == im["id"])
        assert (tmp_path / "a" / "images" / im["file_name"]).read_bytes() == (
            tmp_path / "b" / "images" / im["file_name"]
        ).read_bytes()
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert {"crop", "angle", "flip", "brightness"} <= set(meta["images"][0]["ops"])


def test_errors_are_one_line_and_name_the_file(solid_dataset, tmp_path) -> None:
    ann_path, images = solid_dataset
    index = CocoIndex.load(ann_path)
    with pytest.raises(SynthError, match="no class named 'dsic'.*did you mean 'disc'") as err:
        synthesize(index, images, tmp_path, classes=["dsic"], options=SynthOptions())
    assert str(ann_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SynthError, match="no instance of empty"):
        synthesize(index, images, tmp_path, classes=["empty"], options=SynthOptions(min_area=1))
    with pytest.raises(SynthError, match="no image holds class 'empty'"):
        synthesize(index, images, tmp_path, classes=["empty"], options=SynthOptions(method="augment"))
    with pytest.raises(SynthError, match="--classes"):
        choose_classes(index)
