"""Resumable, distributed, reproducible batch order.

The order of an epoch depends only on ``(seed, epoch)``: a training run that is resumed in the middle
of an epoch replays the same order and skips the batches it already consumed. Each global batch of
``batch_size * world_size`` images is cut into one slice per process, so one process with batch
``B * W`` sees exactly the images that ``W`` processes with batch ``B`` see together.

Random augmentations are made reproducible in the same way: the sampler yields
``(index, sample_seed)`` keys, and :class:`SeededDataset` seeds the python/numpy/torch generators with
``sample_seed`` around each ``dataset[index]``. The seed depends on ``(seed, epoch, position)`` only,
so augmentations do not depend on the number of workers, on the process count or on resumption.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919) % (2**63))
    return g


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(dataset_index, sample_seed)`` for one process.

    Args:
        num_samples: dataset length.
        batch_size: images per process per step.
        seed: run seed; the order of epoch ``e`` is a function of ``(seed, e)``.
        rank: this process; ``world_size``: number of processes.
        shuffle: permute each epoch (training) or keep the dataset order (validation).
        drop_last: drop the last incomplete global batch (training). Without it the last global
            batch is split as evenly as possible and a process may get a short or empty batch.
        weights: optional per-image repeat factors (e.g. repeat-factor sampling for rare classes):
            each epoch image ``i`` appears ``floor(w_i)`` times plus once more with probability
            ``frac(w_i)``, drawn from the same ``(seed, epoch)`` generator.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        weights: Sequence[float] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if weights is not None and len(weights) != num_samples:
            raise ValueError(f"weights has {len(weights)} entries for {num_samples} samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip its first ``start_batch`` batches (for resuming)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def _order(self) -> list[int]:
        g = _epoch_generator(self.seed, self.epoch)
        if self.weights is not None:
            base = self.weights.floor()
            extra = (
                torch.rand(self.num_samples, generator=g, dtype=torch.float64) < (self.weights - base)
            ).to(torch.float64)
            counts = (base + extra).long()
            order = torch.repeat_interleave(torch.arange(self.num_samples), counts)
        else:
            order = torch.arange(self.num_samples)
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=g)]
        return order.tolist()

    def _global_batches(self) -> list[list[int]]:
        """Positions (into the epoch order) of each global batch."""
        n = len(self._order()) if self.weights is not None else self.num_samples
        step = self.batch_size * self.world_size
        full = n // step
        batches = [list(range(b * step, (b + 1) * step)) for b in range(full)]
        if not self.drop_last and n % step:
            batches.append(list(range(full * step, n)))
        return batches

    def _rank_slice(self, positions: list[int]) -> list[int]:
        if len(positions) == self.batch_size * self.world_size:
            return positions[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return positions[self.rank :: self.world_size]  # short last batch: round-robin

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self._order()
        base_seed = (self.seed * 1_000_003 + self.epoch * 7919 + 17) % (2**31)
        for positions in self._global_batches()[self.start_batch :]:
            mine = self._rank_slice(positions)
            yield [(order[p], (base_seed + p * 2654435761) % (2**31)) for p in mine]

    def __len__(self) -> int:
        return len(self._global_batches()) - self.start_batch

    def batches_per_epoch(self) -> int:
        """Global batches of a whole epoch (ignoring ``start_batch``)."""
        return len(self._global_batches())


class SeededDataset(Dataset):
    """Wraps a map-style dataset; ``ds[(index, seed)]`` runs ``base[index]`` under ``seed``.

    The python, numpy and torch generators are seeded before the call and restored afterwards, so
    the caller's random streams are untouched. Integer keys pass through unseeded.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, int):
            return self.base[key]
        index, seed = key
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            return self.base[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)

    def __getattr__(self, name: str) -> Any:
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


class EvalBatchSampler(Sampler[list[int]]):
    """Validation batches in dataset order, the same number of batches on every process.

    The index list is padded by wrapping around to a multiple of ``world_size`` so that every
    process runs the same number of forward passes (the loss of DETR-family models all-reduces the
    box count); the few repeated images are dropped when predictions are merged (by image id).
    """

    def __init__(self, num_samples: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def _mine(self) -> list[int]:
        if self.num_samples == 0:
            return []
        per_rank = -(-self.num_samples // self.world_size)
        padded = [i % self.num_samples for i in range(per_rank * self.world_size)]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._mine()
        for start in range(0, len(mine), self.batch_size):
            yield mine[start : start + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self._mine()) // self.batch_size)
