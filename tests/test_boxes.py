"""detrkit.boxes against torchvision.ops as the independent reference."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import generalized_box_iou as tv_giou

from detrkit.boxes import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    elementwise_generalized_box_iou,
    generalized_box_iou,
)


def _random_xyxy(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 100
    wh = torch.rand(n, 2, generator=generator) * 50 + 0.5
    return torch.cat([xy, xy + wh], dim=1).double()


def test_conversions_match_torchvision_and_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    b = _random_xyxy(50, g)
    torch.testing.assert_close(box_xyxy_to_cxcywh(b), box_convert(b, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_xyxy_to_xywh(b), box_convert(b, "xyxy", "xywh"))
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(b)), b)
    torch.testing.assert_close(box_xywh_to_xyxy(box_xyxy_to_xywh(b)), b)
    # Leading dimensions are preserved.
    assert box_cxcywh_to_xyxy(b.view(5, 10, 4)).shape == (5, 10, 4)


def test_iou_and_giou_match_torchvision() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = _random_xyxy(20, g), _random_xyxy(30, g)
    iou, _ = box_iou(a, b)
    torch.testing.assert_close(iou, tv_box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), tv_giou(a, b))
    pairs = elementwise_generalized_box_iou(a, b[:20])
    torch.testing.assert_close(pairs, torch.diagonal(tv_giou(a, b[:20])))


def test_hand_computed_iou_and_giou() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    iou, union = box_iou(a, b)
    assert union.item() == 7.0
    assert abs(iou.item() - 1 / 7) < 1e-7
    # Enclosing box 3x3=9: GIoU = 1/7 - (9 - 7) / 9.
    assert abs(generalized_box_iou(a, b).item() - (1 / 7 - 2 / 9)) < 1e-7
    # Degenerate boxes give finite values (no division by zero).
    z = torch.zeros(1, 4)
    assert torch.isfinite(generalized_box_iou(z, z)).all()
