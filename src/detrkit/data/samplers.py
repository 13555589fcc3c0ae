"""Repeat-factor sampling for long-tailed data (LVIS; Gupta et al., 2019).

For each class ``c`` let ``f_c`` be the fraction of images that contain it. Its repeat factor is
``r_c = max(1, sqrt(t / f_c))`` for a threshold ``t``; an image's factor is the largest ``r_c``
over the classes it contains (1 for an image without annotations). Each epoch, an image with factor
``r`` appears ``floor(r)`` times plus once more with probability ``r - floor(r)`` (stochastic
rounding), drawn from a generator seeded by ``(seed, epoch)``, so runs are reproducible and every
process of a distributed job draws the same list (Accelerate then shards the batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def repeat_factors(labels_per_image: Sequence[np.ndarray | Sequence[int]], *, threshold: float) -> np.ndarray:
    """Per-image repeat factors.

    Args:
        labels_per_image: for each image, the labels of its boxes (repeats allowed).
        threshold: ``t``; classes in fewer than a ``t`` fraction of images are repeated.
    Returns:
        ``float64 [num_images]``, each ``>= 1``.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    n = len(labels_per_image)
    image_classes = [set(np.asarray(lbl, dtype=np.int64).tolist()) for lbl in labels_per_image]
    counts: dict[int, int] = {}
    for classes in image_classes:
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    r_class = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    return np.array([max((r_class[c] for c in cl), default=1.0) for cl in image_classes], dtype=np.float64)


class RepeatFactorSampler(Sampler[int]):
    """Yields dataset indices, each repeated by its stochastically rounded factor, shuffled.

    Args:
        factors: per-image repeat factors (:func:`repeat_factors`).
        seed: base seed; the epoch (see :meth:`set_epoch`) is mixed in.
        shuffle: shuffle the repeated list (otherwise indices come in order).
    """

    def __init__(self, factors: np.ndarray | Sequence[float], *, seed: int = 0, shuffle: bool = True) -> None:
        self.factors = np.asarray(factors, dtype=np.float64)
        if self.factors.ndim != 1 or (self.factors < 1).any():
            raise ValueError("factors must be a 1-D array of values >= 1")
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    @classmethod
    def from_labels(
        cls,
        labels_per_image: Sequence[np.ndarray | Sequence[int]],
        *,
        threshold: float,
        seed: int = 0,
        shuffle: bool = True,
    ) -> RepeatFactorSampler:
        """Build from per-image labels, e.g. ``CocoDetection.labels_per_image()``."""
        return cls(repeat_factors(labels_per_image, threshold=threshold), seed=seed, shuffle=shuffle)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """The indices of the current epoch (``int64``), cached per epoch."""
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            whole = np.floor(self.factors)
            reps = whole.astype(np.int64) + (rng.random(len(self.factors)) < self.factors - whole)
            idx = np.repeat(np.arange(len(self.factors)), reps)
            if self.shuffle:
                idx = rng.permutation(idx)
            self._cache = (self.epoch, idx)
        return self._cache[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return len(self.indices())
