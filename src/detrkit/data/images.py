"""Image decoding: EXIF orientation applied, every mode converted to 8-bit RGB, clear errors.

Two entry points give the same pixels:

- :func:`load_image_rgb` returns a ``PIL.Image.Image`` (mode ``RGB``); used by tools and inference.
- :func:`read_image_tensor` returns ``uint8 Tensor[3, H, W]`` for the training pipeline. JPEG and
  8-bit PNG files are decoded by ``torchvision.io.decode_image`` (libjpeg-turbo/libpng straight into
  a tensor, no PIL round trip); anything else falls back to the PIL path.

Conversions: grayscale, palette (with or without transparency), CMYK, RGBA/LA (alpha dropped, as
``torchvision.io.ImageReadMode.RGB`` does) and 16-bit grayscale (top 8 bits kept) become RGB.
Truncated files are errors (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never switched on). All failures
raise :class:`~detrkit.errors.ImageError` naming the file.

Sizes are *after* EXIF orientation: a portrait photo stored as 640x480 with Orientation=6 is
480 wide and 640 high, both here and in what annotations must describe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from detrkit.errors import ImageError

_TV_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
#: file suffixes taken as images when a folder is listed (prediction inputs, YOLO splits).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # orientations that rotate by 90 degrees
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, UnidentifiedImageError)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``RGB`` (see the module docstring for the rules)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im)
        if mode.startswith("I;16") or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
            arr = np.right_shift(arr.astype(np.uint32), 8)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2)), "RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_image_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully: EXIF orientation applied, mode ``RGB``.

    Raises:
        ImageError: the file is missing, not an image, corrupt or truncated (message names it).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found", path=path) from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file", path=path) from None
    except _PIL_ERRORS as err:
        raise ImageError(f"{path}: cannot decode image ({err})", path=path) from None


def read_image_tensor(path: str | Path) -> Tensor:
    """Decode ``path`` to ``uint8 Tensor[3, H, W]`` (RGB, EXIF orientation applied).

    The fast path is ``torchvision.io.decode_image`` for ``.jpg``/``.jpeg``/``.png``; on anything it
    cannot do (16-bit PNG, CMYK JPEG on some builds, other formats) it falls back to
    :func:`load_image_rgb`, which gives the same pixels or a precise error.

    Raises:
        ImageError: as :func:`load_image_rgb`.
    """
    path = Path(path)
    if path.suffix.lower() in _TV_SUFFIXES:
        from torchvision.io import ImageReadMode, decode_image

        try:
            img = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
            if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3:
                return img
        except (RuntimeError, OSError, ValueError):
            pass  # the PIL path below names the problem precisely
    arr = np.asarray(load_image_rgb(path))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation without decoding pixels (PNG's ``getexif`` would load the whole image)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    return int(im.getexif().get(_EXIF_ORIENTATION, 1))


def _read_sizes(path: str | Path, *, decode: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Open ``path``, optionally decode every pixel, and return (oriented, raw) sizes."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            raw = im.size
            if decode:
                im.load()
            orientation = _orientation(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found", path=path) from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file", path=path) from None
    except _PIL_ERRORS as err:
        what = "cannot decode image" if decode else "cannot read image header"
        raise ImageError(f"{path}: {what} ({err})", path=path) from None
    oriented = (raw[1], raw[0]) if orientation in _SWAPS_AXES else raw
    return oriented, raw


def image_size(path: str | Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """Sizes from the header only (no decode): ``((width, height), (raw_width, raw_height))``.

    The first pair is after EXIF orientation, the second as stored. Raises :class:`ImageError`.
    """
    return _read_sizes(path, decode=False)


def verify_image(path: str | Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """Decode ``path`` completely (catches corrupt and truncated data) and return its sizes.

    Returns ``((width, height) after EXIF orientation, (raw_width, raw_height))``.
    Raises :class:`ImageError` naming the file.
    """
    return _read_sizes(path, decode=True)
