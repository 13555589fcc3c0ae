"""CocoIndex: load/save round trip (checked with pycocotools), lookups, errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from detrkit.data.coco import CocoIndex
from detrkit.errors import AnnotationError


def test_round_trip_is_lossless_and_pycocotools_reads_it(tmp_path: Path, tiny_coco: dict) -> None:
    src = tiny_coco
    src["images"][0]["license"] = 3  # extra keys survive
    src["annotations"][0]["score_note"] = "kept"
    index = CocoIndex.from_dict(src, source="mem.json")
    out = index.save(tmp_path / "out" / "round.json")
    again = json.loads(out.read_text())
    assert again["info"] == {"description": "tiny"}
    assert again["images"] == src["images"]
    for a, b in zip(again["annotations"], src["annotations"], strict=True):
        assert a["bbox"] == b["bbox"] and a["id"] == b["id"] and a["iscrowd"] == b["iscrowd"]
    assert again["annotations"][0]["score_note"] == "kept"
    assert again["annotations"][3]["segmentation"] == [[4, 40, 44, 40, 44, 76]]

    coco = COCO(str(out))  # independent reader
    assert sorted(coco.getImgIds()) == [1, 2, 5]
    assert coco.getAnnIds(imgIds=[1]) == [10, 11]
    assert sorted(coco.getCatIds()) == [3, 7]
    assert CocoIndex.load(out).to_dict() == again


def test_lookups_and_contiguous_labels(tiny_coco: dict) -> None:
    index = CocoIndex.from_dict(tiny_coco)
    assert index.category_ids == [3, 7]
    assert index.class_names == ["cat", "dog"]
    assert index.cat_id_to_label == {3: 0, 7: 1}
    assert index.label_to_cat_id == {0: 3, 1: 7}
    assert [a.id for a in index.anns_by_image(1)] == [10, 11]
    assert index.anns_by_image(999) == []
    arr = index.ann_arrays()
    np.testing.assert_array_equal(arr["image_id"], [1, 1, 2, 5])
    np.testing.assert_allclose(arr["bbox_xywh"][1], [50, 20, 30, 30])
    assert arr["iscrowd"].tolist() == [0, 0, 1, 0]


def test_missing_area_is_box_area(tiny_coco: dict) -> None:
    d = tiny_coco
    del d["annotations"][0]["area"]
    assert CocoIndex.from_dict(d).annotations[0].area == 20 * 16


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("annotations"), "missing top-level key 'annotations'"),
        (lambda d: d.update(images={}), "'images' must be a list"),
        (lambda d: d["images"][1].pop("width"), "images[1] (id=2) is missing 'width'"),
        (lambda d: d["images"][0].update(id="1"), "images[0] field 'id' must be an integer"),
        (lambda d: d["annotations"][2].pop("bbox"), "annotation id=12 (index 2) is missing 'bbox'"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), "annotation id=11 field 'bbox'"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, "3", 4]), "annotation id=11 field 'bbox'"),
        (lambda d: d["annotations"][3].update(image_id=5.0), "annotation id=13 field 'image_id'"),
        (lambda d: d["annotations"][0].update(area="big"), "annotation id=10 field 'area'"),
        (lambda d: d["categories"][1].pop("name"), "category id=3 (index 1) is missing 'name'"),
    ],
)
def test_structural_errors_name_file_and_id(tmp_path: Path, tiny_coco: dict, mutate, expected: str) -> None:
    d = tiny_coco
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(AnnotationError) as err:
        CocoIndex.load(path)
    msg = str(err.value)
    assert str(path) in msg and expected in msg
    assert "\n" not in msg


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(AnnotationError, match=r"broken\.json: not valid JSON"):
        CocoIndex.load(bad)
    with pytest.raises(AnnotationError, match=r"nope\.json: annotation file not found"):
        CocoIndex.load(tmp_path / "nope.json")


def test_numpy_numbers_are_accepted_and_written_as_json(tiny_coco: dict) -> None:
    d = tiny_coco
    d["annotations"][0]["bbox"] = [np.float32(1.5), np.int64(2), 3.0, 4.0]
    d["annotations"][0]["id"] = np.int64(10)
    index = CocoIndex.from_dict(d)
    assert index.annotations[0].bbox_xywh == (1.5, 2.0, 3.0, 4.0)
    json.dumps(index.to_dict())  # plain Python numbers only
