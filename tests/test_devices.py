"""``detrkit.devices.resolve_device``: the one resolver of ``--device`` values."""

from __future__ import annotations

import pytest
import torch

from detrkit.devices import available_devices, resolve_device
from detrkit.errors import ConfigError


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_and_cpu_without_a_gpu(no_gpu: None) -> None:
    assert available_devices() == ["cpu"]
    assert resolve_device(None) == resolve_device("auto") == resolve_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "gpu", "cuda:0", "gpu:1"])
def test_a_gpu_that_is_not_there_is_one_line_listing_the_devices(no_gpu: None, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device(name)
    message = str(info.value)
    assert message.startswith(f"--device {name}: no CUDA GPU") and "devices: cpu" in message
    assert "\n" not in message


def test_gpu_aliases_and_index_range(two_gpus: None) -> None:
    assert available_devices() == ["cpu", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("gpu:1") == torch.device("cuda:1") == resolve_device("cuda:1")
    with pytest.raises(ConfigError, match=r"--device cuda:2: only 2 CUDA GPU\(s\) here"):
        resolve_device("cuda:2")


def test_not_a_device_name(no_gpu: None) -> None:
    with pytest.raises(ConfigError, match=r"train\.device tpu0: not a device name \(this machine has: cpu\)"):
        resolve_device("tpu0", option="train.device")
    with pytest.raises(ConfigError, match=r"--device mps: not available here"):
        resolve_device("mps")
