"""Co-DETR's customized positive queries: the auxiliary heads' positives as extra decoder queries.

Each auxiliary head ``h`` gives, per image, its positive boxes (ATSS: the positive anchors; Faster
R-CNN: the sampled positive proposals) and the ground-truth box each is assigned to. Those boxes,
normalised, become the reference boxes of a group of queries whose position and content embeddings
come from the boxes' sine embedding through a per-head linear layer + LayerNorm (Co-DETR's
``aux_pos_trans``); the decoder (shared with the main queries) refines them, and each is trained
with DETR's losses against its *assigned* box, no Hungarian matching. The groups never see the main
queries (they are decoded in a separate pass) nor each other (a block-diagonal self-attention
mask); a group is padded per image to its largest count, at most ``max_queries``, and padded queries
attend only to themselves and carry no loss (Co-DETR's zero-padding variant).

Shapes: ``B`` images, ``M`` queries of all groups together, ``K`` classes. Boxes: cxcywh
normalised to the unpadded image (the decoder's convention) unless named ``_xyxy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from detrkit.boxes import box_xyxy_to_cxcywh

__all__ = ["PositiveQueries", "pack_positive_queries"]


@dataclass
class PositiveQueries:
    """The positive queries of all auxiliary heads of a batch.

    Attributes:
        boxes: ``[B, M, 4]`` reference boxes, cxcywh normalised (``0.5, 0.5, 0.1, 0.1`` at padding).
        valid: ``bool[B, M]``, False at padding.
        labels: ``int64[B, M]`` assigned class (``K`` at padding).
        target_boxes: ``[B, M, 4]`` assigned box, cxcywh normalised (the reference box at padding).
        attn_mask: ``bool[B, 1, M, M]``, True where query ``i`` may attend to query ``j``.
        group_sizes: ``M_h`` of each head (``sum == M``), in the heads' order.
    """

    boxes: Tensor
    valid: Tensor
    labels: Tensor
    target_boxes: Tensor
    attn_mask: Tensor
    group_sizes: list[int]


def _normalise(boxes_xyxy: Tensor, size_hw: tuple[int, int]) -> Tensor:
    h, w = size_hw
    scale = boxes_xyxy.new_tensor([w, h, w, h])
    return box_xyxy_to_cxcywh(boxes_xyxy.float() / scale).clamp(0.0, 1.0)


def pack_positive_queries(
    heads: Sequence[Sequence[tuple[Tensor, Tensor]]],
    targets: Sequence[dict[str, Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    *,
    num_classes: int,
    max_queries: int = 300,
    generator: torch.Generator | None = None,
) -> PositiveQueries:
    """Pad every head's positives into one query tensor with its assignments and masks.

    Args:
        heads: per head, per image ``(boxes_xyxy [P, 4] pixels of the unpadded image, gt index
            int64[P])``.
        targets: ``B`` dicts with ``"labels"`` ``int64[N_i]`` and ``"boxes"`` ``[N_i, 4]`` cxcywh
            normalised (the model's targets).
        image_sizes: ``B`` unpadded ``(h, w)`` in pixels.
        num_classes: ``K`` (the label of padded queries).
        max_queries: at most this many queries per head and image (a random subset beyond).
        generator: random generator of that subset (``None``: the global one).
    Returns:
        :class:`PositiveQueries`; a head without any positive in the batch keeps one padded query,
        so that its parameters stay in the graph (no "unused parameters" under DDP).
    """
    if max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    b = len(targets)
    device = targets[0]["boxes"].device if b else torch.device("cpu")
    pieces, sizes = [], []
    for positives in heads:
        kept = []
        for boxes, gt in positives:
            if boxes.shape[0] > max_queries:
                keep = torch.randperm(boxes.shape[0], generator=generator)[:max_queries].to(boxes.device)
                boxes, gt = boxes[keep], gt[keep]
            kept.append((boxes, gt))
        m = max(1, max((g.numel() for _, g in kept), default=0))
        ref = torch.tensor([0.5, 0.5, 0.1, 0.1], device=device).repeat(b, m, 1)
        tgt_boxes, labels = ref.clone(), torch.full((b, m), num_classes, dtype=torch.int64, device=device)
        valid = torch.zeros(b, m, dtype=torch.bool, device=device)
        for i, (boxes, gt) in enumerate(kept):
            n = gt.numel()
            if n == 0:
                continue
            gt = gt.to(device)
            ref[i, :n] = _normalise(boxes.to(device), image_sizes[i])
            tgt_boxes[i, :n] = targets[i]["boxes"].to(device, torch.float32)[gt]
            labels[i, :n] = targets[i]["labels"].to(device)[gt]
            valid[i, :n] = True
        pieces.append((ref, valid, labels, tgt_boxes))
        sizes.append(m)
    total = sum(sizes)
    mask = torch.zeros(b, 1, total, total, dtype=torch.bool, device=device)
    start = 0
    for (_, valid, _, _), m in zip(pieces, sizes, strict=True):
        block = valid[:, :, None] & valid[:, None, :]
        mask[:, 0, start : start + m, start : start + m] = block
        start += m
    mask |= torch.eye(total, dtype=torch.bool, device=device)  # padded queries attend to themselves
    return PositiveQueries(
        boxes=torch.cat([p[0] for p in pieces], 1),
        valid=torch.cat([p[1] for p in pieces], 1),
        labels=torch.cat([p[2] for p in pieces], 1),
        target_boxes=torch.cat([p[3] for p in pieces], 1),
        attn_mask=mask,
        group_sizes=sizes,
    )
