"""Batching detection samples: zero padding, a pixel mask, and the count of skipped samples.

``collate_detection(batch)`` takes what :class:`~detrkit.data.dataset.CocoDetection` returns, a
list of ``(image float32 [3, H_i, W_i], target dict)`` or ``None`` for a skipped (bad) image, and
returns a :class:`Batch`. ``None`` entries are dropped and counted in ``Batch.skipped``, so the
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


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        images: ``float32 [B, 3, H, W]``, each image at the top-left, zeros elsewhere.
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
        batch: samples ``(image [3, H_i, W_i], target)`` or ``None`` (skipped).
        size_divisibility: pad ``H`` and ``W`` up to a multiple of this (0 or 1: no rounding).
    Returns:
        :class:`Batch` with ``images [B, 3, H, W]``, ``pixel_mask bool [B, H, W]`` and ``skipped``.
    """
    samples = [s for s in batch if s is not None]
    skipped = len(batch) - len(samples)
    if not samples:
        return Batch(torch.zeros(0, 3, 0, 0), torch.zeros(0, 0, 0, dtype=torch.bool), [], skipped)
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
    directly (as ``torch.utils.data.default_collate`` does) saves a second 4-byte-per-pixel copy.
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
