"""Random crops from Inria-layout aerial tiles, read window by window with rasterio.

Layout (the Inria Aerial Image Labeling dataset and ``detrkit aerial synth`` output)::

    root/train/images/<city><n>.tif   RGB GeoTIFF tiles (Inria: 5000x5000 px, 0.3 m)
    root/train/gt/<city><n>.tif       building masks, 0/255

Split: the official validation set is tiles 1-5 of every city; the rest is training.

``AerialCrops[i] -> {"image": float32[C,S,S] (ImageNet-normalised), "mask": float32[1,S,S] in {0,1},
"sdm": float32[1,S,S] (signed distance map, see losses), "log_gsd": float32 scalar, "scale": float}``.
Scale augmentation: a window of ``S * s`` pixels (``s`` log-uniform in ``scale_range``) is read and
resampled to ``S`` (rasterio decimated/oversampled read, bilinear image, nearest mask), so the crop's
GSD is ``tile_gsd * s``. Only the window is read, never the whole tile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch.utils.data import Dataset

from detrkit.aerial.gsd import gsd_from_georeference
from detrkit.aerial.losses import signed_distance_map
from detrkit.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_TILE_NAME = re.compile(r"^(?P<city>.*?)(?P<n>\d+)$")
VAL_TILE_NUMBERS = range(1, 6)


def normalize_image(image: np.ndarray, in_channels: int = 3) -> np.ndarray:
    """uint8 [C,H,W] -> float32 [in_channels,H,W], /255 then ImageNet mean/std on the first 3 bands.

    One band is repeated to three; extra bands beyond ``in_channels`` are dropped; bands beyond
    the third are scaled to [0, 1] and centred at 0.5.
    """
    if image.shape[0] == 1 and in_channels >= 3:
        image = np.repeat(image, 3, axis=0)
    if image.shape[0] < in_channels:
        raise DataError(f"image has {image.shape[0]} bands, the model needs {in_channels}")
    x = image[:in_channels].astype(np.float32) / 255.0
    k = min(3, in_channels)
    x[:k] = (x[:k] - IMAGENET_MEAN[:k, None, None]) / IMAGENET_STD[:k, None, None]
    x[k:] = (x[k:] - 0.5) / 0.25
    return x


@dataclass(frozen=True)
class Tile:
    """One image tile and its mask: paths, size, GSD (m/pixel) and city."""

    image: Path
    mask: Path
    width: int
    height: int
    gsd: float
    city: str
    number: int


def list_tiles(root: str | Path, split: str = "train", *, default_gsd: float = 0.3) -> list[Tile]:
    """Tiles of ``root`` for ``split`` in ``{"train", "val", "all"}`` (val = tiles 1-5 of each city)."""
    root = Path(root)
    img_dir, gt_dir = root / "train" / "images", root / "train" / "gt"
    if not img_dir.is_dir() or not gt_dir.is_dir():
        raise DataError("not an Inria-layout dataset: expected train/images/ and train/gt/", path=root)
    if split not in ("train", "val", "all"):
        raise DataError(f"unknown split {split!r}: use train, val or all", path=root)
    tiles = []
    for path in sorted(img_dir.glob("*.tif")):
        match = _TILE_NAME.match(path.stem)
        city, number = (match["city"], int(match["n"])) if match else (path.stem, 0)
        is_val = number in VAL_TILE_NUMBERS
        if (split == "val" and not is_val) or (split == "train" and is_val):
            continue
        mask = gt_dir / path.name
        if not mask.is_file():
            raise DataError("image tile has no mask in train/gt/", path=path)
        try:
            with rasterio.open(path) as src:
                est = gsd_from_georeference(src.crs, src.transform, src.width, src.height)
                tiles.append(
                    Tile(
                        path,
                        mask,
                        src.width,
                        src.height,
                        est.metres_per_pixel if est else default_gsd,
                        city,
                        number,
                    )
                )
        except rasterio.errors.RasterioIOError as err:
            raise DataError(f"cannot read tile ({err})", path=path) from err
    if not tiles:
        raise DataError(f"no {split} tiles found in train/images/", path=root)
    return tiles


class AerialCrops(Dataset):
    """Random (train) or fixed (val) square crops with scale augmentation; see the module docstring.

    Args:
        root: dataset root; split: ``train``/``val``/``all``; crop: output size S (multiple of 32).
        samples_per_tile: crops drawn from each tile per epoch (the dataset length is tiles x this).
        scale_range: (min, max) resampling factor s; ``(1, 1)`` disables scale augmentation.
        train: random positions, flips and 90° rotations that change each epoch (:meth:`set_epoch`);
            otherwise positions and scales depend only on the index (a fixed validation set).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        crop: int = 512,
        samples_per_tile: int = 8,
        scale_range: tuple[float, float] = (0.5, 2.0),
        train: bool = True,
        in_channels: int = 3,
        seed: int = 0,
        default_gsd: float = 0.3,
    ) -> None:
        if crop % 32:
            raise DataError(f"crop {crop} must be a multiple of 32", path=root)
        self.tiles = list_tiles(root, split, default_gsd=default_gsd)
        self.crop, self.samples_per_tile, self.train = crop, samples_per_tile, train
        self.scale_range, self.in_channels, self.seed, self.epoch = scale_range, in_channels, seed, 0

    def __len__(self) -> int:
        return len(self.tiles) * self.samples_per_tile

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | float]:
        tile = self.tiles[index % len(self.tiles)]
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, index])
        lo, hi = self.scale_range
        s = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
        win = int(round(self.crop * s))
        win = max(8, min(win, tile.width, tile.height))
        s = win / self.crop
        x0, y0 = int(rng.integers(0, tile.width - win + 1)), int(rng.integers(0, tile.height - win + 1))
        window, shape = Window(x0, y0, win, win), (self.crop, self.crop)
        try:
            with rasterio.open(tile.image) as src:
                image = src.read(window=window, out_shape=(src.count, *shape), resampling=Resampling.bilinear)
            with rasterio.open(tile.mask) as src:
                mask = src.read(1, window=window, out_shape=shape, resampling=Resampling.nearest) > 127
        except rasterio.errors.RasterioIOError as err:
            raise DataError(f"cannot read window {window} ({err})", path=tile.image) from err
        if self.train:
            k = int(rng.integers(4))
            image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k)
            if rng.random() < 0.5:
                image, mask = image[:, :, ::-1], mask[:, ::-1]
        return {
            "image": torch.from_numpy(normalize_image(np.ascontiguousarray(image), self.in_channels)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            "sdm": torch.from_numpy(signed_distance_map(mask))[None],
            "log_gsd": torch.tensor(math.log(tile.gsd * s), dtype=torch.float32),
            "scale": s,
        }
