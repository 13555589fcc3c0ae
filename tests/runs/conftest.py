"""The engine's test doubles (``tests/engine/conftest.py``: a tiny detector, a squares dataset,
``double_config``, ``make_trainer``), loaded by file path, as the ``doubles`` fixture."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

_spec = importlib.util.spec_from_file_location(
    "engine_doubles_for_runs", Path(__file__).resolve().parents[1] / "engine" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_doubles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_doubles)


@pytest.fixture
def doubles() -> ModuleType:
    """``doubles.make_trainer(doubles.double_config(tmp_path / "run"))``..."""
    import torch

    torch.set_num_threads(1)
    return _doubles
