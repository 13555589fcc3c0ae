"""End to end through the CLI: synth -> train (and resume) -> predict on GeoTIFF, PNG and with user GSD."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from typer.testing import CliRunner

from detrkit.aerial.predict import AerialPredictor, measure_mask_file
from detrkit.cli.main import app

runner = CliRunner()


def test_synth_command(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "aerial",
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--cities",
            "1",
            "--tiles-per-city",
            "2",
            "--size",
            "96",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["tiles"] == 2 and (tmp_path / "s" / "train" / "gt" / "alpha2.tif").is_file()


@pytest.mark.slow
def test_train_resume_predict(synth_dir: Path, tmp_path: Path) -> None:
    args = [
        "aerial",
        "train",
        "--config",
        "tiny-synth",
        "--quiet",
        f"data={synth_dir}",
        f"out={tmp_path}",
        "epochs=1",
        "crop=64",
        "batch_size=4",
        "samples_per_tile=2",
        "val_samples_per_tile=1",
        "tensorboard=false",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    run = tmp_path / "aerial-tiny"
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    res = runner.invoke(
        app, ["aerial", "train", "--config", "tiny-synth", "--quiet", "--resume", str(run), "epochs=2"]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO((run / "metrics.csv").read_text())))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("val/IoU", "val/accuracy", "val/F1", "val/gsd_mape", "train/loss_boundary", "train/loss_gsd"):
        assert np.isfinite(float(rows[-1][key]))
    assert int(rows[1]["step"]) == 2 * int(rows[0]["step"])

    tile = synth_dir / "train" / "images" / "alpha6.tif"
    res = runner.invoke(
        app,
        [
            "aerial",
            "predict",
            "--model",
            str(run),
            "--source",
            str(tile),
            "--out",
            str(tmp_path / "p"),
            "--json",
            "--tile",
            "64",
            "--overlap",
            "16",
        ],
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["gsd"]["source"] == "georeference" and s["tiles"] == 9
    for name in (
        "mask.tif",
        "prob.tif",
        "overlay.png",
        "probability.png",
        "buildings.geojson",
        "buildings.csv",
        "summary.json",
    ):
        assert (tmp_path / "p" / name).is_file(), name
    with rasterio.open(tile) as src, rasterio.open(tmp_path / "p" / "mask.tif") as m:
        assert m.crs == src.crs and m.transform == src.transform and m.shape == src.shape
    # the area summary is exactly what `aerial area` measures on the written mask
    rep = measure_mask_file(tmp_path / "p" / "mask.tif")
    assert (
        s["built_area_m2"] == pytest.approx(rep.built_area_m2) and s["building_count"] == rep.building_count
    )


def test_predict_png_and_user_gsd(random_checkpoint: Path, tmp_path: Path) -> None:
    from detrkit.aerial.synth import render_tile

    img = render_tile(np.random.default_rng(2), 100, 0.5)[0]
    png = tmp_path / "a.png"
    Image.fromarray(img).save(png)
    pred = AerialPredictor.from_checkpoint(random_checkpoint, device="cpu")
    s = pred.predict_file(png, tmp_path / "o1")
    assert s["gsd"]["source"] == "model" and s["gsd"]["metres_per_pixel"] == pytest.approx(s["model_gsd_m"])
    assert (s["width"], s["height"]) == (100, 100)
    px = s["built_pixels"]
    assert s["built_area_m2"] == pytest.approx(px * s["model_gsd_m"] ** 2)
    s2 = pred.predict_file(png, tmp_path / "o2", user_gsd=0.25)
    assert s2["gsd"]["source"] == "user" and s2["built_area_m2"] == pytest.approx(px * 0.0625)
    s3 = pred.predict_file(png, tmp_path / "o3", zoom=18, lat=45.0)
    assert s3["gsd"]["source"] == "zoom"
    geo = json.loads((tmp_path / "o1" / "buildings.geojson").read_text())
    assert geo["detrkit:coordinates"] == "pixel"
    assert np.asarray(Image.open(tmp_path / "o1" / "overlay.png")).shape == (100, 100, 3)


def test_predict_errors(random_checkpoint: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["aerial", "predict", "--model", str(tmp_path / "none"), "--source", "x.png", "--out", str(tmp_path)],
    )
    assert res.exit_code != 0
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(
        app,
        [
            "aerial",
            "predict",
            "--model",
            str(random_checkpoint),
            "--source",
            str(empty),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code != 0 and "no images" in str(res.exception)


def test_model_threshold_is_the_default(random_checkpoint: Path, tmp_path: Path) -> None:
    """A threshold stored in the model file is used unless one is given; the mask follows it."""
    from detrkit.aerial.synth import render_tile

    ckpt = torch.load(random_checkpoint, map_location="cpu", weights_only=False)
    ckpt["threshold"] = 0.7
    path = tmp_path / "thr.pt"
    torch.save(ckpt, path)
    assert AerialPredictor.from_checkpoint(path, device="cpu").threshold == 0.7
    assert AerialPredictor.from_checkpoint(path, device="cpu", threshold=0.2).threshold == 0.2
    assert AerialPredictor.from_checkpoint(random_checkpoint, device="cpu").threshold == 0.5
    img = render_tile(np.random.default_rng(2), 96, 0.5)[0]
    png = tmp_path / "a.png"
    Image.fromarray(img).save(png)
    res = runner.invoke(
        app, ["aerial", "predict", "--model", str(path), "--source", str(png), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    (summary_file,) = (tmp_path / "o").rglob("summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["threshold"] == 0.7
    low = AerialPredictor.from_checkpoint(path, device="cpu", threshold=0.0).predict_file(
        png, tmp_path / "lo"
    )
    assert low["built_pixels"] == 96 * 96 >= summary["built_pixels"]
