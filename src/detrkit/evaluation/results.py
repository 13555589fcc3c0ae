"""Detections -> COCO results entries, the one conversion (validation, predict, analyze).

A COCO results entry is ``{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}``
(the format ``evaluate_coco`` and pycocotools read); boxes are rounded to 3 decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detrkit.boxes import box_xyxy_to_xywh


def coco_results(
    image_id: int,
    boxes_xyxy: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    category_ids: Sequence[int],
    *,
    score_threshold: float = 0.0,
    score_digits: int = 5,
) -> list[dict[str, Any]]:
    """COCO results entries of one image's detections.

    Args:
        image_id: the COCO image id.
        boxes_xyxy: ``[N, 4]`` xyxy in pixels of the original image.
        scores: ``[N]``; labels: ``[N]`` contiguous labels ``0..K-1``.
        category_ids: COCO category id of each contiguous label (``len == K``).
        score_threshold: drop detections scoring below it.
        score_digits: decimals kept of the score (validation keeps 5, prediction files 6).
    """
    boxes_t = torch.as_tensor(boxes_xyxy).reshape(-1, 4)
    scores_t = torch.as_tensor(scores).reshape(-1)
    labels_t = torch.as_tensor(labels).reshape(-1)
    keep = scores_t >= score_threshold
    boxes = box_xyxy_to_xywh(boxes_t[keep].float()).cpu().tolist()
    kept_scores = scores_t[keep].float().cpu().tolist()
    kept_labels = labels_t[keep].cpu().tolist()
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]),
            "bbox": [round(v, 3) for v in box],
            "score": round(score, score_digits),
        }
        for box, score, label in zip(boxes, kept_scores, kept_labels, strict=True)
    ]
