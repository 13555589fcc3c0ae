"""subset / merge / split: correctness by hand, determinism, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from detrkit.cli.main import app
from detrkit.data.coco import CocoIndex
from detrkit.data.dataset import CocoDetection
from detrkit.data.ops import merge, split, subset

runner = CliRunner()


def _zoo() -> dict:
    """10 images; person (id 1) in 1-6, car (id 2) in 2 and 7, dog (id 5) in 8; 9-10 empty; a crowd car on 3."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in range(1, 11)]
    anns, k = [], 100
    for img, cat, crowd in [
        (1, 1, 0),
        (2, 1, 0),
        (2, 2, 0),
        (3, 1, 0),
        (3, 2, 1),
        (4, 1, 0),
        (5, 1, 0),
        (6, 1, 0),
        (7, 2, 0),
        (8, 5, 0),
    ]:
        k += 1
        anns.append(
            {
                "id": k,
                "image_id": img,
                "category_id": cat,
                "bbox": [1, 1, 10, 10],
                "area": 100,
                "iscrowd": crowd,
            }
        )
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}, {"id": 5, "name": "dog"}]
    return {"images": images, "annotations": anns, "categories": cats}


def test_subset_keeps_classes_in_given_order() -> None:
    out = subset(CocoIndex.from_dict(_zoo()), ["dog", "car"])
    assert [(c.id, c.name) for c in out.categories] == [(1, "dog"), (2, "car")]
    # images with a kept non-crowd box: car on 2 and 7, dog on 8 (3 has only a crowd car)
    assert [im.id for im in out.images] == [2, 7, 8]
    assert [(a.id, a.image_id, a.category_id) for a in out.annotations] == [
        (103, 2, 2),
        (109, 7, 2),
        (110, 8, 1),
    ]


def test_subset_negatives_and_max_images_are_deterministic() -> None:
    index = CocoIndex.from_dict(_zoo())
    out = subset(index, ["car"], negatives=0.5, seed=3)
    pos = {2, 7}
    ids = {im.id for im in out.images}
    assert pos <= ids and len(ids - pos) == 2  # as many negatives as positives at fraction 0.5
    again = subset(index, ["car"], negatives=0.5, seed=3)
    assert again.to_dict() == out.to_dict()
    capped = subset(index, ["person"], max_images=4, seed=1)
    assert len(capped.images) == 4 and {im.id for im in capped.images} <= {1, 2, 3, 4, 5, 6}
    draws = {tuple(im.id for im in subset(index, ["person"], max_images=3, seed=s).images) for s in range(6)}
    assert len(draws) > 1  # the seed matters


def test_subset_cli_and_unknown_name(tmp_path: Path) -> None:
    src = tmp_path / "zoo.json"
    src.write_text(json.dumps(_zoo()))
    out = tmp_path / "sub.json"
    result = runner.invoke(
        app, ["data", "subset", "--ann", str(src), "--classes", "dog", "person", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert [c["name"] for c in json.loads(out.read_text())["categories"]] == ["dog", "person"]
    result = runner.invoke(
        app, ["data", "subset", "--ann", str(src), "--classes", "unicorn", "--out", str(out)]
    )
    assert result.exit_code != 0 and "unicorn" in str(result.exception)


def _second() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 64, "height": 64},
            {"id": 7, "file_name": "x.jpg", "width": 64, "height": 64},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 10, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 11, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 12, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        ],
        "categories": [
            {"id": 10, "name": "human"},
            {"id": 11, "name": "automobile"},
            {"id": 12, "name": "tree"},
        ],
    }


def test_merge_by_hand() -> None:
    a, b = CocoIndex.from_dict(_zoo()), CocoIndex.from_dict(_second())
    out = merge(
        [a, b],
        mapping={"human": "person", "automobile": "car", "tree": None, "dog": "drop"},
        tags=["zoo", "street"],
    )
    assert [(c.id, c.name) for c in out.categories] == [(1, "person"), (2, "car")]
    assert [im.id for im in out.images] == list(range(1, 13))
    assert out.images[0].file_name == "zoo/1.jpg" and out.images[10].file_name == "street/1.jpg"
    # zoo keeps 9 annotations (dog dropped), street keeps human and automobile
    assert len(out.annotations) == 11 and [a.id for a in out.annotations] == list(range(1, 12))
    assert [(a.image_id, a.category_id) for a in out.annotations[-2:]] == [(11, 1), (12, 2)]


def test_merge_cli_links_image_roots_for_training(tmp_path: Path, make_dataset) -> None:
    ann_a, img_a = make_dataset(_zoo(), name="zoo.json", root="zoo_images")
    ann_b, img_b = make_dataset(_second(), name="street.json", root="street_images")
    (tmp_path / "map.yaml").write_text("human: person\nautomobile: car\ntree: null\n")
    out = tmp_path / "merged" / "all.json"
    result = runner.invoke(
        app,
        [
            "data",
            "merge",
            str(ann_a),
            str(ann_b),
            "--map",
            str(tmp_path / "map.yaml"),
            "--out",
            str(out),
            "--images",
            str(img_a),
            "--images",
            str(img_b),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["tags"] == ["zoo", "street"] and summary["images"] == 12
    assert [c["name"] for c in summary["classes"]] == ["person", "car", "dog"]
    ds = CocoDetection(out, summary["images_dir"])  # every file is found through the links
    assert len(ds) == 12 and all(ds[i] is not None for i in range(len(ds)))
    assert ds.skipped == 0


def _rare_zoo() -> dict:
    """40 images of 'common', a 'rare' class on exactly two of them, 'single' on one."""
    d = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in range(1, 41)],
        "annotations": [],
        "categories": [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}, {"id": 3, "name": "single"}],
    }
    for i in range(1, 41):
        d["annotations"].append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
        )
    for k, (img, cat) in enumerate([(7, 2), (30, 2), (12, 3)]):
        d["annotations"].append(
            {"id": 100 + k, "image_id": img, "category_id": cat, "bbox": [1, 1, 5, 5], "iscrowd": 0}
        )
    return d


def test_split_is_disjoint_stratified_and_deterministic() -> None:
    index = CocoIndex.from_dict(_rare_zoo())
    for seed in range(5):
        train, val = split(index, val_fraction=0.1, seed=seed)
        t_ids, v_ids = {im.id for im in train.images}, {im.id for im in val.images}
        assert not t_ids & v_ids and t_ids | v_ids == set(range(1, 41))
        assert len(v_ids) == 4
        assert 7 in t_ids | v_ids and ({7, 30} & t_ids) and ({7, 30} & v_ids)  # rare class in both parts
        assert len(train.annotations) + len(val.annotations) == 43
        again = split(index, val_fraction=0.1, seed=seed)
        assert again[1].to_dict() == val.to_dict()


def test_split_cli(tmp_path: Path) -> None:
    src = tmp_path / "zoo.json"
    src.write_text(json.dumps(_rare_zoo()))
    result = runner.invoke(
        app,
        [
            "data",
            "split",
            "--ann",
            str(src),
            "--val-fraction",
            "0.25",
            "--seed",
            "1",
            "--out-dir",
            str(tmp_path / "parts"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["val"]["images"] == 10 and summary["train"]["images"] == 30
    rare = next(c for c in summary["classes"] if c["name"] == "rare")
    assert rare == {"name": "rare", "train_images": 1, "val_images": 1}
    assert CocoIndex.load(tmp_path / "parts" / "val.json").category_ids == [1, 2, 3]
