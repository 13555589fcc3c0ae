"""Real-imagery support on generated stand-ins: folder layout, area split, band scaling, augmentations,
unknown-GSD masking, GSD calibration, polygon rasterising and the model card. No shared data needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image

from detrkit.aerial.augment import AugmentSpec, augment_crop, rotate_pair
from detrkit.aerial.config import load_aerial_config
from detrkit.aerial.data import IMAGENET_MEAN, IMAGENET_STD, AerialCrops
from detrkit.aerial.gsd import UNCERTAIN_GSD, GsdCalibration, GsdEstimate, describe_area
from detrkit.aerial.losses import gsd_loss
from detrkit.aerial.metrics import SegmentationMeter
from detrkit.aerial.sources import SourceSpec, area_split, band_scale, list_source_tiles
from detrkit.aerial.train import data_sources
from detrkit.aerial.vector import rasterize_labels
from detrkit.errors import ConfigError, DataError


def _grid_folder(root: Path, rows: list[int], cols: list[int], size: int = 64) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for r in rows:
        for c in cols:
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / "images" / f"sc_{r}_{c}.jpg"
            )
            mask = np.zeros((size, size), np.uint8)
            mask[8:30, 10:40] = 255
            Image.fromarray(mask).save(root / "masks" / f"sc_{r}_{c}.png")


def test_area_split_by_rows_with_a_guard_band(tmp_path: Path) -> None:
    rows = [0, 1024, 2048, 3072, 4096, 5120, 6144, 7168]
    _grid_folder(tmp_path / "d", rows, [0, 1024])
    spec = SourceSpec(str(tmp_path / "d"), gsd=0.1, gsd_known=False, holdout=0.25)
    val = list_source_tiles(spec, "val")
    train = list_source_tiles(spec, "train")
    # 8 rows, 25 %: rows 6144 and 7168 are validation, 5120 is the guard band, 0..4096 train
    assert sorted({int(t.image.stem.split("_")[1]) for t in val}) == [6144, 7168]
    assert sorted({int(t.image.stem.split("_")[1]) for t in train}) == [0, 1024, 2048, 3072, 4096]
    assert len(list_source_tiles(spec, "all")) == 14
    assert all(t.gsd == 0.1 and not t.gsd_known for t in val)
    # names without the grid pattern fall back to name order
    tr, va = area_split(["b", "a", "d", "c"], 0.25)
    assert (tr, va) == ({"a", "b", "c"}, {"d"})


def test_folder_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an aerial dataset"):
        list_source_tiles(SourceSpec(str(tmp_path)))
    _grid_folder(tmp_path / "d", [0], [0])
    (tmp_path / "d" / "masks" / "sc_0_0.png").unlink()
    with pytest.raises(DataError, match="has no mask"):
        list_source_tiles(SourceSpec(str(tmp_path / "d")), "all")
    with pytest.raises(DataError, match="unknown data entry keys"):
        SourceSpec.parse({"path": "x", "gdd": 1})
    with pytest.raises(ConfigError, match="data="):
        load_aerial_config("tiny-synth", ["data=3"])


def test_16bit_one_band_tiles_are_scaled_by_percentiles(tmp_path: Path) -> None:
    root = tmp_path / "pan"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    pan = rng.integers(200, 2200, (64, 64)).astype(np.uint16)
    prof = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "crs": "EPSG:32616"}
    prof["transform"] = Affine(0.5, 0, 700000, 0, -0.5, 3700000)
    with rasterio.open(root / "images" / "t.tif", "w", dtype="uint16", **prof) as dst:
        dst.write(pan[None])
    with rasterio.open(root / "masks" / "t.tif", "w", dtype="uint8", **prof) as dst:
        dst.write((pan > 1500).astype(np.uint8)[None] * 255)
    (tile,) = list_source_tiles(SourceSpec(str(root)), "all")
    lo, hi = np.percentile(pan.astype(np.float64), [0.5, 99.5])
    assert tile.band_scale == pytest.approx((lo, hi)) and tile.bands == (1,)
    assert tile.gsd == pytest.approx(0.5) and tile.gsd_known  # georeference wins over the spec
    ds = AerialCrops(
        SourceSpec(str(root)), split="all", crop=64, samples_per_tile=1, scale_range=(1, 1), train=False
    )
    item = ds[0]
    u8 = np.clip((pan - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    expect = (u8[None].repeat(3, 0) / 255.0 - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    assert np.allclose(item["image"].numpy(), expect, atol=1e-5)
    assert np.array_equal(item["mask"][0].numpy() > 0, pan > 1500)
    assert float(item["log_gsd"]) == pytest.approx(math.log(0.5))
    with rasterio.open(root / "images" / "t.tif") as src:
        assert band_scale(src) == pytest.approx((lo, hi))


def test_small_tiles_rescaled_coarser_than_the_crop_are_reflected(tmp_path: Path) -> None:
    _grid_folder(tmp_path / "d", [0, 1024, 2048, 3072], [0])
    spec = SourceSpec(str(tmp_path / "d"), gsd=0.1, gsd_known=False, scale_range=(2.0, 2.0))
    ds = AerialCrops([spec], split="train", crop=64, samples_per_tile=1, train=False)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and math.isnan(float(item["log_gsd"]))
    m = item["mask"][0].numpy()
    # the 64 px tile at 2x is 32 px, reflected (numpy "reflect": the edge pixel is not repeated)
    assert m[:32, :32].any() and np.array_equal(m[:, 32:63], m[:, :31][:, ::-1])
    assert np.array_equal(m[32:63], m[:31][::-1])


def test_augmentations_keep_mask_and_image_together() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    image = np.repeat((mask * 255).astype(np.uint8)[None], 3, 0)
    for angle in (30.0, 90.0, 200.0):
        img_r, m_r = rotate_pair(image, mask, angle)
        agree = ((img_r[0] > 127) == m_r).mean()
        assert agree > 0.98, angle
    ref = np.rot90(mask, 1)
    assert np.array_equal(rotate_pair(image, mask, 90.0)[1], ref)
    photo = AugmentSpec(
        p_rotate=0.0, p_colour=1, p_gray=1, p_stretch=1, p_shadow=1, p_blur=1, p_noise=1, p_jpeg=1
    )
    for seed in range(5):
        out, m = augment_crop(image, mask, np.random.default_rng(seed), photo)
        assert out.shape == image.shape and out.dtype == np.uint8 and np.array_equal(m, mask)
        assert (out[0] == out[1]).all()  # one-band imagery: the three bands are the same
    out, m = augment_crop(image, mask, rng, AugmentSpec.off())
    assert np.array_equal(out, image) and np.array_equal(m, mask)


def test_unknown_gsd_is_left_out_of_the_loss_and_the_metric() -> None:
    pred = torch.tensor([0.0, 1.0, -1.0, 2.0])
    true = torch.tensor([0.5, float("nan"), -0.5, float("nan")])
    assert float(gsd_loss(pred, true)) == pytest.approx((0.5 + 0.5) / 2)
    assert float(gsd_loss(pred, torch.full((4,), float("nan")))) == 0.0
    meter = SegmentationMeter()
    ones = torch.ones(4, 1, 2, 2)
    meter.update(ones, ones, pred, true)
    assert meter.compute()["gsd_mape"] == pytest.approx(
        100 * (abs(math.exp(-0.5) - 1) + abs(math.exp(-0.5) - 1)) / 2
    )


def test_gsd_calibration_by_hand() -> None:
    x = np.log(np.array([0.2, 0.4, 0.8, 1.6, 0.3]))
    cal = GsdCalibration.fit(x, 0.8 * x + 0.1)
    assert (cal.slope, cal.intercept, cal.residual_sd) == pytest.approx((0.8, 0.1, 0.0), abs=1e-9)
    noisy = 0.8 * x + 0.1 + np.array([0.1, -0.1, 0.1, -0.1, 0.0])
    cal = GsdCalibration.fit(x, noisy)
    resid = noisy - (cal.slope * x + cal.intercept)
    assert cal.residual_sd == pytest.approx(math.sqrt((resid**2).sum() / 3))
    tiles = [math.log(0.5), math.log(0.7)]
    est = cal.estimate(tiles)
    sigma = math.sqrt(cal.residual_sd**2 + (cal.slope * np.std(tiles, ddof=1)) ** 2 / 2)
    assert est.metres_per_pixel == pytest.approx(math.exp(cal.slope * np.mean(tiles) + cal.intercept))
    assert est.uncertainty == pytest.approx(math.exp(sigma) - 1)
    assert (est.warning is not None) == (est.uncertainty > UNCERTAIN_GSD)
    wide = GsdCalibration(1.0, 0.0, 0.5, 10).estimate([0.0])
    assert wide.warning and "±65%" in wide.warning
    assert describe_area(12_300.4, GsdEstimate(0.31, "model", uncertainty=0.2)) == (
        "area 12,300 m² (GSD estimated 0.31 m, ±20%)"
    )
    assert describe_area(100.0, GsdEstimate(0.5, "user")) == "area 100 m² (GSD 0.50 m from user)"


def test_rasterize_lonlat_polygons_onto_a_utm_tile(tmp_path: Path) -> None:
    from rasterio.warp import transform

    prof = {"driver": "GTiff", "width": 100, "height": 80, "count": 3, "dtype": "uint8", "crs": "EPSG:32631"}
    prof["transform"] = Affine(0.5, 0, 500000, 0, -0.5, 5000040)
    img = tmp_path / "tile.tif"
    with rasterio.open(img, "w", **prof) as dst:
        dst.write(np.zeros((3, 80, 100), np.uint8))
    squares = [(500005, 5000030, 10), (500030, 5000020, 6)]  # x0, y_top, side in metres
    feats = []
    for x0, y0, s in squares:
        xs, ys = [x0, x0 + s, x0 + s, x0, x0], [y0, y0, y0 - s, y0 - s, y0]
        ring = [list(p) for p in zip(*transform("EPSG:32631", "EPSG:4326", xs, ys), strict=True)]
        feats.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
        )
    labels = tmp_path / "b.geojson"
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    info = rasterize_labels(img, labels, tmp_path / "ds")
    assert info["polygons"] == 2
    with rasterio.open(info["mask"]) as m:
        mask = m.read(1) > 0
        assert m.crs == prof["crs"] and m.transform == prof["transform"]
    assert mask.sum() * 0.25 == pytest.approx(100 + 36, abs=4)  # pixel staircase of the reprojected edges
    (tile,) = list_source_tiles(SourceSpec(str(tmp_path / "ds")), "all")
    assert tile.gsd == pytest.approx(0.5)


def test_config_data_list_and_cli_data_option(tmp_path: Path) -> None:
    cfg = load_aerial_config("tiny-real")
    specs = data_sources(cfg)
    assert specs[0].gsd == 0.1 and not specs[0].gsd_known and specs[0].scale_range == (1.5, 5.0)
    assert specs[1].path == "data/aerial_synth" and specs[1].samples_per_tile == 16
    cfg = load_aerial_config("tiny-synth", ['data=["a", {"path": "b", "gsd": 0.2}]'])
    assert [s.path for s in data_sources(cfg)] == ["a", "b"]


def test_summary_names_the_model_and_a_calibrated_gsd(random_checkpoint: Path, tmp_path: Path) -> None:
    from detrkit.aerial.default_model import export_inference_checkpoint
    from detrkit.aerial.predict import AerialPredictor

    card = {"name": "test model", "trained_on": "nothing", "accuracy": {}}
    cal = GsdCalibration(slope=0.0, intercept=math.log(0.4), residual_sd=0.1, images=5, data="x")
    path = export_inference_checkpoint(
        random_checkpoint, tmp_path / "m.pt", extra={"card": card, "gsd_calibration": cal.to_dict()}
    )
    png = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(png)
    pred = AerialPredictor.from_checkpoint(path, device="cpu", tile=64, overlap=16)
    s = pred.predict_file(png, tmp_path / "o")
    assert s["model_card"] == card
    # slope 0: the calibrated GSD is exp(intercept) whatever the head says; sigma = residual_sd
    assert s["gsd"]["metres_per_pixel"] == pytest.approx(0.4) and s["gsd"]["source"] == "model"
    assert s["gsd"]["uncertainty"] == pytest.approx(math.exp(0.1) - 1) and s["gsd_warning"] is None
    assert s["built_area_m2"] == pytest.approx(s["built_pixels"] * 0.16)
    assert s["area_text"] == f"area {s['built_area_m2']:,.0f} m² (GSD estimated 0.40 m, ±11%)"
    s2 = pred.predict_file(png, tmp_path / "o2", user_gsd=0.5)
    assert s2["gsd"]["uncertainty"] is None and s2["area_text"].endswith("(GSD 0.50 m from user)")
    plain = AerialPredictor.from_checkpoint(random_checkpoint, device="cpu", tile=64, overlap=16)
    s3 = plain.predict_file(png, tmp_path / "o3")
    assert "not calibrated" in s3["gsd_warning"] and s3["model_card"]["trained_on"] == "data/aerial_synth"


@pytest.mark.slow
def test_train_on_mixed_real_folder_and_generated_tiles(
    synth_dir: Path, random_checkpoint: Path, tmp_path: Path
) -> None:
    import csv
    import io

    from typer.testing import CliRunner

    from detrkit.cli.main import app

    _grid_folder(tmp_path / "real", [0, 1024, 2048, 3072], [0, 1024], size=96)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "aerial",
            "rasterize",
            "--image",
            str(synth_dir / "train/images/alpha6.tif"),
            "--labels",
            str(tmp_path / "none.geojson"),
            "--out",
            str(tmp_path / "sn"),
        ],
    )
    assert isinstance(res.exception, DataError) and "none.geojson: no such file" in str(res.exception)
    args = [
        "aerial",
        "train",
        "--config",
        "tiny-real",
        "--quiet",
        "--data",
        str(synth_dir),
        "--data",
        str(tmp_path / "real"),
        f"init_weights={random_checkpoint}",
        f"out={tmp_path}",
        "epochs=1",
        "crop=64",
        "batch_size=4",
        "samples_per_tile=1",
        "tensorboard=false",
        "threads=1",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    run = tmp_path / "aerial-tiny-real"
    rows = list(csv.DictReader(io.StringIO((run / "metrics.csv").read_text())))
    assert np.isfinite(float(rows[0]["val/IoU"])) and np.isfinite(float(rows[0]["train/loss_gsd"]))
    cfg = (run / "config.yaml").read_text()
    assert str(tmp_path / "real") in cfg and "augment: true" in cfg


def test_gsd_from_building_sizes_by_hand() -> None:
    """Combined fit recovers a known linear law; the estimate uses it only with enough buildings."""
    from detrkit.aerial.gsd import MIN_BUILDINGS, building_size_feature

    assert building_size_feature([100, 200, 19, 300, 400, 500]) == pytest.approx(math.log(300))
    assert building_size_feature([100] * (MIN_BUILDINGS - 1) + [5, 5]) is None  # 5 px: below 20
    rng = np.random.default_rng(0)
    true = np.log(rng.uniform(0.15, 2.0, 12))
    head = true + rng.normal(0, 0.3, 12)  # a noisy head
    size = np.log(230.0) - 2 * true  # buildings of ~230 m²: median pixels = 230 / g²
    cal = GsdCalibration.fit(head, true, size_log=list(size))
    a, b, c = cal.size_coef
    assert (a, b, c) == pytest.approx((0.0, -0.5, 0.5 * math.log(230.0)), abs=1e-9)
    assert cal.size_residual_sd == pytest.approx(0.0, abs=1e-9) and cal.size_images == 12
    assert cal.residual_sd > 0.1  # the head alone is noisy
    g = 0.4
    pixels = np.full(9, 230.0 / g**2)
    est = cal.estimate([head[0]], building_pixels=pixels)
    assert est.metres_per_pixel == pytest.approx(g) and "sizes of the buildings" in est.detail
    head_only = cal.estimate([head[0]], building_pixels=pixels[:2])
    assert head_only.metres_per_pixel == pytest.approx(math.exp(cal.slope * head[0] + cal.intercept))
    # an old calibration (no size fit) ignores the buildings; fewer than 5 images: no size fit
    old = GsdCalibration(**{k: v for k, v in cal.to_dict().items() if not k.startswith("size")})
    assert old.estimate([head[0]], pixels).metres_per_pixel == pytest.approx(head_only.metres_per_pixel)
    assert GsdCalibration.fit(head[:4], true[:4], size_log=list(size[:4])).size_coef is None


def test_strip_measurer_component_pixels_match_finish() -> None:
    from detrkit.aerial.area import StripMeasurer

    mask = np.zeros((40, 30), bool)
    mask[2:10, 2:12] = True  # 80 px
    mask[15:35, 5:8] = True  # 60 px, cut by the strip border at row 20
    mask[30, 25] = True  # 1 px speck
    m = StripMeasurer(30, 40, gsd=GsdEstimate(0.5, "user"))
    m.add(mask[:20])
    m.add(mask[20:])
    px = sorted(m.component_pixels().tolist())
    assert px == [60, 80]
    assert px == sorted(b.pixels for b in m.finish().buildings)


def test_real_tile_error_widens_every_model_gsd() -> None:
    """A calibration that knows its error on real tiles adds it to the uncertainty and says so."""
    import dataclasses

    cal = GsdCalibration(slope=1.0, intercept=0.0, residual_sd=0.1, images=10, data="gen")
    plain = cal.estimate([math.log(0.3)] * 4)
    assert plain.warning is None and plain.uncertainty == pytest.approx(math.exp(0.1) - 1)
    real = dataclasses.replace(cal, real_log_error=0.8, real_data="some real tiles")
    est = real.estimate([math.log(0.3)] * 4)
    assert est.metres_per_pixel == pytest.approx(plain.metres_per_pixel)  # the value does not move
    assert est.uncertainty == pytest.approx(math.exp(math.sqrt(0.1**2 + 0.8**2)) - 1)
    assert "on real tiles (some real tiles) it was off by a median 123%" in est.warning
    assert GsdCalibration(**real.to_dict()) == real  # stored in the model file as a dict
