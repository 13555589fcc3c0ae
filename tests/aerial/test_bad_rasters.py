"""Truncated GeoTIFFs in ``aerial predict`` / ``aerial area``: one line, no partial output folder;
over a folder, the bad file is skipped by name and the others are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from detrkit.cli.main import main


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def _geotiff(path: Path, bands: int, size: int = 256, *, tiled: bool) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (bands, size, size), dtype=np.uint8)
    if bands == 1:
        data = (data > 128).astype(np.uint8) * 255
    extra = {"tiled": True, "blockxsize": 128, "blockysize": 128} if tiled else {}
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.3, 0.3), **extra) as dst:  # fmt: skip
        dst.write(data)
    return path


def _truncate(path: Path, dest: Path) -> Path:
    data = path.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _one_error_line(err: str, name: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err
    assert "Traceback" not in err and "truncated or corrupt" in lines[0]


def test_predict_truncated_geotiff_is_one_line_and_leaves_no_output(
    random_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    bad = _truncate(_geotiff(tmp_path / "good.tif", 3, tiled=True), tmp_path / "bad.tif")
    out = tmp_path / "out"
    args = ["aerial", "predict", "--model", str(random_checkpoint), "--source", str(bad), "--out", str(out)]
    assert _run(args) == 2
    _one_error_line(capsys.readouterr().err, "bad.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", "good.tif"]  # no out/, no .out.partial


def test_area_of_truncated_mask_is_one_line(tmp_path: Path, capsys) -> None:
    bad = _truncate(_geotiff(tmp_path / "mask.tif", 1, tiled=False), tmp_path / "bad_mask.tif")
    assert _run(["aerial", "area", "--mask", str(bad), "--out", str(tmp_path / "area")]) == 2
    _one_error_line(capsys.readouterr().err, "bad_mask.tif")
    assert not (tmp_path / "area").exists()


def test_predict_folder_skips_the_bad_file(random_checkpoint: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    _geotiff(folder / "a.tif", 3, 128, tiled=False)
    _truncate(_geotiff(tmp_path / "b_full.tif", 3, tiled=True), folder / "b.tif")
    out = tmp_path / "out"
    args = [
        "aerial",
        "predict",
        "--model",
        str(random_checkpoint),
        "--source",
        str(folder),
        "--out",
        str(out),
    ]
    assert _run([*args, "--json"]) == 0
    captured = capsys.readouterr()
    summaries = json.loads(captured.out)
    assert [Path(s["source"]).name for s in summaries] == ["a.tif"]
    assert sorted(p.name for p in out.iterdir()) == ["a"]  # no b/ and no partial folder
    assert (out / "a" / "mask.tif").is_file() and json.loads((out / "a" / "summary.json").read_text())
    assert str(folder / "b.tif") in captured.err and "1 of 2 images predicted" in captured.err
    assert _run([*args, "--strict", "--out", str(tmp_path / "strict")]) == 1
