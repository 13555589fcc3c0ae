"""Dataset layouts users have (Roboflow COCO, YOLO data.yaml, VOC) and other tools' predictions.

Each test writes a small dataset in the format, reads it with :mod:`detrkit.data.formats` and
compares with boxes computed by hand (or pycocotools-backed metrics on hand-made COCO results).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from detrkit.cli.main import app
from detrkit.data.coco import CocoIndex
from detrkit.data.formats import detect_layout, load_dataset, read_predictions
from detrkit.errors import AnnotationError
from detrkit.evaluation.coco import evaluate_coco

runner = CliRunner()


def roboflow_export(root: Path, write_image) -> Path:
    """train/ and valid/ with _annotations.coco.json: ids from 0, placeholder category 0."""
    cats = [
        {"id": 0, "name": "car-damage", "supercategory": "none"},
        {"id": 1, "name": "dent", "supercategory": "car-damage"},
        {"id": 2, "name": "scratch", "supercategory": "car-damage"},
    ]
    for split, n in (("train", 3), ("valid", 2)):
        images, anns = [], []
        for i in range(n):
            write_image(root / split / f"img{i}_jpg.rf.abc{i}.jpg", 80, 60, seed=i)
            images.append({"id": i, "file_name": f"img{i}_jpg.rf.abc{i}.jpg", "width": 80, "height": 60})
            anns.append({"id": 2 * i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 10], "area": 200,
                         "iscrowd": 0, "segmentation": []})  # fmt: skip
            anns.append({"id": 2 * i + 1, "image_id": i, "category_id": 2, "bbox": [40, 20, 30, 30],
                         "area": 900, "iscrowd": 0, "segmentation": []})  # fmt: skip
        ann = {"info": {}, "images": images, "annotations": anns, "categories": cats}
        (root / split / "_annotations.coco.json").write_text(json.dumps(ann))
    return root


def test_roboflow_export_placeholder_left_out_and_gt_scores_one(tmp_path: Path, image_writer) -> None:
    root = roboflow_export(tmp_path / "rf", image_writer)
    layout, splits = load_dataset(root)
    assert layout.format == "roboflow" and sorted(splits) == ["train", "val"]
    train = splits["train"]
    assert [(c.id, c.name) for c in train.index.categories] == [(1, "dent"), (2, "scratch")]
    assert train.report.notes == [
        f"{root / 'train' / '_annotations.coco.json'}: left out category 0 'car-damage' "
        "(Roboflow's placeholder: no annotations, the supercategory of every class)"
    ]
    assert train.images == root / "train"
    # GT as predictions: AP exactly 1 with ids from 0
    preds = [{"image_id": a.image_id, "category_id": a.category_id, "bbox": list(a.bbox_xywh), "score": 1.0}
             for a in splits["val"].index.annotations]  # fmt: skip
    assert evaluate_coco(splits["val"].index, preds).stats["AP"] == 1.0
    # YOLO predictions of a model trained on the export: class 0 is 'dent' (id 1), not the placeholder
    (tmp_path / "yolo_pred").mkdir()
    for im in splits["val"].index.images:
        (tmp_path / "yolo_pred" / (Path(im.file_name).stem + ".txt")).write_text(
            "0 0.1875 0.1667 0.25 0.1667 0.9\n1 0.6875 0.5833 0.375 0.5 0.8\n"
        )
    yolo_preds, used = read_predictions(tmp_path / "yolo_pred", root / "valid" / "_annotations.coco.json")
    assert used == "yolo-txt" and [p["category_id"] for p in yolo_preds[:2]] == [1, 2]
    assert evaluate_coco(splits["val"].index, yolo_preds).stats["AP50"] == 1.0
    res = runner.invoke(app, ["data", "check", "--data", str(root)])
    assert res.exit_code == 0, res.output
    assert "left out category 0 'car-damage'" in res.output and "roboflow train" in res.output


def yolo_dataset(root: Path, write_image) -> Path:
    """images/{train,val}, labels/...: boxes, a polygon, an empty file, an unknown class, a stray label."""
    for split in ("train", "val"):
        write_image(root / "images" / split / "a.jpg", 100, 50, seed=1)
        write_image(root / "images" / split / "b.png", 64, 64, seed=2)
        write_image(root / "images" / split / "c.jpg", 40, 40, seed=3)
        lbl = root / "labels" / split
        lbl.mkdir(parents=True)
        (lbl / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.3 0.4 0.2 0.6\n7 0.5 0.5 0.1 0.1\n")
        (lbl / "b.txt").write_text("")  # negative image
        (lbl / "stray.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
        (lbl / "c.txt").write_text("1 0.95 0.5 0.2 0.2\n")  # extends 2 px over the right border
    (root / "data.yaml").write_text(
        yaml.safe_dump(
            {"path": ".", "train": "images/train", "val": "images/val", "names": {0: "car", 1: "bus"}}
        )
    )
    return root


def test_yolo_reader_boxes_polygons_and_reports(tmp_path: Path, image_writer) -> None:
    root = yolo_dataset(tmp_path / "y", image_writer)
    layout, splits = load_dataset(root)
    assert layout.format == "yolo" and sorted(splits) == ["train", "val"]
    s = splits["train"]
    idx = s.index
    assert [(c.id, c.name) for c in idx.categories] == [(0, "car"), (1, "bus")]
    by_name = {im.file_name: im for im in idx.images}
    assert sorted(by_name) == ["a.jpg", "b.png", "c.jpg"] and by_name["a.jpg"].width == 100
    a_anns = idx.anns_by_image(by_name["a.jpg"].id)
    # hand computation: box 0.5 0.5 0.2 0.4 on 100x50 -> x 40, y 15, w 20, h 20
    np.testing.assert_allclose(a_anns[0].bbox_xywh, [40, 15, 20, 20], atol=1e-9)
    # polygon (10,10) (30,20) (20,30) in pixels: bounds x 10..30, y 10..30, area 150
    np.testing.assert_allclose(a_anns[1].bbox_xywh, [10, 10, 20, 20], atol=1e-9)
    assert a_anns[1].area == pytest.approx(150.0) and a_anns[1].segmentation == [[10, 10, 30, 20, 20, 30]]
    assert [a.category_id for a in a_anns] == [0, 1]
    rep = s.report
    assert (
        rep.count("unknown_class_index") == 1
        and "a.txt:3: class 7" in rep.problems["unknown_class_index"].details[0]
    )
    assert rep.count("empty_label_file") == 1 and rep.count("label_without_image") == 1
    assert idx.anns_by_image(by_name["b.png"].id) == []  # kept as a negative image
    res = runner.invoke(app, ["data", "check", "--data", str(root / "data.yaml"), "--json"])
    assert res.exit_code == 1  # unknown class index and the stray label are problems
    train = json.loads(res.stdout)["splits"][0]["problems"]
    assert train["box_outside_image"]["count"] == 1 and train["unknown_class_index"]["count"] == 1


def test_coco_yolo_coco_round_trip_keeps_boxes_and_ids(tmp_path: Path, make_dataset, tiny_coco) -> None:
    tiny_coco["annotations"] = [a for a in tiny_coco["annotations"] if not a["iscrowd"]]
    rng = np.random.default_rng(0)
    for a in tiny_coco["annotations"]:  # awkward fractions
        a["bbox"] = [float(v) + float(rng.random()) for v in a["bbox"][:2]] + [
            float(v) - 0.37 for v in a["bbox"][2:]
        ]
    ann, images = make_dataset(tiny_coco, name="instances_train.json")
    val = tmp_path / "instances_val.json"
    val.write_text(ann.read_text())
    (tmp_path / "annotations").mkdir()
    ann.rename(tmp_path / "annotations" / ann.name)
    val.rename(tmp_path / "annotations" / val.name)
    layout = detect_layout(tmp_path)
    assert layout.format == "coco" and sorted(layout.readers) == ["train", "val"]
    res = runner.invoke(
        app, ["data", "convert", "--from", "coco", "--to", "yolo", str(tmp_path), str(tmp_path / "yolo")]
    )
    assert res.exit_code == 0, res.output
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "cat", 1: "dog"} and data["detrkit_category_ids"] == [3, 7]
    res = runner.invoke(
        app, ["data", "convert", "--to", "coco", str(tmp_path / "yolo"), str(tmp_path / "back")]
    )
    assert res.exit_code == 0, res.output
    back = CocoIndex.load(tmp_path / "back" / "train.json")
    orig = CocoIndex.from_dict(tiny_coco)
    assert [(c.id, c.name) for c in sorted(back.categories, key=lambda c: c.id)] == [(3, "cat"), (7, "dog")]
    size = {im.file_name: (im.width, im.height) for im in orig.images}
    want = sorted(
        (orig.image_by_id()[a.image_id].file_name, a.category_id, a.bbox_xywh) for a in orig.annotations
    )
    got = sorted(
        (back.image_by_id()[a.image_id].file_name, a.category_id, a.bbox_xywh) for a in back.annotations
    )
    assert [(f, c) for f, c, _ in got] == [(f, c) for f, c, _ in want]
    for (f, _, b1), (_, _, b2) in zip(want, got, strict=True):
        w, h = size[f]
        assert np.max(np.abs(np.subtract(b1, b2)) / [w, h, w, h]) < 1e-6


def test_voc_to_coco(tmp_path: Path, image_writer) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem, objs in (("000001", [("dog", 11, 21, 40, 50, 0), ("cat", 1, 1, 10, 10, 1)]), ("000002", [])):
        image_writer(root / "JPEGImages" / f"{stem}.jpg", 64, 64)
        xml_objs = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for n, x0, y0, x1, y1, d in objs
        )
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>64</width><height>64</height>"
            f"<depth>3</depth></size>{xml_objs}</annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("000001\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    layout, splits = load_dataset(tmp_path)
    assert layout.format == "voc" and sorted(splits) == ["train", "val"]
    idx = splits["train"].index
    assert [(c.id, c.name) for c in idx.categories] == [(1, "cat"), (2, "dog")]
    # VOC 1-based inclusive: xmin 11 .. xmax 40 -> x 10, w 30
    assert [a.bbox_xywh for a in idx.annotations] == [(10, 20, 30, 30), (0, 0, 10, 10)]
    assert idx.annotations[1].extra == {"difficult": 1}
    assert splits["val"].report.count("empty_label_file") == 1


def test_other_tools_predictions_match_coco_results(tmp_path: Path, image_writer) -> None:
    root = yolo_dataset(tmp_path / "y", image_writer)
    _, splits = load_dataset(root)
    gt = splits["val"].index
    gt_path = gt.save(tmp_path / "val.json")
    im = {i.file_name: i for i in gt.images}
    # reference predictions in COCO results form, made by hand
    ref = [
        {"image_id": im["a.jpg"].id, "category_id": 0, "bbox": [41.0, 15.0, 20.0, 20.0], "score": 0.9},
        {"image_id": im["a.jpg"].id, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.4},
        {"image_id": im["b.png"].id, "category_id": 1, "bbox": [0.0, 0.0, 32.0, 16.0], "score": 0.7},
    ]
    expected = evaluate_coco(gt, ref).stats
    txt = tmp_path / "pred" / "labels"
    txt.mkdir(parents=True)
    (txt / "a.txt").write_text("0 0.51 0.5 0.2 0.4 0.9\n1 0.2 0.4 0.2 0.4 0.4\n")
    (txt / "b.txt").write_text("1 0.25 0.125 0.5 0.25 0.7\n")
    ultra = [{"image_id": "a", "category_id": 1, "bbox": [41, 15, 20, 20], "score": 0.9},
             {"image_id": "a", "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.4},
             {"image_id": "b", "category_id": 2, "bbox": [0, 0, 32, 16], "score": 0.7}]  # fmt: skip
    (tmp_path / "ultra.json").write_text(json.dumps(ultra))
    rf = {"a.jpg": {"predictions": [{"x": 51, "y": 25, "width": 20, "height": 20, "confidence": 0.9, "class": "car"},
                                    {"x": 20, "y": 20, "width": 20, "height": 20, "confidence": 0.4, "class": "bus"}]},
          "b.png": {"predictions": [{"x": 16, "y": 8, "width": 32, "height": 16, "confidence": 0.7, "class": "bus"}]}}  # fmt: skip
    (tmp_path / "rf.json").write_text(json.dumps(rf))
    for source, fmt in ((tmp_path / "pred", "yolo-txt"), (tmp_path / "ultra.json", "ultralytics"), (tmp_path / "rf.json", "roboflow")):  # fmt: skip
        preds, used = read_predictions(source, gt)
        assert used == fmt
        got = evaluate_coco(gt, preds).stats
        np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-6, err_msg=fmt)
    res = runner.invoke(app, ["eval", "--gt", str(gt_path), "--pred", str(tmp_path / "pred"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stats"]["AP"] == pytest.approx(expected["AP"], abs=1e-9)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zzz.txt").write_text("0 0.5 0.5 0.1 0.1 0.3\n")
    res = runner.invoke(app, ["eval", "--gt", str(gt_path), "--pred", str(bad)])
    assert isinstance(res.exception, AnnotationError)  # the CLI prints it as one line, exit 2
    assert str(res.exception) == f"{bad / 'zzz.txt'}: image 'zzz' is not an image of the ground truth"


def test_folder_of_split_files_with_images_option(tmp_path: Path, make_dataset) -> None:
    (tmp_path / "splits").mkdir()
    ann, images = make_dataset(name="splits/train.json")
    (tmp_path / "splits" / "val.json").write_text(ann.read_text())
    layout, splits = load_dataset(tmp_path / "splits", images=images)
    assert layout.format == "coco" and list(splits) == ["train", "val"]
    assert splits["val"].images == images and len(splits["val"].index.images) == 3
