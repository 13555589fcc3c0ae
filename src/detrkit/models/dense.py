"""Dense, one-to-many class supervision of the encoder (two-stage Deformable DETR), training only.

DETR supervises each object through one query: a few positives per image, which is why it learns
to *classify* slowly from scratch. Dense detectors (FCOS, Tian et al. 2019) and the auxiliary heads
of Co-DETR (Zong et al. 2023) supervise every feature position that lies on an object. This module
does the latter for the encoder: an extra linear class head reads the projected encoder memory at
every position, and each position whose centre falls in the central part of a ground-truth box
(``center_fraction`` of its width and height; FCOS's centre sampling) is a positive of that box's
class, the smallest box winning where boxes overlap. Each box also claims the position nearest to
its centre, so that small boxes get at least one positive. All other valid positions are
negatives; padded and border positions are ignored. The loss
(:meth:`~detrkit.models.criterion.SetCriterion.loss_dense`) is the sigmoid focal loss, normalised by
the number of boxes (as DETR's).

Nothing of it runs at inference: it shapes the features that the proposals and the decoder read.

Shapes: ``B`` images, ``S`` encoder positions (all levels), ``K`` classes, ``N_i`` targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dense_class_targets"]


def dense_class_targets(
    anchors: Tensor, targets: list[dict[str, Tensor]], *, num_classes: int, center_fraction: float = 0.5
) -> Tensor:
    """The class of every encoder position.

    Args:
        anchors: ``[B, S, 4]`` cxcywh anchor boxes of the positions (only their centres are used),
            normalised to the unpadded image; padded and border positions hold values ``>= 1``.
        targets: ``B`` dicts with ``"labels"`` ``int64[N_i]`` and ``"boxes"`` ``[N_i, 4]`` cxcywh
            normalised.
        num_classes: ``K``.
        center_fraction: a position is inside a box's central region when its centre is within
            ``center_fraction / 2`` of the box's width and height from the box centre.
    Returns:
        ``int64[B, S]``: the class ``0..K-1`` of a positive, ``K`` for a negative, ``-1`` for an
        ignored (invalid) position.
    """
    valid = (anchors < 1).all(-1)
    out = torch.full(valid.shape, num_classes, dtype=torch.int64, device=anchors.device)
    out.masked_fill_(~valid, -1)
    for b, t in enumerate(targets):
        boxes = t["boxes"].to(anchors.device, torch.float32)
        if boxes.shape[0] == 0:
            continue
        centres = anchors[b, :, :2].float()  # [S, 2]
        offset = (centres[:, None] - boxes[None, :, :2]).abs()  # [S, N, 2]
        inside = (offset < boxes[None, :, 2:] * (center_fraction / 2)).all(-1) & valid[b, :, None]
        distance = offset.pow(2).sum(-1).masked_fill(~valid[b, :, None], float("inf"))
        nearest = distance.argmin(0)  # [N]
        inside[nearest, torch.arange(boxes.shape[0], device=anchors.device)] = True
        area = (boxes[:, 2] * boxes[:, 3])[None].expand_as(inside).masked_fill(~inside, float("inf"))
        smallest_area, smallest = area.min(1)  # [S]
        positive = torch.isfinite(smallest_area)
        labels = t["labels"].to(anchors.device)[smallest]
        out[b] = torch.where(positive, labels, out[b])
    return out
