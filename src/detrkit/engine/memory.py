"""Memory readings for the epoch line, the preflight and ``bench/memory_soak.py``."""

from __future__ import annotations

import os
import resource
import sys

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def current_rss_mb() -> float:
    """The process's resident memory now (``/proc/self/statm``), or its peak where that is missing."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_memory_mb(torch.device("cpu"))


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak (the CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
