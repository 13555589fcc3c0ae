"""Device choice for everything outside the training loop (whose device comes from Accelerate).

``pick_device(None)`` / ``pick_device("auto")`` -> CUDA when available, else the CPU; any other
name (``"cpu"``, ``"cuda:1"``) or ``torch.device`` is used as given; ``cpu=True`` (a run's
``train.cpu``) keeps the automatic choice on the CPU.
"""

from __future__ import annotations

import torch


def pick_device(name: str | torch.device | None = None, *, cpu: bool = False) -> torch.device:
    """The device to run on (see the module docstring)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    return torch.device(name)
