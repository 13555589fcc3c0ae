"""Hungarian matching between predictions and targets (DETR, Deformable DETR).

The cost matrix of the whole batch is computed on the device in one shot, copied to the host once
(the only host sync of a training step) and split per image for SciPy's
``linear_sum_assignment``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from detrkit.boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "focal_class_cost", "match_cost_matrix", "one_to_many_options"]

ClassCost = Literal["ce", "focal"]

# Finite stand-in for NaN/inf costs so that a diverging model does not crash SciPy; the trainer
# sees the non-finite loss and deals with it.
_BIG_COST = 1e8


def focal_class_cost(
    logits: Tensor, tgt_labels: Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Deformable DETR's focal classification cost.

    Args:
        logits: ``float[N, K]`` class logits (sigmoid, no no-object class).
        tgt_labels: ``int64[T]`` target labels in ``0..K-1``.
        alpha: focal weight of the positive class.
        gamma: focusing exponent.
    Returns:
        ``float[N, T]``: ``pos_cost - neg_cost`` of each prediction for each target's class.
    """
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * (-(1 - prob + 1e-8).log())
    pos = alpha * (1 - prob).pow(gamma) * (-(prob + 1e-8).log())
    return pos[:, tgt_labels] - neg[:, tgt_labels]


def match_cost_matrix(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    tgt_labels: Tensor,
    tgt_boxes: Tensor,
    *,
    class_cost: ClassCost = "ce",
    cost_class: float = 1.0,
    cost_bbox: float = 1.0,
    cost_giou: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Tensor:
    """Matching cost of every prediction of the batch against every target of the batch.

    Args:
        pred_logits: ``[B, Q, C]`` logits (``C = K + 1`` with no-object last for ``"ce"``,
            ``C = K`` for ``"focal"``).
        pred_boxes: ``[B, Q, 4]`` cxcywh normalised.
        tgt_labels: ``int64[T]`` labels of all targets of the batch, concatenated.
        tgt_boxes: ``[T, 4]`` cxcywh normalised, concatenated like ``tgt_labels``.
        class_cost: ``"ce"`` (``-softmax prob`` of the target class) or ``"focal"``.
        cost_class, cost_bbox, cost_giou: weights of the class, L1 (on cxcywh) and ``-GIoU`` costs.
        focal_alpha, focal_gamma: parameters of the focal cost.
    Returns:
        ``float32[B, Q, T]`` finite costs (NaN/inf replaced by a large constant).
    """
    b, q, _ = pred_logits.shape
    logits = pred_logits.flatten(0, 1).float()
    boxes = pred_boxes.flatten(0, 1).float()
    tgt_boxes = tgt_boxes.float()
    if class_cost == "ce":
        c_class = -logits.softmax(-1)[:, tgt_labels]
    elif class_cost == "focal":
        c_class = focal_class_cost(logits, tgt_labels, alpha=focal_alpha, gamma=focal_gamma)
    else:
        raise ValueError(f"class_cost must be 'ce' or 'focal', got {class_cost!r}")
    c_bbox = torch.cdist(boxes, tgt_boxes, p=1)
    c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
    cost = cost_bbox * c_bbox + cost_class * c_class + cost_giou * c_giou
    cost = torch.nan_to_num(cost, nan=_BIG_COST, posinf=_BIG_COST, neginf=-_BIG_COST)
    return cost.view(b, q, -1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets minimising the weighted matching cost.

    Args:
        cost_class: weight of the classification cost.
        cost_bbox: weight of the L1 distance between cxcywh boxes.
        cost_giou: weight of ``-GIoU`` between xyxy boxes.
        class_cost: ``"ce"`` (DETR: ``-p(target class)``) or ``"focal"`` (Deformable DETR).
        focal_alpha, focal_gamma: focal cost parameters (``class_cost="focal"`` only).
    """

    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_cost: ClassCost = "ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if class_cost not in ("ce", "focal"):
            raise ValueError(f"class_cost must be 'ce' or 'focal', got {class_cost!r}")
        if min(cost_class, cost_bbox, cost_giou) < 0 or cost_class + cost_bbox + cost_giou == 0:
            raise ValueError(
                "matcher costs must be >= 0 and not all 0, got "
                f"cost_class={cost_class}, cost_bbox={cost_bbox}, cost_giou={cost_giou}"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.class_cost: ClassCost = class_cost
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def extra_repr(self) -> str:
        return (
            f"class_cost={self.class_cost!r}, cost_class={self.cost_class}, "
            f"cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}"
        )

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match a batch.

        Args:
            pred_logits: ``[B, Q, C]`` class logits.
            pred_boxes: ``[B, Q, 4]`` cxcywh normalised.
            targets: ``B`` dicts with ``"labels"`` ``int64[N_i]`` and ``"boxes"`` ``[N_i, 4]``
                cxcywh normalised (``N_i`` may be 0).
        Returns:
            ``B`` pairs ``(pred_idx, tgt_idx)`` of ``int64[min(Q, N_i)]`` CPU tensors:
            prediction ``pred_idx[j]`` is matched to target ``tgt_idx[j]``.
        """
        return self.match_layers([(pred_logits, pred_boxes)], targets)[0]

    @torch.no_grad()
    def match_layers(
        self, layers: list[tuple[Tensor, Tensor]], targets: list[dict[str, Tensor]]
    ) -> list[list[tuple[Tensor, Tensor]]]:
        """Match the outputs of several decoder layers with a single device-to-host copy.

        Args:
            layers: ``L`` pairs ``(pred_logits [B, Q, C], pred_boxes [B, Q, 4] cxcywh normalised)``
                of the same shapes.
            targets: ``B`` dicts as in :meth:`forward`.
        Returns:
            ``L`` lists of ``B`` pairs ``(pred_idx, tgt_idx)`` as in :meth:`forward`.
        """
        logits = torch.stack([lg for lg, _ in layers]) if len(layers) > 1 else layers[0][0][None]
        boxes = torch.stack([bx for _, bx in layers]) if len(layers) > 1 else layers[0][1][None]
        return [
            [(torch.from_numpy(rows), torch.from_numpy(cols)) for rows, cols in per_image]
            for per_image in self.assign(logits, boxes, targets)
        ]

    @torch.no_grad()
    def match_flat(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """Match ``L`` stacked decoder layers at once and flatten the matches (what the criterion uses).

        Args:
            pred_logits: ``[L, B, Q, C]`` class logits of ``L`` layers.
            pred_boxes: ``[L, B, Q, 4]`` cxcywh normalised.
            targets: ``B`` dicts as in :meth:`forward`.
        Returns:
            CPU ``int64[L, 3, M]`` (``M = sum_i min(Q, N_i)``, the same for every layer): image,
            prediction and batch-global target index (targets of image ``i`` are numbered after
            those of images ``0..i-1``) of every match, built on the host with NumPy.
        """
        assigned = self.assign(pred_logits, pred_boxes, targets)
        sizes = [int(t["boxes"].shape[0]) for t in targets]
        offsets = np.cumsum([0, *sizes[:-1]])
        flat = np.stack(
            [
                np.stack(
                    [
                        np.concatenate([np.full(len(r), i, dtype=np.int64) for i, (r, _) in enumerate(per)]),
                        np.concatenate([r for r, _ in per]),
                        np.concatenate([c + off for (_, c), off in zip(per, offsets, strict=True)]),
                    ]
                )
                for per in assigned
            ]
        ).astype(np.int64, copy=False)
        return torch.from_numpy(flat)

    def assign(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Costs of ``L`` layers in one batched computation, one copy to the host, SciPy per image.

        Args:
            pred_logits: ``[L, B, Q, C]``; pred_boxes: ``[L, B, Q, 4]`` cxcywh normalised.
            targets: ``B`` dicts as in :meth:`forward`.
        Returns:
            ``L`` lists of ``B`` pairs ``(pred_idx, tgt_idx)`` of ``int64[min(Q, N_i)]`` NumPy arrays.
        """
        n_layers, b, q, c = pred_logits.shape
        if len(targets) != b:
            raise ValueError(
                f"got {len(targets)} target dicts for a batch of {b} predictions; give one per image"
            )
        sizes = [int(t["boxes"].shape[0]) for t in targets]
        empty = np.zeros(0, dtype=np.int64)
        if sum(sizes) == 0:
            return [[(empty, empty) for _ in range(b)] for _ in range(n_layers)]
        device = pred_logits.device
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.int64)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(device)
        cost = match_cost_matrix(
            pred_logits.reshape(n_layers * b, q, c),
            pred_boxes.reshape(n_layers * b, q, 4),
            tgt_labels,
            tgt_boxes,
            class_cost=self.class_cost,
            cost_class=self.cost_class,
            cost_bbox=self.cost_bbox,
            cost_giou=self.cost_giou,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
        )
        return _assign(cost.view(n_layers, b, q, -1), sizes)


@torch.compiler.disable
def _assign(cost_all: Tensor, sizes: list[int]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Solve every assignment on the host (one graph break under ``torch.compile``).

    Args:
        cost_all: ``[L, B, Q, T]`` costs on any device; ``T = sum(sizes)``.
        sizes: number of targets of each of the ``B`` images.
    Returns:
        ``L`` lists of ``B`` pairs ``(pred_idx, tgt_idx)`` of ``int64`` NumPy arrays.
    """
    costs = cost_all.cpu().numpy()  # the one host copy of the step
    bounds = np.cumsum([0, *sizes])
    empty = np.zeros(0, dtype=np.int64)
    result = []
    for cost in costs:
        per_image = []
        for i, n in enumerate(sizes):
            if n == 0:
                per_image.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(cost[i, :, bounds[i] : bounds[i + 1]])
            per_image.append((rows.astype(np.int64), cols.astype(np.int64)))
        result.append(per_image)
    return result


def one_to_many_options(one_to_many: dict[str, Any] | None) -> dict[str, Any]:
    """Validate the hybrid-matching option of the builders (H-DETR's one-to-many branch).

    Args:
        one_to_many: ``{"k": 4, "queries": 100}`` (each target repeated ``k`` times for an extra
            group of ``queries`` queries; optional ``"weight"`` of that group's loss) or ``None``.
    Returns:
        ``{"k": int, "queries": int, "weight": float}``; ``k`` and ``queries`` are 0 for ``None``.
    Raises:
        ValueError: unknown or missing keys, ``k`` or ``queries`` below 1.
    """
    if one_to_many is None:
        return {"k": 0, "queries": 0, "weight": 1.0}
    unknown = sorted(set(one_to_many) - {"k", "queries", "weight"})
    if unknown or not {"k", "queries"} <= set(one_to_many):
        raise ValueError(
            f"one_to_many takes k, queries and optional weight, e.g. {{k: 4, queries: 100}}; got {one_to_many}"
        )
    k, queries = int(one_to_many["k"]), int(one_to_many["queries"])
    if k < 1 or queries < 1:
        raise ValueError(f"one_to_many needs k >= 1 and queries >= 1, got {one_to_many}")
    return {"k": k, "queries": queries, "weight": float(one_to_many.get("weight", 1.0))}
