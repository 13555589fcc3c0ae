"""``detrkit data check``: every problem kind found, with ids, exit codes 0 / 1 / 2 and --json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detrkit.cli.main import app, main
from detrkit.data.check import check_dataset, classify_boxes

runner = CliRunner()


def _broken_dataset(make_dataset, tiny_coco, image_writer) -> tuple[Path, Path]:
    d = tiny_coco
    d["images"] += [
        {"id": 5, "file_name": "dup.jpg", "width": 64, "height": 80},  # duplicate image id 5
        {"id": 8, "file_name": "gone.jpg", "width": 64, "height": 64},  # file deleted below
        {"id": 9, "file_name": "size.jpg", "width": 70, "height": 64},  # file is 64x64
        {"id": 11, "file_name": "exif.jpg", "width": 60, "height": 40},  # stored 60x40, Orientation 6
        {"id": 12, "file_name": "trunc.png", "width": 64, "height": 64},
    ]
    d["annotations"] += [
        {"id": 30, "image_id": 1, "category_id": 3, "bbox": [5, 5, -2, 10], "iscrowd": 0},  # degenerate
        {
            "id": 31,
            "image_id": 1,
            "category_id": 3,
            "bbox": [80, 5, 30, 10],
            "iscrowd": 0,
        },  # outside (96 wide)
        {
            "id": 32,
            "image_id": 1,
            "category_id": 42,
            "bbox": [5, 5, 10, 10],
            "iscrowd": 0,
        },  # unknown category
        {"id": 33, "image_id": 404, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 0},  # dangling
        {"id": 10, "image_id": 2, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0},  # duplicate ann id
    ]
    ann, images = make_dataset(d)
    (images / "gone.jpg").unlink()
    image_writer(images / "size.jpg", 64, 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 40), (200, 10, 10)).save(images / "exif.jpg", exif=exif)
    data = (images / "trunc.png").read_bytes()
    (images / "trunc.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray((images / "a.jpg").read_bytes())  # image 1: corrupt JPEG header
    corrupt[2:120] = bytes(118)
    (images / "a.jpg").write_bytes(bytes(corrupt))
    return ann, images


def test_check_finds_every_problem_kind(make_dataset, tiny_coco, image_writer) -> None:
    ann, images = _broken_dataset(make_dataset, tiny_coco, image_writer)
    result = runner.invoke(app, ["data", "check", "--ann", str(ann), "--images", str(images), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    found = {k: (v["count"], v["ids"]) for k, v in report["problems"].items() if v["count"]}
    assert found == {
        "duplicate_image_id": (1, [5]),
        "duplicate_annotation_id": (1, [10]),
        "unknown_category": (1, [32]),
        "dangling_annotation": (1, [33]),
        "degenerate_box": (1, [30]),
        "box_outside_image": (1, [31]),
        "missing_image": (1, [8]),
        "unreadable_image": (2, [1, 12]),
        "size_mismatch": (1, [9]),
        "exif_size_mismatch": (1, [11]),
    }
    assert report["ok"] is False and report["images_checked"] == 8


def test_check_table_output_and_no_decode(make_dataset, tiny_coco, image_writer) -> None:
    ann, images = _broken_dataset(make_dataset, tiny_coco, image_writer)
    result = runner.invoke(app, ["data", "check", "--ann", str(ann), "--images", str(images)])
    assert result.exit_code == 1
    assert "missing_image" in result.output and "problem(s)" in result.output
    # header-only check: the truncated PNG opens fine, the corrupt JPEG header does not
    report = check_dataset(ann, images, decode=False)
    assert report.problems["unreadable_image"].ids == [1]


def test_clean_dataset_exits_zero(make_dataset) -> None:
    ann, images = make_dataset()
    result = runner.invoke(app, ["data", "check", "--ann", str(ann), "--images", str(images)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    result = runner.invoke(app, ["data", "check", "--ann", str(ann), "--json"])  # annotations only
    assert result.exit_code == 0 and json.loads(result.output)["images_checked"] == 0


def test_user_errors_exit_two_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": [{"id": 1}], "categories": []}')
    with pytest.raises(SystemExit) as exc:
        main(["data", "check", "--ann", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(bad) in err and "annotation id=1" in err
    assert len(err.splitlines()) == 1


def test_classify_boxes_by_hand() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [0, 0, 0, 5], [-1.5, 0, 5, 5], [95, 0, 2, 5], [90, 60, 6, 4.9], [np.nan, 0, 1, 1]]
    )
    degenerate, outside = classify_boxes(boxes, np.full(6, 96.0), np.full(6, 64.0))
    assert degenerate.tolist() == [False, True, False, False, False, True]
    # x = -1.5 is beyond the 1 px tolerance; 95 + 2 = 97 is at it; 60 + 4.9 = 64.9 within it
    assert outside.tolist() == [False, False, True, False, False, False]


def test_boxes_within_one_pixel_of_the_border_are_a_notice(make_dataset, tiny_coco) -> None:
    # image 1 is 96x64: one box 0.6 px over the right border, one exactly 1 px over the bottom
    tiny_coco["annotations"][0]["bbox"] = [76.6, 8, 20, 16]
    tiny_coco["annotations"][1]["bbox"] = [50, 35, 30, 30]
    ann, images = make_dataset(tiny_coco)
    report = check_dataset(ann, images, decode=False)
    border = report.problems["box_at_border"]
    assert border.count == 2 and border.ids == [10, 11] and report.problems["box_outside_image"].count == 0
    assert report.ok and report.num_notices == 2
    result = runner.invoke(app, ["data", "check", "--ann", str(ann), "--images", str(images)])
    assert result.exit_code == 0, result.output
    assert "box_at_border" in result.output and "2 notice(s)" in result.output
    tiny_coco["annotations"][1]["bbox"] = [50, 35, 30, 30.01]  # more than 1 px over: a problem
    ann, _ = make_dataset(tiny_coco, name="over.json")
    assert check_dataset(ann).problems["box_outside_image"].ids == [11]
