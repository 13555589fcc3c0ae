"""Augmentations that real aerial and satellite imagery needs, on ``uint8[C,H,W]`` crops.

:func:`augment_crop` applies, each with its own probability (:class:`AugmentSpec`): a rotation by
any angle (image bilinear, mask nearest, reflected borders), colour and contrast changes (per-band
gain, brightness, contrast, saturation, gamma), a conversion to one band (panchromatic imagery,
repeated to three), a percentile stretch (what 16-bit inputs get at prediction), cast shadows
(darkened random polygons, image only), Gaussian blur, sensor noise and JPEG compression. Only
the rotation moves pixels, and it moves the mask with the image. Every draw comes from the
``numpy.random.Generator`` passed in, so a crop is reproducible from its seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage


@dataclass(frozen=True)
class AugmentSpec:
    """Probabilities (``p_*``) and ranges of :func:`augment_crop`; ``AugmentSpec.off()`` disables all."""

    p_rotate: float = 0.5
    p_colour: float = 0.8
    gain: float = 0.12
    brightness: float = 0.25
    contrast: tuple[float, float] = (0.6, 1.4)
    saturation: tuple[float, float] = (0.4, 1.5)
    gamma: tuple[float, float] = (0.7, 1.4)
    p_gray: float = 0.12
    p_stretch: float = 0.25
    p_shadow: float = 0.3
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.6)
    p_noise: float = 0.3
    noise_std: tuple[float, float] = (1.0, 8.0)
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (25, 90)

    @classmethod
    def off(cls) -> AugmentSpec:
        return cls(p_rotate=0, p_colour=0, p_gray=0, p_stretch=0, p_shadow=0, p_blur=0, p_noise=0, p_jpeg=0)


def rotate_pair(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate ``image[C,H,W]`` (bilinear) and ``mask bool[H,W]`` (nearest) by ``angle`` degrees, reflected borders."""
    img = ndimage.rotate(image.astype(np.float32), angle, axes=(2, 1), reshape=False, order=1, mode="reflect")
    m = ndimage.rotate(mask.astype(np.uint8), angle, axes=(1, 0), reshape=False, order=0, mode="reflect")
    return np.clip(img, 0, 255).astype(np.uint8), m.astype(bool)


def _colour(x: np.ndarray, rng: np.random.Generator, spec: AugmentSpec) -> np.ndarray:
    """``x float32[C,H,W]`` in 0..255 -> same, with gain, brightness, contrast, saturation and gamma."""
    c = x.shape[0]
    x = x * rng.uniform(1 - spec.gain, 1 + spec.gain, size=(c, 1, 1)).astype(np.float32)
    x = x + 255.0 * rng.uniform(-spec.brightness, spec.brightness) * 0.4
    mean = x.mean()
    x = (x - mean) * rng.uniform(*spec.contrast) + mean
    if c >= 3:
        gray = x[:3].mean(axis=0, keepdims=True)
        x[:3] = (x[:3] - gray) * rng.uniform(*spec.saturation) + gray
    x = np.clip(x, 0, 255)
    return 255.0 * (x / 255.0) ** rng.uniform(*spec.gamma)


def _shadows(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darken 1-4 random soft-edged polygons (cast shadows of trees and buildings) of ``x float32[C,H,W]``."""
    h, w = x.shape[1:]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.3) * min(h, w)
        k = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = r * rng.uniform(0.4, 1.0, k)
        draw.polygon(
            [(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(rad, ang, strict=True)], fill=255
        )
    m = ndimage.gaussian_filter(np.asarray(canvas, np.float32) / 255.0, sigma=rng.uniform(0.5, 3.0))
    return x * (1.0 - rng.uniform(0.25, 0.55) * m)[None]


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of ``x uint8[C,H,W]`` (C = 1 or 3) at ``quality``."""
    arr = x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def augment_crop(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, spec: AugmentSpec | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Augment ``image uint8[C,H,W]`` and ``mask bool[H,W]``; returns new arrays of the same shapes and dtypes."""
    spec = spec or AugmentSpec()
    if rng.random() < spec.p_rotate:
        image, mask = rotate_pair(image, mask, float(rng.uniform(0, 360)))
    x = image.astype(np.float32)
    if rng.random() < spec.p_colour:
        x = _colour(x, rng, spec)
    if rng.random() < spec.p_shadow:
        x = _shadows(x, rng)
    gray = x.shape[0] >= 3 and rng.random() < spec.p_gray
    if gray:
        weights = rng.dirichlet([4.0, 4.0, 4.0]).astype(np.float32)  # panchromatic: some band mixture
        x[:3] = np.tensordot(weights, x[:3], axes=1)[None]
    if rng.random() < spec.p_stretch:
        lo, hi = np.percentile(x, [0.5, 99.5])
        x = (x - lo) * (255.0 / max(hi - lo, 1e-3))
    if rng.random() < spec.p_blur:
        x = ndimage.gaussian_filter(x, sigma=(0, *[rng.uniform(*spec.blur_sigma)] * 2))
    if rng.random() < spec.p_noise:
        x = x + rng.normal(0, rng.uniform(*spec.noise_std), x.shape).astype(np.float32)
    out = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < spec.p_jpeg and out.shape[0] in (1, 3):
        quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
        out = np.repeat(_jpeg(out[:1], quality), 3, axis=0) if gray else _jpeg(out, quality)
    if gray:  # a panchromatic image as the predictor feeds it: one band repeated
        out[1:3] = out[0]
    return np.ascontiguousarray(out), np.ascontiguousarray(mask)
