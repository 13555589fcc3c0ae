"""The Streamlit page driven by ``streamlit.testing.v1.AppTest``, plus the logic module on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from detrkit.aerial.predict import OVERLAY_COLOUR, AerialPredictor
from detrkit.app.logic import analyse, format_area, format_area_short, save_upload
from detrkit.errors import ImageError

SCRIPT = str(Path(__file__).resolve().parents[2] / "src" / "detrkit" / "app" / "streamlit_app.py")


@pytest.fixture()
def app(app_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    monkeypatch.setenv("DETRKIT_APP_MODEL", str(app_checkpoint))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    at = AppTest.from_file(SCRIPT, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_start_page_asks_for_an_upload(app: AppTest) -> None:
    assert "Upload an image" in app.info[0].value
    assert app.sidebar.text_input[0].value.endswith("tiny.pt")
    assert not app.metric


def test_png_upload_uses_the_model_gsd_then_a_user_gsd(app: AppTest, png_bytes: bytes) -> None:
    app.file_uploader[0].upload("scene.png", png_bytes, "image/png")
    app.run()
    assert not app.exception and not app.error
    m = _metrics(app)
    assert set(m) == {"Built-up area", "Built-up share", "Buildings", "GSD"}
    assert m["GSD"].endswith(" m/px") and "**model**" in app.caption[1].value
    assert len(app.download_button) == 2
    app.sidebar.radio[0].set_value("Metres per pixel").run()
    app.sidebar.number_input[0].set_value(0.5).run()
    m = _metrics(app)
    assert m["GSD"] == "0.500 m/px" and "**user**" in app.caption[1].value
    share = float(m["Built-up share"].split()[0]) / 100
    expected = share * 160 * 160 * 0.25
    area = m["Built-up area"].replace(",", "").split()[0]
    assert float(area) == pytest.approx(expected, abs=0.6)
    app.sidebar.slider[0].set_value(0.9).run()
    assert not app.exception


def test_geotiff_upload_reads_the_georeference(app: AppTest, geotiff_bytes: bytes) -> None:
    app.file_uploader[0].upload("scene.tif", geotiff_bytes, "image/tiff")
    app.run()
    assert not app.exception
    assert _metrics(app)["GSD"] == "0.500 m/px" and "**georeference**" in app.caption[1].value


def test_bad_upload_shows_one_error(app: AppTest) -> None:
    app.file_uploader[0].upload("broken.png", b"not an image", "image/png")
    app.run()
    assert not app.exception and len(app.error) == 1 and "\n" not in app.error[0].value
    assert "not a readable raster" in app.error[0].value


def test_logic_analyse_and_formatting(app_checkpoint: Path, png_bytes: bytes, tmp_path: Path) -> None:
    up = save_upload("x.png", png_bytes, tmp_path)
    assert (up.width, up.height, up.georef_gsd) == (160, 160, None)
    res = analyse(AerialPredictor.from_checkpoint(app_checkpoint, device="cpu"), up, tmp_path / "o", gsd=1.0)
    assert (
        res.image.shape == (160, 160, 3)
        and res.mask.shape == (160, 160)
        and res.probability.shape == (160, 160, 3)
    )
    assert res.summary["built_pixels"] == int(res.mask.sum())
    over = res.overlay(1.0)
    assert (over[res.mask] == OVERLAY_COLOUR).all() and np.array_equal(over[~res.mask], res.image[~res.mask])
    assert res.csv.count("\n") == len(res.buildings) + 1
    with pytest.raises(ImageError, match="unsupported file type"):
        save_upload("x.gif", b"GIF89a", tmp_path)
    assert format_area(1234.5) == "1,234.5 m²" and format_area(25_000.0) == "2.50 ha (25,000 m²)"
    assert format_area(None) == "-"
    assert format_area_short(36362.2) == "36,362 m²" and format_area_short(1.25e6) == "1.25 km²"
