"""Co-DETR's one-stage auxiliary head: ATSS (Zhang et al., 2020) on the encoder's feature maps.

One square anchor per position (side ``8 x stride``, :class:`~detrkit.models.co_detr.neck.FixedStrideAnchors`),
a shared tower of 3x3 convolutions + GroupNorm + ReLU, then per position ``K`` sigmoid class logits,
4 box deltas (torchvision's :class:`BoxCoder`, weights ``(10, 10, 5, 5)``: mmdetection's stds
``(0.1, 0.1, 0.2, 0.2)``) and a centerness logit. Assignment (:func:`atss_assign`): for every
ground-truth box, the ``topk`` anchors of each level whose centres are nearest to its centre are
candidates; those with an IoU of at least the candidates' mean + standard deviation and a centre
inside the box are its positives (an anchor claimed twice goes to the box of higher IoU).

Losses (mmdetection's ATSS): torchvision's ``sigmoid_focal_loss`` over all anchors / positives, GIoU
of the decoded positive boxes weighted by their centerness target / the sum of those targets, and the
centerness BCE / positives. The positive anchors and their boxes become Co-DETR's positive queries.

Boxes here are xyxy in pixels of the (unpadded) input image, as torchvision's detection code uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from detrkit.models.co_detr.neck import FixedStrideAnchors
from detrkit.models.criterion import num_boxes_across_processes

__all__ = ["ATSSHead", "atss_assign", "centerness_targets"]


def atss_assign(anchors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, *, topk: int = 9) -> Tensor:
    """Adaptive training sample selection.

    Args:
        anchors: ``[A, 4]`` xyxy anchors of all levels, concatenated level after level.
        num_per_level: anchors of each level (sums to ``A``).
        gt_boxes: ``[N, 4]`` xyxy ground-truth boxes.
        topk: candidates per level and box (nearest anchor centres).
    Returns:
        ``int64[A]``: the index of the box an anchor is a positive of, ``-1`` for a negative.
    """
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    n = gt_boxes.shape[0]
    if n == 0 or anchors.shape[0] == 0:
        return matched
    ious = box_iou(anchors, gt_boxes)  # [A, N]
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, gt_centres)  # [A, N]
    candidates, start = [], 0
    for count in num_per_level:
        if count > 0:
            k = min(topk, count)
            candidates.append(distances[start : start + count].topk(k, dim=0, largest=False).indices + start)
        start += count
    cand = torch.cat(candidates)  # [C, N]
    cand_iou = ious.gather(0, cand)
    std = cand_iou.std(0) if cand.shape[0] > 1 else torch.zeros_like(cand_iou[0])
    threshold = cand_iou.mean(0) + std
    cx, cy = anchor_centres[cand, 0], anchor_centres[cand, 1]  # [C, N]
    eps = 0.01  # mmdetection's margin: the centre strictly inside the box
    inside = (
        (cx - gt_boxes[:, 0] > eps)
        & (cy - gt_boxes[:, 1] > eps)
        & (gt_boxes[:, 2] - cx > eps)
        & (gt_boxes[:, 3] - cy > eps)
    )
    positive = (cand_iou >= threshold) & inside
    column = torch.arange(n, device=anchors.device).expand_as(cand)
    overlaps = torch.full_like(ious, -1.0)
    overlaps[cand[positive], column[positive]] = ious[cand[positive], column[positive]]
    best, best_gt = overlaps.max(1)
    return torch.where(best >= 0, best_gt, matched)


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS centerness of anchor centres in their boxes: ``[M, 4]`` xyxy each -> ``[M]`` in [0, 1]."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_top = centres - gt_boxes[:, :2]
    right_bottom = gt_boxes[:, 2:] - centres
    lr = torch.stack((left_top[:, 0], right_bottom[:, 0]), -1).clamp(min=0)
    tb = torch.stack((left_top[:, 1], right_bottom[:, 1]), -1).clamp(min=0)
    ratio = lr.amin(-1) / lr.amax(-1).clamp(min=1e-6) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-6))
    return ratio.sqrt()


class ATSSHead(nn.Module):
    """ATSS head on ``L`` feature maps of ``channels`` channels (see the module docstring).

    Args:
        channels: input (and tower) channels.
        num_classes: ``K``.
        strides: the maps' strides in pixels, finest first.
        stacked_convs: tower depth (Co-DETR: 1).
        norm_groups: GroupNorm groups of the tower.
        topk: ATSS candidates per level.
        anchor_scale: anchor side in strides (ATSS: 8).
        focal_alpha, focal_gamma: the classification focal loss.
        weight_cls, weight_bbox, weight_centerness: ATSS's loss weights (1, 2, 1).
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        strides: Sequence[int],
        stacked_convs: int = 1,
        norm_groups: int = 32,
        topk: int = 9,
        anchor_scale: float = 8.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        weight_cls: float = 1.0,
        weight_bbox: float = 2.0,
        weight_centerness: float = 1.0,
    ) -> None:
        super().__init__()
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.num_classes = num_classes
        self.topk = topk
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.weights = {"cls": weight_cls, "bbox": weight_bbox, "centerness": weight_centerness}
        self.anchors = FixedStrideAnchors(
            [(anchor_scale * s,) for s in strides], [(1.0,)] * len(strides), strides
        )
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        tower: list[nn.Module] = []
        for _ in range(stacked_convs):
            tower += [
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.GroupNorm(norm_groups, channels),
                nn.ReLU(),
            ]
        self.tower = nn.Sequential(*tower)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - 0.01) / 0.01))

    def forward(
        self, maps: list[Tensor], image_list: ImageList, targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, tuple[float, Tensor]], list[tuple[Tensor, Tensor]]]:
        """Losses and positives of a batch.

        Args:
            maps: ``L`` maps ``[B, C, H_l, W_l]``.
            image_list: the batch (only ``image_sizes``, unpadded ``(h, w)``, is read).
            targets: ``B`` dicts with ``"boxes"`` ``[N_i, 4]`` xyxy pixels, ``"labels"`` ``int64[N_i]``
                in ``0..K-1``.
        Returns:
            ``({"loss_atss_cls" | "loss_atss_bbox" | "loss_atss_centerness": (weight, loss)},
            positives)`` with one ``(anchors [P_i, 4] xyxy pixels, gt index int64[P_i])`` per image.
        """
        b = maps[0].shape[0]
        cls, reg, ctr = [], [], []
        for f in maps:
            t = self.tower(f)
            cls.append(self.cls_logits(t).flatten(2).transpose(1, 2))  # [B, HW, K]
            reg.append(self.bbox_pred(t).flatten(2).transpose(1, 2))
            ctr.append(self.centerness(t).flatten(2).transpose(1, 2))
        cls_logits, deltas, ctr_logits = torch.cat(cls, 1), torch.cat(reg, 1), torch.cat(ctr, 1)[..., 0]
        anchors = self.anchors(image_list, maps)[0]  # [A, 4]
        num_per_level = [f.shape[-2] * f.shape[-1] for f in maps]
        matched = torch.stack(
            [atss_assign(anchors, num_per_level, t["boxes"], topk=self.topk) for t in targets]
        )
        positive = matched >= 0  # [B, A]
        cls_targets = torch.zeros_like(cls_logits, dtype=torch.float32)
        img_idx, anchor_idx = positive.nonzero(as_tuple=True)
        gt_idx = matched[img_idx, anchor_idx]
        offsets = torch.tensor([0] + [len(t["labels"]) for t in targets], device=anchors.device).cumsum(0)[
            :-1
        ]
        all_labels = torch.cat([t["labels"] for t in targets]).to(anchors.device)
        all_boxes = torch.cat([t["boxes"] for t in targets]).to(anchors.device, torch.float32)
        flat_gt = offsets[img_idx] + gt_idx
        cls_targets[img_idx, anchor_idx, all_labels[flat_gt]] = 1.0
        num_pos = num_boxes_across_processes(int(img_idx.numel()), anchors.device)
        loss_cls = (
            sigmoid_focal_loss(
                cls_logits.float(),
                cls_targets,
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="sum",
            )
            / num_pos
        )
        pos_anchors, pos_gt = anchors[anchor_idx], all_boxes[flat_gt]
        pred = self.box_coder.decode_single(deltas[img_idx, anchor_idx].float(), pos_anchors.float())
        centerness = centerness_targets(pos_anchors, pos_gt)
        giou = generalized_box_iou_loss(pred, pos_gt, reduction="none")
        loss_bbox = (giou * centerness).sum() / centerness.sum().clamp(min=1e-6)
        loss_ctr = (
            F.binary_cross_entropy_with_logits(
                ctr_logits[img_idx, anchor_idx].float(), centerness, reduction="sum"
            )
            / num_pos
        )
        losses = {
            "loss_atss_cls": (self.weights["cls"], loss_cls),
            "loss_atss_bbox": (self.weights["bbox"], loss_bbox),
            "loss_atss_centerness": (self.weights["centerness"], loss_ctr),
        }
        positives = [(anchors[anchor_idx[img_idx == i]], gt_idx[img_idx == i]) for i in range(b)]
        return losses, positives
