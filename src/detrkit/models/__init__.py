"""detrkit.models: DETR, Deformable DETR and torchvision baselines behind one interface.

::

    from detrkit.models import build_model, list_models, load_hf_weights
    model = build_model("detr-tiny", num_classes=3)
    outputs = model(images, pixel_mask, targets)          # raw outputs + losses
    detections = model.postprocess(outputs, orig_sizes_hw)

See ``docs/models.md`` for the model zoo and loading Hugging Face weights.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from detrkit.models.base import Detector
from detrkit.models.registry import build_model, list_models, model_info, register_model

_LAZY = {
    "load_hf_weights": "detrkit.models.hf_weights",
    "build_model_from_hf": "detrkit.models.hf_weights",
    "HungarianMatcher": "detrkit.models.matcher",
    "SetCriterion": "detrkit.models.criterion",
}

__all__ = ["Detector", "build_model", "list_models", "model_info", "register_model", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detrkit.models' has no attribute {name!r}")
