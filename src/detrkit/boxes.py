"""Box formats and box geometry, in one place.

Formats (names carry them):
- ``xyxy``: corners ``(x0, y0, x1, y1)``;
- ``xywh``: COCO, top-left corner plus width and height, in pixels;
- ``cxcywh``: centre plus width and height; DETR targets and outputs use it normalised to [0, 1]
  by the (unpadded) image width and height.

All functions take tensors of shape ``[..., 4]`` and return the same leading shape.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """``[..., 4]`` cxcywh -> ``[..., 4]`` xyxy (same units)."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[..., 4]`` cxcywh (same units)."""
    x0, y0, x1, y1 = boxes_xyxy.unbind(-1)
    return torch.stack(((x0 + x1) * 0.5, (y0 + y1) * 0.5, x1 - x0, y1 - y0), dim=-1)


def box_xywh_to_xyxy(boxes_xywh: Tensor) -> Tensor:
    """``[..., 4]`` COCO xywh -> ``[..., 4]`` xyxy (same units)."""
    x, y, w, h = boxes_xywh.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def box_xyxy_to_xywh(boxes_xyxy: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[..., 4]`` COCO xywh (same units)."""
    x0, y0, x1, y1 = boxes_xyxy.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[...]`` area; negative extents count as zero."""
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0) * (
        boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
    ).clamp(min=0)


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union.

    Args:
        boxes1_xyxy: ``[N, 4]`` xyxy.
        boxes2_xyxy: ``[M, 4]`` xyxy.
    Returns:
        ``(iou [N, M], union [N, M])``. IoU of two empty boxes is 0.
    """
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    return iou, union


def generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019).

    Args:
        boxes1_xyxy: ``[N, 4]`` xyxy with x1 >= x0 and y1 >= y0.
        boxes2_xyxy: ``[M, 4]`` xyxy.
    Returns:
        ``[N, M]`` GIoU in [-1, 1].
    """
    iou, union = box_iou(boxes1_xyxy, boxes2_xyxy)
    lt = torch.minimum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.maximum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).tiny)


def elementwise_generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """GIoU of matched pairs: ``[N, 4]`` and ``[N, 4]`` xyxy -> ``[N]`` (no N x N matrix)."""
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.maximum(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])
    rb = torch.minimum(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    lt_c = torch.minimum(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])
    rb_c = torch.maximum(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    enclosing = wh_c[:, 0] * wh_c[:, 1]
    return iou - (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).tiny)
