"""Image decoding: EXIF orientation, mode conversions, errors naming the file, tensor path = PIL path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detrkit.data.images import image_size, load_image_rgb, read_image_tensor, verify_image
from detrkit.errors import ImageError


def _exif_jpeg(path: Path, orientation: int) -> Path:
    """A 60x40 stored image, black except a red 10x10 block at the stored top-left corner."""
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    path = _exif_jpeg(tmp_path / "rot.jpg", 6)
    # Orientation 6: display = stored rotated 90 degrees clockwise, so the stored top-left block
    # lands at the top-right of a 40-wide, 60-high picture.
    im = np.asarray(load_image_rgb(path))
    assert im.shape == (60, 40, 3)
    assert im[4, 35, 0] > 200 and im[4, 35, 1] < 60  # red at top-right
    assert im[4, 4].max() < 60 and im[55, 4].max() < 60 and im[55, 35].max() < 60
    t = read_image_tensor(path)
    assert tuple(t.shape) == (3, 60, 40)
    assert (t.permute(1, 2, 0).int() - torch.from_numpy(im.copy()).int()).abs().max() <= 2
    assert image_size(path) == ((40, 60), (60, 40))
    assert verify_image(path) == ((40, 60), (60, 40))


def test_no_exif_keeps_stored_orientation(tmp_path: Path) -> None:
    path = _exif_jpeg(tmp_path / "plain.jpg", 1)
    im = np.asarray(load_image_rgb(path))
    assert im.shape == (40, 60, 3) and im[4, 4, 0] > 200


def _expected_rgb(mode: str, base: np.ndarray) -> np.ndarray:
    """Hand conversions to RGB for the modes below."""
    gray = base[..., 0]
    if mode in ("L", "LA", "I;16"):
        return np.repeat(gray[..., None], 3, axis=2)
    return base  # RGBA, CMYK (lossless round trip through PIL), P (exact for an 8-colour palette)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    palette = np.array(
        [
            [0, 0, 0],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 0],
            [0, 255, 255],
            [255, 0, 255],
            [255, 255, 255],
        ],
        np.uint8,
    )
    base = palette[rng.integers(0, 8, size=(32, 48))]
    if mode in ("L", "LA", "I;16"):
        base = np.repeat(rng.integers(0, 256, size=(32, 48, 1), dtype=np.uint8), 3, axis=2)
    rgb = Image.fromarray(base)
    if mode == "I;16":
        img = Image.fromarray(base[..., 0].astype(np.uint16) * 257)  # 16-bit: v * 257 >> 8 == v
        suffix = ".png"
    elif mode == "CMYK":
        img, suffix = rgb.convert("CMYK"), ".tiff"
    elif mode == "P":
        img = rgb.quantize(colors=8, method=Image.Quantize.MAXCOVERAGE)
        img.info["transparency"] = 0
        suffix = ".png"
    else:
        img, suffix = rgb.convert(mode), ".png"
    path = tmp_path / f"img{suffix}"
    img.save(path)
    assert Image.open(path).mode == mode
    out = load_image_rgb(path)
    assert out.mode == "RGB" and out.size == (48, 32)
    np.testing.assert_array_equal(np.asarray(out), _expected_rgb(mode, base))
    np.testing.assert_array_equal(read_image_tensor(path).permute(1, 2, 0).numpy(), np.asarray(out))


def _truncated_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _corrupt_jpeg(path: Path) -> Path:
    Image.new("RGB", (64, 64), (30, 60, 90)).save(path)
    data = bytearray(path.read_bytes())
    data[2:200] = bytes(range(198))  # header segments destroyed, SOI kept
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make", [_truncated_png, _corrupt_jpeg], ids=["truncated_png", "corrupt_jpeg"])
def test_bad_files_raise_image_error_naming_the_file(tmp_path: Path, make) -> None:
    path = make(tmp_path / ("bad.png" if make is _truncated_png else "bad.jpg"))
    for fn in (load_image_rgb, read_image_tensor, verify_image):
        with pytest.raises(ImageError) as err:
            fn(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_jpeg_is_an_error_on_both_paths(tmp_path: Path) -> None:
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="t.jpg"):
        read_image_tensor(path)
    with pytest.raises(ImageError, match="truncated"):
        load_image_rgb(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.jpg: image file not found"):
        load_image_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match=r"nope\.jpg: image file not found"):
        read_image_tensor(tmp_path / "nope.jpg")
