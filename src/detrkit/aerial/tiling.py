"""Tiled prediction on images of any size, streamed row of tiles by row of tiles.

The image is cut into ``tile x tile`` windows with ``overlap`` pixels of overlap (the last row and
column are shifted back to end at the image border, so every tile is full size). Tile predictions
are blended with a separable weight that is largest at the tile centre (Hann by default, or a
linear pyramid), so tile borders, where the network sees the least context, contribute least and
no seam appears. Only one row of tiles is held at a time: ``read_rows(r0, r1)`` supplies the input
rows and ``write_rows(r0, prob_rows)`` receives finished output rows, so a 20000x20000 raster runs
in memory proportional to ``tile * width``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detrkit.aerial.data import normalize_image


def pad_to_multiple(images: Tensor, multiple: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad ``images[B,C,H,W]`` at the bottom/right to multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    mode = "reflect" if ph < h and pw < w else "replicate"
    return (F.pad(images, (0, pw, 0, ph), mode=mode) if ph or pw else images), (h, w)


def blend_weight(tile_h: int, tile_w: int, mode: str = "hann") -> np.ndarray:
    """Blending weight float32[tile_h, tile_w], strictly positive.

    ``hann``: outer product of ``sin²(π (k+1) / (n+1))``; ``pyramid``: of ``min(k+1, n-k) / ceil(n/2)``;
    ``none``: ones (plain averaging, shows seams; kept for comparison).
    """

    def one(n: int) -> np.ndarray:
        k = np.arange(n, dtype=np.float64)
        if mode == "hann":
            return np.sin(np.pi * (k + 1) / (n + 1)) ** 2
        if mode == "pyramid":
            return np.minimum(k + 1, n - k) / math.ceil(n / 2)
        if mode == "none":
            return np.ones(n)
        raise ValueError(f"unknown blend mode {mode!r}: use hann, pyramid or none")

    return np.outer(one(tile_h), one(tile_w)).astype(np.float32)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _pad_hw(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad ``x[C,h0,w0]`` at the bottom/right to ``[C,h,w]`` (reflect when possible, else edge)."""
    ph, pw = h - x.shape[1], w - x.shape[2]
    if ph <= 0 and pw <= 0:
        return x
    mode = "reflect" if ph < x.shape[1] and pw < x.shape[2] else "edge"
    return np.pad(x, ((0, 0), (0, max(ph, 0)), (0, max(pw, 0))), mode=mode)


@torch.inference_mode()
def run_tiles(
    model: nn.Module, tiles: np.ndarray, device: torch.device, amp: bool = False
) -> tuple[Tensor, Tensor]:
    """Model on a batch ``tiles float32[B,C,h,w]`` -> (probabilities float32[B,h,w] on CPU, log_gsd float32[B])."""
    x = torch.from_numpy(tiles).to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        out = model(x)
    return torch.sigmoid(out["logits"].float())[:, 0].cpu(), out["log_gsd"].float().cpu()


def predict_stream(
    model: nn.Module,
    read_rows: Callable[[int, int], np.ndarray],
    write_rows: Callable[[int, np.ndarray], None],
    height: int,
    width: int,
    *,
    tile: int = 512,
    overlap: int = 128,
    batch_size: int = 8,
    blend: str = "hann",
    device: torch.device | str = "cpu",
    in_channels: int = 3,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
    tile_log_gsd: list[float] | None = None,
) -> tuple[float, int]:
    """Stream a tiled prediction over an image of ``height x width`` pixels.

    Args:
        read_rows: ``(r0, r1) -> uint8[C, r1-r0, width]`` input rows.
        write_rows: ``(r0, prob float32[n, width])`` called with finished rows, top to bottom.
        tile: tile size (rounded up to a multiple of 32, shrunk for small images); overlap: pixels
            shared by neighbouring tiles (0 <= overlap < tile).
        progress: optional ``(tiles_done, tiles_total)`` callback.
        tile_log_gsd: when a list is given, every tile's predicted log-GSD is appended to it (the
            spread over tiles is one part of the GSD uncertainty).
    Returns:
        (mean predicted log-GSD over tiles, number of tiles).
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    device = torch.device(device)
    th = min(-(-tile // 32) * 32, -(-height // 32) * 32)
    tw = min(-(-tile // 32) * 32, -(-width // 32) * 32)
    ys = tile_starts(max(height, th), th, max(1, th - overlap))
    xs = tile_starts(max(width, tw), tw, max(1, tw - overlap))
    weight = blend_weight(th, tw, blend)
    wp = max(width, tw)
    acc = np.zeros((th, wp), dtype=np.float32)
    wsum = np.zeros((th, wp), dtype=np.float32)
    log_gsd_sum, done, total = 0.0, 0, len(ys) * len(xs)
    for i, y in enumerate(ys):
        rows = read_rows(y, min(y + th, height))
        rows = _pad_hw(normalize_image(rows, in_channels), th, wp)
        for b0 in range(0, len(xs), batch_size):
            bx = xs[b0 : b0 + batch_size]
            batch = np.stack([rows[:, :, x : x + tw] for x in bx])
            prob, log_gsd = run_tiles(model, batch, device, amp)
            log_gsd_sum += float(log_gsd.sum())
            if tile_log_gsd is not None:
                tile_log_gsd.extend(float(v) for v in log_gsd)
            for p, x in zip(prob.numpy(), bx, strict=True):
                acc[:, x : x + tw] += p * weight
                wsum[:, x : x + tw] += weight
            done += len(bx)
            if progress is not None:
                progress(done, total)
        next_y = ys[i + 1] if i + 1 < len(ys) else th + y
        n = next_y - y
        n_out = min(next_y, height) - y
        if n_out > 0:
            write_rows(y, acc[:n_out, :width] / wsum[:n_out, :width])
        if n < th:
            acc[: th - n], wsum[: th - n] = acc[n:].copy(), wsum[n:].copy()
        acc[max(0, th - n) :] = 0
        wsum[max(0, th - n) :] = 0
    return log_gsd_sum / total, total


def predict_array(model: nn.Module, image: np.ndarray, **kwargs: object) -> tuple[np.ndarray, float, int]:
    """Tiled prediction of an in-memory ``image uint8[C,H,W]``.

    Returns (probabilities float32[H,W], mean log-GSD over tiles, number of tiles); ``kwargs`` as
    :func:`predict_stream`.
    """
    _, h, w = image.shape
    out = np.zeros((h, w), dtype=np.float32)

    def write(r0: int, rows: np.ndarray) -> None:
        out[r0 : r0 + rows.shape[0]] = rows

    log_gsd, n = predict_stream(model, lambda r0, r1: image[:, r0:r1], write, h, w, **kwargs)  # type: ignore[arg-type]
    return out, log_gsd, n
