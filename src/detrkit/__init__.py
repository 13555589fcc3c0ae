"""detrkit: DETR-family object detection on COCO-format data, rare-class synthesis, aerial area.

The heavy parts are imported lazily, so ``import detrkit`` stays fast::

    from detrkit import Trainer, Predictor, evaluate_coco, build_model
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": "detrkit.models.registry",
    "list_models": "detrkit.models.registry",
    "evaluate_coco": "detrkit.evaluation.coco",
    "Trainer": "detrkit.engine.trainer",
    "Predictor": "detrkit.inference.predictor",
    "CocoIndex": "detrkit.data.coco",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detrkit' has no attribute {name!r}")
