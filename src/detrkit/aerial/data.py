"""Random crops from aerial tiles of any layout (see :mod:`detrkit.aerial.sources`), read window by window.

``AerialCrops[i] -> {"image": float32[C,S,S] (ImageNet-normalised), "mask": float32[1,S,S] in {0,1},
"sdm": float32[1,S,S] (signed distance map, see losses), "log_gsd": float32 scalar (NaN when the
tile's GSD is only an estimate), "scale": float}``.
Scale augmentation: a window of ``S * s`` pixels (``s`` log-uniform in the source's scale range) is
read and resampled to ``S`` (rasterio decimated/oversampled read, bilinear image, nearest mask), so
the crop's GSD is ``tile_gsd * s``. Only the window is read, never the whole tile; a window larger
than the tile (small tiles rescaled to a coarse GSD) takes the whole tile and reflects it to ``S``.
Training crops also get :func:`detrkit.aerial.augment.augment_crop` (colour, blur, JPEG, rotation,
shadows, one-band, percentile stretch). Bands are scaled to 0..255 by
:func:`detrkit.aerial.sources.band_scale` (percentiles for 16-bit and float data, never /255).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch.utils.data import Dataset

from detrkit.aerial.augment import AugmentSpec, augment_crop
from detrkit.aerial.losses import signed_distance_map
from detrkit.aerial.sources import (
    VAL_TILE_NUMBERS,
    SourceSpec,
    Tile,
    list_source_tiles,
    open_quiet,
    to_uint8,
)
from detrkit.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
__all__ = ["VAL_TILE_NUMBERS", "AerialCrops", "Tile", "list_tiles", "normalize_image"]


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


def list_tiles(root: str | Path, split: str = "train", *, default_gsd: float = 0.3) -> list[Tile]:
    """Tiles of one dataset root for ``split`` in ``{"train", "val", "all"}`` (any layout)."""
    return list_source_tiles(SourceSpec(str(root)), split, default_gsd=default_gsd)


def _reflect_to(x: np.ndarray, size: int) -> np.ndarray:
    """Pad ``x[..., h, w]`` to ``size x size`` at the bottom/right by reflection (edge for 1-pixel sides)."""
    pad = [(0, 0)] * (x.ndim - 2) + [(0, max(0, size - x.shape[-2])), (0, max(0, size - x.shape[-1]))]
    return np.pad(x, pad, mode="reflect" if min(x.shape[-2:]) > 1 else "edge")[..., :size, :size]


class AerialCrops(Dataset):
    """Random (train) or fixed (val) square crops with scale augmentation; see the module docstring.

    Args:
        root: a dataset root, or a list of roots / :class:`SourceSpec` (mixed in one dataset: each
            training source contributes its own ``samples_per_tile`` crops per tile and epoch).
        split: ``train``/``val``/``all``; crop: output size S (multiple of 32).
        samples_per_tile: crops drawn from each tile per epoch (training sources may override it).
        scale_range: (min, max) resampling factor s, unless a source overrides it; ``(1, 1)``
            disables scale augmentation.
        train: random positions, flips, 90° rotations and ``augment`` that change each epoch
            (:meth:`set_epoch`); otherwise positions and scales depend only on the index.
        augment: the photometric/rotation augmentations of training crops (None: none).
    """

    def __init__(
        self,
        root: str | Path | SourceSpec | list[str | Path | SourceSpec],
        *,
        split: str = "train",
        crop: int = 512,
        samples_per_tile: int = 8,
        scale_range: tuple[float, float] = (0.5, 2.0),
        train: bool = True,
        in_channels: int = 3,
        seed: int = 0,
        default_gsd: float = 0.3,
        augment: AugmentSpec | None = None,
    ) -> None:
        roots = root if isinstance(root, list) else [root]
        specs = [r if isinstance(r, SourceSpec) else SourceSpec(str(r)) for r in roots]
        if crop % 32:
            raise DataError(f"crop {crop} must be a multiple of 32", path=specs[0].path)
        self.items: list[tuple[Tile, tuple[float, float]]] = []
        self.tiles: list[Tile] = []
        for spec in specs:
            tiles = list_source_tiles(spec, split, default_gsd=default_gsd)
            n = (spec.samples_per_tile if train else None) or samples_per_tile
            rng = tuple(spec.scale_range or scale_range)
            self.tiles += tiles
            self.items += [(t, rng) for _ in range(n) for t in tiles]  # type: ignore[misc]
        self.crop, self.train, self.augment = crop, train, augment
        self.in_channels, self.seed, self.epoch = in_channels, seed, 0

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | float]:
        tile, (lo, hi) = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, index])
        s = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
        win = max(8, int(round(self.crop * s)))
        wx, wy = min(win, tile.width), min(win, tile.height)
        out_w = max(1, round(wx / s)) if wx < win else self.crop
        out_h = max(1, round(wy / s)) if wy < win else self.crop
        x0, y0 = int(rng.integers(0, tile.width - wx + 1)), int(rng.integers(0, tile.height - wy + 1))
        window = Window(x0, y0, wx, wy)
        try:
            with open_quiet(tile.image) as src:
                bands = list(tile.bands)
                image = src.read(
                    bands, window=window, out_shape=(len(bands), out_h, out_w), resampling=Resampling.bilinear
                )
            with open_quiet(tile.mask) as src:
                mask = (
                    src.read(1, window=window, out_shape=(out_h, out_w), resampling=Resampling.nearest) > 127
                )
        except rasterio.errors.RasterioIOError as err:
            raise DataError(f"cannot read window {window} ({err})", path=tile.image) from err
        image = to_uint8(image, tile.band_scale)
        if out_h < self.crop or out_w < self.crop:
            image, mask = _reflect_to(image, self.crop), _reflect_to(mask, self.crop)
        if self.train:
            k = int(rng.integers(4))
            image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k)
            if rng.random() < 0.5:
                image, mask = image[:, :, ::-1], mask[:, ::-1]
            if self.augment is not None:
                image, mask = augment_crop(
                    np.ascontiguousarray(image), np.ascontiguousarray(mask), rng, self.augment
                )
        log_gsd = math.log(tile.gsd * s) if tile.gsd_known else math.nan
        return {
            "image": torch.from_numpy(normalize_image(np.ascontiguousarray(image), self.in_channels)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            "sdm": torch.from_numpy(signed_distance_map(mask))[None],
            "log_gsd": torch.tensor(log_gsd, dtype=torch.float32),
            "scale": s,
        }
