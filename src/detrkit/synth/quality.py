"""Quality filter for synthetic instances: keep only what a detector recognises.

A generated (or pasted) instance is *accepted* when a detector finds its class in its box: a
detection of the same class name with IoU >= ``iou`` against the instance's box and score >=
``score``. A synthetic image is kept when all its new instances are accepted (a rejected instance
cannot be dropped alone: its pixels stay in the image), otherwise it is rejected and
:func:`detrkit.synth.generate.synthesize` draws another, up to ``max_tries`` draws per image
wanted. ``metadata.json`` records, under ``"filter"``, the settings and the counts of kept and
rejected images and instances (per class), and every kept image its instances' scores.

The detector is anything with ``predict(PIL image, threshold=...) -> [Detections]`` and
``class_names`` (:class:`detrkit.inference.predictor.Predictor`): a trained run folder or checkpoint
(``--filter-model``), e.g. the baseline of an ablation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detrkit.synth.rare import SynthError


@dataclass(frozen=True)
class FilterParams:
    """Quality filter settings.

    Attributes:
        model: run folder or checkpoint of the detector (recorded in metadata).
        score: minimum detection score that accepts an instance.
        iou: minimum IoU between the detection and the instance's box.
        max_tries: at most ``max_tries x per_class`` draws per class.
    """

    model: str
    score: float = 0.3
    iou: float = 0.5
    max_tries: int = 5


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``float [N, M]`` of xyxy boxes ``a [N, 4]`` and ``b [M, 4]``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class DetectorFilter:
    """Scores new instances with a detector (see the module docstring)."""

    def __init__(self, detector: Any, params: FilterParams) -> None:
        self.detector = detector
        self.params = params

    @classmethod
    def from_model(cls, params: FilterParams, *, device: str | None = None) -> DetectorFilter:
        """Load ``params.model`` (a run folder: its best checkpoint; or a checkpoint file)."""
        from detrkit.errors import DetrkitError
        from detrkit.inference.predictor import Predictor

        path = Path(params.model)
        if not path.exists():
            raise SynthError(f"{path}: filter model not found (a run folder or a checkpoint)")
        try:
            pred = (
                Predictor.from_run(path, device=device)
                if path.is_dir()
                else Predictor.from_checkpoint(path, device=device)
            )
        except DetrkitError as err:
            raise SynthError(f"{path}: cannot load the filter model ({err})") from None
        return cls(pred, params)

    def scores(self, image: np.ndarray, instances: list[tuple[str, list[float]]]) -> list[float]:
        """Best score of a same-class detection with IoU >= ``iou``, per ``(class name, xywh box)``
        (0.0 when none); ``image`` is ``uint8 [H, W, 3]``."""
        if not instances:
            return []
        (det,) = self.detector.predict(Image.fromarray(image), threshold=min(self.params.score, 0.05))
        names = det.names
        out = []
        for name, (x, y, w, h) in instances:
            same = [i for i, n in enumerate(names) if n == name]
            if not same:
                out.append(0.0)
                continue
            ious = box_iou_xyxy(np.array([[x, y, x + w, y + h]]), det.boxes_xyxy[same])[0]
            hits = [float(det.scores[i]) for i, v in zip(same, ious, strict=True) if v >= self.params.iou]
            out.append(max(hits, default=0.0))
        return out

    def accepts(self, scores: list[float]) -> list[bool]:
        return [s >= self.params.score for s in scores]


class FilterTally:
    """Counts of kept and rejected images and instances, per class, for ``metadata.json``."""

    def __init__(self, params: FilterParams) -> None:
        self.params = params
        self.per_class: dict[str, dict[str, int]] = {}

    def add(self, class_name: str, accepted: list[bool]) -> bool:
        """Record one image's instances; True when the image is kept."""
        c = self.per_class.setdefault(
            class_name, {"kept_images": 0, "rejected_images": 0, "kept_instances": 0, "rejected_instances": 0}
        )
        keep = all(accepted)
        c["kept_images" if keep else "rejected_images"] += 1
        c["kept_instances"] += sum(accepted) if keep else 0
        c["rejected_instances"] += sum(not a for a in accepted)
        return keep

    def to_dict(self) -> dict[str, Any]:
        totals = {
            k: sum(c[k] for c in self.per_class.values()) for k in next(iter(self.per_class.values()), {})
        }
        return {
            "model": self.params.model,
            "score": self.params.score,
            "iou": self.params.iou,
            "max_tries": self.params.max_tries,
            **totals,
            "per_class": self.per_class,
        }
