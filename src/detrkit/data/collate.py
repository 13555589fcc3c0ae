"""Batching detection samples: zero padding, a pixel mask, and the count of skipped samples.

``collate_detection(batch)`` takes what :class:`~detrkit.data.dataset.CocoDetection` returns, a
list of ``(image uint8 [3, H_i, W_i], target dict)`` or ``None`` for a skipped (bad) image, and
returns a :class:`Batch` whose ``images`` keep the samples' dtype: ``uint8`` from CocoDetection, a
quarter of the bytes of float32 to write, share between processes and copy to the GPU.
:meth:`Batch.normalized` (:func:`normalize_images`) turns them into the model input, ImageNet-
normalised float with zeros on the padding, on the device the batch was moved to. Float samples
(datasets that normalise themselves) are padded with zeros and passed through as they are. ``None`` entries are dropped and counted in ``Batch.skipped``, so the
number of skipped images reaches the training loop even from DataLoader worker processes. When every
sample of a batch was skipped the batch is empty (``len(batch) == 0``, ``images`` of shape
``[0, 3, 0, 0]``); the training loop should skip it.

Use :class:`DetectionCollator` (picklable) as ``collate_fn`` to pad to a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from detrkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

_CONSTANTS: dict[tuple[str, int | None], tuple[Tensor, Tensor]] = {}


def _constants(device: torch.device) -> tuple[Tensor, Tensor]:
    """``255 * mean`` and ``1 / (255 * std)`` as ``float32 [1, 3, 1, 1]`` on ``device`` (cached)."""
    key = (device.type, device.index)
    if key not in _CONSTANTS:
        mean = torch.tensor(IMAGENET_MEAN).mul(255).view(1, 3, 1, 1)
        inv_std = torch.tensor(IMAGENET_STD).mul(255).reciprocal().view(1, 3, 1, 1)
        _CONSTANTS[key] = (mean.to(device), inv_std.to(device))
    return _CONSTANTS[key]


def normalize_images(
    images: Tensor, pixel_mask: Tensor | None = None, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Model input from a batch: ``uint8 [B, 3, H, W]`` -> ImageNet-normalised ``dtype [B, 3, H, W]``.

    ``(x - 255 mean) * (1 / (255 std))`` in float32 (bit-identical to
    :func:`detrkit.data.transforms.normalize_uint8` on each image), then padded pixels
    (``pixel_mask`` False) set to exactly 0, as the float batches were padded, then cast to ``dtype``
    (e.g. ``torch.bfloat16``). Runs where ``images`` is: call it after ``Batch.to(device)``.
    Floating-point ``images`` are taken as already normalised and only cast to ``dtype``.

    Args:
        images: ``uint8 [B, 3, H, W]`` (or float, passed through).
        pixel_mask: ``bool [B, H, W]``, True on real pixels; ``None``: no padding to clear.
        dtype: the floating dtype to return.
    Returns:
        ``dtype [B, 3, H, W]``, contiguous.
    """
    if images.is_floating_point():
        return images if images.dtype == dtype else images.to(dtype)
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (or already-normalised float), got {images.dtype}")
    mean, inv_std = _constants(images.device)
    out = images.to(torch.float32, memory_format=torch.contiguous_format)
    out.sub_(mean).mul_(inv_std)
    if pixel_mask is not None:
        out.masked_fill_(~pixel_mask[:, None], 0.0)
    return out if dtype == torch.float32 else out.to(dtype)


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        images: ``uint8 [B, 3, H, W]`` (the samples' dtype), each image at the top-left, zeros
            elsewhere; :meth:`normalized` gives the model input.
        pixel_mask: ``bool [B, H, W]``, **True on real pixels** (Hugging Face's ``pixel_mask``).
        targets: ``B`` target dicts (boxes cxcywh normalised by each *unpadded* image size).
        skipped: how many samples of this batch were bad images and left out.
    """

    images: Tensor
    pixel_mask: Tensor
    targets: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def normalized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The model input: :func:`normalize_images` of ``images`` (on their device), padding 0."""
        return normalize_images(self.images, self.pixel_mask, dtype=dtype)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move images, mask and every tensor in the targets to ``device``."""
        targets = [
            {k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v for k, v in t.items()}
            for t in self.targets
        ]
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.pixel_mask.to(device, non_blocking=non_blocking),
            targets,
            self.skipped,
        )

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        targets = [
            {k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in t.items()} for t in self.targets
        ]
        return Batch(self.images.pin_memory(), self.pixel_mask.pin_memory(), targets, self.skipped)


def _round_up(x: int, multiple: int) -> int:
    return x if multiple <= 1 else -(-x // multiple) * multiple


def collate_detection(
    batch: Sequence[tuple[Tensor, dict[str, Any]] | None], *, size_divisibility: int = 0
) -> Batch:
    """Pad images bottom/right to the largest ``H`` and ``W`` (rounded up to ``size_divisibility``).

    Args:
        batch: samples ``(image uint8 (or float) [3, H_i, W_i], target)`` or ``None`` (skipped).
        size_divisibility: pad ``H`` and ``W`` up to a multiple of this (0 or 1: no rounding).
    Returns:
        :class:`Batch` with ``images [B, 3, H, W]`` (the samples' dtype), ``pixel_mask bool [B, H, W]``
        and ``skipped``.
    """
    samples = [s for s in batch if s is not None]
    skipped = len(batch) - len(samples)
    if not samples:
        return Batch(
            torch.zeros(0, 3, 0, 0, dtype=torch.uint8), torch.zeros(0, 0, 0, dtype=torch.bool), [], skipped
        )
    h = _round_up(max(img.shape[-2] for img, _ in samples), size_divisibility)
    w = _round_up(max(img.shape[-1] for img, _ in samples), size_divisibility)
    first = samples[0][0]
    shared = get_worker_info() is not None
    images = _new_batch_tensor((len(samples), first.shape[0], h, w), first.dtype, shared=shared)
    mask = _new_batch_tensor((len(samples), h, w), torch.bool, shared=shared)
    for i, (img, _) in enumerate(samples):
        ih, iw = img.shape[-2], img.shape[-1]
        images[i, :, :ih, :iw].copy_(img)
        mask[i, :ih, :iw].fill_(True)
        if iw < w:  # right strip, then the bottom strip under it: each padded pixel written once
            images[i, :, :ih, iw:].zero_()
            mask[i, :ih, iw:].fill_(False)
        if ih < h:
            images[i, :, ih:].zero_()
            mask[i, ih:].fill_(False)
    return Batch(images, mask, [t for _, t in samples], skipped)


def _new_batch_tensor(shape: tuple[int, ...], dtype: torch.dtype, *, shared: bool) -> Tensor:
    """Uninitialised ``shape`` tensor; in shared memory when ``shared`` (inside a DataLoader worker).

    A batch built in a worker is sent to the main process through shared memory; allocating it there
    directly (as ``torch.utils.data.default_collate`` does) saves a second copy of every pixel.
    """
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for n in shape:
        numel *= n
    itemsize = torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(numel * itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class DetectionCollator:
    """Picklable ``collate_fn``: ``DataLoader(ds, collate_fn=DetectionCollator(size_divisibility=32))``."""

    def __init__(self, *, size_divisibility: int = 0) -> None:
        if size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
        self.size_divisibility = size_divisibility

    def __call__(self, batch: Sequence[tuple[Tensor, dict[str, Any]] | None]) -> Batch:
        return collate_detection(batch, size_divisibility=self.size_divisibility)
