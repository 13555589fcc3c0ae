"""The one place that turns a user's ``--device`` / ``device:`` value into a ``torch.device``.

``resolve_device(None | "auto")`` picks the first CUDA GPU when there is one, else Apple's MPS, else
the CPU. Anything else must name a device that exists on this machine: ``cpu``, ``cuda``, ``cuda:N``,
``gpu`` / ``gpu:N`` (aliases of ``cuda``) or ``mps``. A device that does not exist raises
:class:`~detrkit.errors.ConfigError` with one line listing the devices that do, instead of a CUDA
assertion deep inside the first ``.to(device)``.
"""

from __future__ import annotations

import torch

from detrkit.errors import ConfigError


def available_devices() -> list[str]:
    """The device names this machine has: ``["cpu"]`` plus ``cuda:0..N-1`` and ``mps`` when present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None = None, *, option: str = "--device") -> torch.device:
    """``None``/``auto`` -> the best device present; a name -> that device, checked to exist.

    Args:
        device: ``None``, ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"gpu"``, ``"mps"`` or a
            ``torch.device``.
        option: how the value was given, for the message (``--device``, ``train.device``...).

    Raises:
        ConfigError: the name is not a device, or names one this machine does not have.
    """
    present = available_devices()
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device(present[1] if len(present) > 1 else "cpu")
    name = str(device).strip().lower()
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"{option} {device}: not a device name (this machine has: {', '.join(present)})"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"{option} {device}: no CUDA GPU on this machine (devices: {', '.join(present)})"
            )
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"{option} {device}: only {count} CUDA GPU(s) here (devices: {', '.join(present)})"
            )
        return dev
    if dev.type == "mps" and "mps" in present:
        return dev
    raise ConfigError(f"{option} {device}: not available here (devices: {', '.join(present)})")


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 autocast is much faster than fp32 on ``device``.

    CUDA: GPUs of compute capability 8.0 or newer (bf16 tensor cores). CPU: processors with AMX
    tiles (Intel Sapphire Rapids and newer), where oneDNN runs bf16 convolutions and matrix products
    on AMX (measured 3.1x faster than fp32 on a ResNet-50 forward in channels-last, one thread;
    ``bench/RESULTS.md``); AVX512-BF16 without AMX was not measured, so it does not count.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(dev)[0] >= 8
    if dev.type == "cpu":
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(probe is not None and probe())
    return False
