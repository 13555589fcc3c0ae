"""Set-prediction losses of DETR (cross-entropy) and Deformable DETR (sigmoid focal).

Functional core (:func:`sigmoid_focal_loss`, :func:`num_boxes_across_processes`) plus the
:class:`SetCriterion` module that matches, computes each loss for the final and every auxiliary
decoder layer, and returns the weighted total. All losses are computed in float32 (bf16-safe).
The only host sync is the matcher's single copy of the cost matrices (a second one for two-stage
encoder proposals); the matched indices go back to the device in one non-blocking copy.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detrkit.boxes import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from detrkit.models.denoising import denoising_indices
from detrkit.models.dense import dense_class_targets
from detrkit.models.matcher import HungarianMatcher

__all__ = ["SetCriterion", "num_boxes_across_processes", "sigmoid_focal_loss"]

LossType = Literal["ce", "focal"]


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    num_boxes: Tensor | float,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    mask: Tensor | None = None,
    keep_dims: int = 0,
) -> Tensor:
    """Sigmoid focal loss (RetinaNet) summed over all elements and divided by ``num_boxes``.

    Equals Deformable DETR's ``sigmoid_focal_loss(...) * num_queries`` (its mean over queries
    times the number of queries).

    Args:
        logits: ``float[..., K]`` logits.
        targets: ``float[..., K]`` binary (one-hot) targets, same shape.
        num_boxes: normaliser (number of target boxes), scalar tensor or float.
        alpha: weight of positives (negatives get ``1 - alpha``); ``alpha < 0`` disables it.
        gamma: focusing exponent.
        mask: optional, broadcastable to ``logits``: elements where it is False (0) are left out
            of the sum (without indexing, so no host sync).
        keep_dims: sum over all but the first ``keep_dims`` dimensions (e.g. 1 for one loss per
            decoder layer of ``[L, B, Q, K]`` logits).
    Returns:
        Scalar loss (``[logits.shape[:keep_dims]]`` with ``keep_dims``).
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if mask is not None:
        loss = loss * mask
    if keep_dims:
        return loss.reshape(*loss.shape[:keep_dims], -1).sum(-1) / num_boxes
    return loss.sum() / num_boxes


def num_boxes_across_processes(num_local: int, device: torch.device) -> Tensor:
    """Average number of target boxes per process, as a float32 scalar tensor clamped to >= 1.

    Sums over processes with ``all_reduce`` when ``torch.distributed`` is initialised (without a
    host sync), then divides by the world size, like DETR.
    """
    num = torch.full((), float(num_local), dtype=torch.float32, device=device)  # a fill, not a copy
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return num.clamp(min=1.0)


def _to_device(cpu: Tensor, device: torch.device) -> Tensor:
    """Host-to-device copy; on CUDA from pinned memory with ``non_blocking`` so that the host does
    not wait for the queued GPU work (a pageable copy synchronises the stream)."""
    if device.type == "cuda":
        return cpu.pin_memory().to(device, non_blocking=True)
    return cpu.to(device)


class SetCriterion(nn.Module):
    """Hungarian-matched detection losses.

    Args:
        num_classes: number of real classes ``K`` (labels ``0..K-1``).
        matcher: the :class:`HungarianMatcher`; its ``class_cost`` should agree with ``loss``.
        loss: ``"ce"``: softmax cross-entropy over ``K + 1`` classes, the last one "no object",
            weighted by ``eos_coef`` (DETR); ``"focal"``: sigmoid focal loss over ``K`` classes
            normalised by the number of boxes (Deformable DETR).
        weight_ce, weight_bbox, weight_giou: loss weights in the total (DETR: 1, 5, 2; Deformable
            DETR: 2, 5, 2).
        eos_coef: relative weight of the no-object class (``"ce"`` only).
        focal_alpha, focal_gamma: focal loss parameters (``"focal"`` only).
        one_to_many_k: hybrid matching (H-DETR, Jia et al. 2023): when the outputs hold a
            ``"one_to_many"`` group of queries (training only), its predictions are matched to the
            targets repeated ``k`` times, so each object gets ``k`` positive queries, and their
            losses (normalised by ``k`` times the number of boxes) are added with weight
            ``one_to_many_weight``. 0 disables it. Inference uses the one-to-one queries only.
        enc_class_aware: two-stage encoder proposals are trained with the targets' classes
            instead of one class-agnostic "object" class (dense class supervision of the encoder,
            as the auxiliary heads of Co-DETR; rank proposals by their best class then).
        enc_k: each target is matched to ``enc_k`` encoder proposals (the targets repeated
            ``enc_k`` times, losses normalised by ``enc_k`` times the number of boxes); 1: the
            paper's one-to-one match.
        weight_dense: weight of the dense class loss of the encoder positions, when the outputs
            hold ``"enc_dense"`` (see :mod:`detrkit.models.dense`). 0: off.
        dense_center_fraction: the central part of a box whose positions are its positives.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        loss: LossType = "ce",
        weight_ce: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        eos_coef: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        one_to_many_k: int = 0,
        one_to_many_weight: float = 1.0,
        enc_class_aware: bool = False,
        enc_k: int = 1,
        weight_dense: float = 0.0,
        dense_center_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        if enc_k < 1:
            raise ValueError(f"enc_k must be >= 1 (1: one-to-one), got {enc_k}")
        if one_to_many_k < 0:
            raise ValueError(f"one_to_many_k must be >= 0 (0: off; H-DETR uses 6), got {one_to_many_k}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' (DETR) or 'focal' (Deformable DETR), got {loss!r}")
        if not 0.0 <= eos_coef <= 1.0:
            raise ValueError(f"eos_coef must be in [0, 1] (DETR uses 0.1), got {eos_coef}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.loss_type: LossType = loss
        self.weight_dict = {"loss_ce": weight_ce, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        self.eos_coef = eos_coef
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.one_to_many_k = one_to_many_k
        self.one_to_many_weight = one_to_many_weight
        self.enc_class_aware = enc_class_aware
        self.enc_k = enc_k
        if weight_dense < 0 or not 0 < dense_center_fraction <= 1:
            raise ValueError(
                f"weight_dense must be >= 0 and dense_center_fraction in (0, 1], got {weight_dense}, "
                f"{dense_center_fraction}"
            )
        self.weight_dense = weight_dense
        self.dense_center_fraction = dense_center_fraction
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, loss={self.loss_type!r}, weights={self.weight_dict}"

    def loss_labels(self, pred_logits: Tensor, tgt_classes: Tensor, num_boxes: Tensor) -> Tensor:
        """Classification loss of ``L`` stacked layers (any number of leading dimensions works).

        Args:
            pred_logits: ``[L, B, Q, K + 1]`` (``"ce"``) or ``[L, B, Q, K]`` (``"focal"``).
            tgt_classes: ``int64[L, B, Q]``: matched label, ``K`` for unmatched queries.
            num_boxes: normaliser of the focal loss (scalar tensor).
        Returns:
            float32 ``[L]``: one loss per layer (the weighted mean cross-entropy of each layer for
            ``"ce"``, as ``F.cross_entropy`` with class weights; the focal sum over ``num_boxes``).
        """
        logits = pred_logits.float()
        n_layers = logits.shape[0]
        if self.loss_type == "ce":
            weight = self.empty_weight.float()
            nll = F.cross_entropy(logits.flatten(0, -2), tgt_classes.flatten(), weight, reduction="none")
            return nll.view(n_layers, -1).sum(1) / weight[tgt_classes].view(n_layers, -1).sum(1)
        # scatter rather than F.one_hot, which checks the label range on the host (a sync on GPU)
        onehot = torch.zeros(
            (*tgt_classes.shape, self.num_classes + 1), dtype=logits.dtype, device=logits.device
        )
        onehot = onehot.scatter_(-1, tgt_classes.unsqueeze(-1), 1.0)[..., :-1]
        return sigmoid_focal_loss(
            logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=self.focal_gamma, keep_dims=1
        )

    def loss_dense(
        self, logits: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]], num_boxes: Tensor
    ) -> Tensor:
        """Dense class loss of the encoder positions (see :mod:`detrkit.models.dense`).

        Args:
            logits: ``[B, S, K]`` dense class logits.
            anchors: ``[B, S, 4]`` the positions' anchors (values ``>= 1`` where invalid).
            targets: the ``B`` target dicts.
            num_boxes: normaliser (scalar tensor).
        Returns:
            Scalar float32 sigmoid focal loss over the valid positions.
        """
        classes = dense_class_targets(
            anchors, targets, num_classes=self.num_classes, center_fraction=self.dense_center_fraction
        )
        onehot = torch.zeros(
            (*classes.shape, self.num_classes + 1), dtype=torch.float32, device=logits.device
        )
        onehot.scatter_(2, classes.clamp(min=0).unsqueeze(-1), 1.0)
        return sigmoid_focal_loss(
            logits.float(),
            onehot[..., :-1],
            num_boxes,
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            mask=(classes >= 0)[..., None],
        )

    @staticmethod
    def loss_boxes(
        src_boxes: Tensor, tgt_boxes: Tensor, num_boxes: Tensor, n_layers: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """L1 and GIoU losses of matched pairs (per layer with ``n_layers``).

        Args:
            src_boxes: ``[M, 4]`` matched predictions, cxcywh normalised (``[L * M, 4]``: ``L``
                layers of ``M`` matches each, with ``n_layers=L``).
            tgt_boxes: the matched targets, cxcywh normalised, same shape.
            num_boxes: normaliser (scalar tensor).
            n_layers: ``None``: one scalar per loss; ``L``: one loss per layer, ``[L]``.
        Returns:
            ``(loss_bbox, loss_giou)``: ``sum|src - tgt| / num_boxes`` and
            ``sum(1 - GIoU) / num_boxes`` (scalars, or ``[L]``).
        """
        src, tgt = src_boxes.float(), tgt_boxes.float()
        l1 = (src - tgt).abs()
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        if n_layers is None:
            return l1.sum() / num_boxes, (1 - giou).sum() / num_boxes
        return l1.view(n_layers, -1).sum(1) / num_boxes, (1 - giou).view(n_layers, -1).sum(1) / num_boxes

    @torch.no_grad()
    def cardinality_error(self, pred_logits: Tensor, tgt_lengths: Tensor) -> Tensor:
        """Mean absolute error of the number of predicted objects per image (logging only).

        A query counts as an object when its best class is not no-object (``"ce"``) or its best
        sigmoid probability exceeds 0.5 (``"focal"``).

        Args:
            pred_logits: ``[B, Q, C]``.
            tgt_lengths: ``float[B]`` number of targets per image.
        """
        if self.loss_type == "ce":
            card = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
        else:
            card = (pred_logits.float().sigmoid().amax(-1) > 0.5).sum(1)
        return F.l1_loss(card.float(), tgt_lengths)

    @staticmethod
    def _flat_indices(indices: list[tuple[Tensor, Tensor]], offsets: list[int]) -> Tensor:
        """Matcher pairs -> CPU ``int64[1, 3, M]``: image, prediction and (batch-global) target
        index, built with NumPy (host work, no tensor ops)."""
        pairs = [(src.numpy(), tgt.numpy()) for src, tgt in indices]
        flat = np.stack(
            (
                np.concatenate([np.full(len(src), i, dtype=np.int64) for i, (src, _) in enumerate(pairs)]),
                np.concatenate([src for src, _ in pairs]),
                np.concatenate([tgt + off for (_, tgt), off in zip(pairs, offsets, strict=True)]),
            )
        ).astype(np.int64, copy=False)
        return torch.from_numpy(flat[None])

    def _group_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        idx: Tensor,
        tgt_labels: Tensor,
        tgt_boxes: Tensor,
        num_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of ``L`` stacked layers of the same shape in one batched computation.

        Args:
            logits: ``[L, B, Q, C]``; boxes: ``[L, B, Q, 4]`` cxcywh normalised.
            idx: ``int64[L, 3, M]`` on the device (see :meth:`HungarianMatcher.match_flat`).
            tgt_labels: ``int64[T]``; tgt_boxes: ``[T, 4]``; num_boxes: scalar normaliser.
        Returns:
            ``{"loss_ce", "loss_bbox", "loss_giou"}``, each ``[L]``.
        """
        n_layers, m = idx.shape[0], idx.shape[2]
        layer_idx = torch.arange(n_layers, device=idx.device).repeat_interleave(m, output_size=n_layers * m)
        batch_idx, src_idx, tgt_idx = idx.transpose(0, 1).reshape(3, -1).unbind(0)
        tgt_classes = torch.full(logits.shape[:3], self.num_classes, dtype=torch.int64, device=idx.device)
        tgt_classes[layer_idx, batch_idx, src_idx] = tgt_labels[tgt_idx]
        loss_ce = self.loss_labels(logits, tgt_classes, num_boxes)
        loss_bbox, loss_giou = self.loss_boxes(
            boxes[layer_idx, batch_idx, src_idx], tgt_boxes[tgt_idx], num_boxes, n_layers
        )
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @staticmethod
    def _stacked(outputs: dict[str, Any]) -> tuple[Tensor, Tensor, list[str]]:
        """``outputs``' aux layers then its final layer as ``(logits [L, B, Q, C], boxes [L, B, Q, 4],
        suffixes)``; models give them stacked already as ``"stacked"`` (no copy), else stacked here."""
        aux = outputs.get("aux_outputs") or []
        suffixes = [f"_{i}" for i in range(len(aux))] + [""]
        if "stacked" in outputs and outputs["stacked"][0].shape[0] == len(aux) + 1:
            logits, boxes = outputs["stacked"]
            return logits, boxes, suffixes
        layers = [*aux, outputs]
        return (
            torch.stack([o["pred_logits"] for o in layers]),
            torch.stack([o["pred_boxes"] for o in layers]),
            suffixes,
        )

    def _weighted_losses(
        self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]
    ) -> tuple[list[tuple[list[str], float, Tensor]], Tensor]:
        """Match every layer of ``outputs`` (see :meth:`forward`) to ``targets``.

        Returns:
            ``([(names, weight, losses [len(names)])], tgt_lengths float[B])``: one entry per loss
            kind and group of layers computed together.
        """
        device = outputs["pred_logits"].device
        sizes = [int(t["boxes"].shape[0]) for t in targets]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.int64)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=torch.float32)
        num_boxes = num_boxes_across_processes(sum(sizes), device)

        logits, boxes, suffixes = self._stacked(outputs)
        # groups of layers of one shape: (logits, boxes, suffixes, CPU indices [L, 3, M], labels, norm)
        groups = [
            (logits, boxes, suffixes, self.matcher.match_flat(logits, boxes, targets), tgt_labels, num_boxes)
        ]
        if "enc_outputs" in outputs:  # two-stage proposals: a second match, class-agnostic by default
            enc, k = outputs["enc_outputs"], self.enc_k
            enc_targets = [
                {
                    "labels": (t["labels"] if self.enc_class_aware else torch.zeros_like(t["labels"])).repeat(
                        k
                    ),
                    "boxes": t["boxes"].repeat(k, 1),
                }
                for t in targets
            ]
            enc_indices = self.matcher(enc["pred_logits"], enc["pred_boxes"], enc_targets)
            # target j of the k-fold repetition is target j mod n of the image
            enc_indices = [(src, tgt % max(n, 1)) for (src, tgt), n in zip(enc_indices, sizes, strict=True)]
            labels = tgt_labels if self.enc_class_aware else torch.zeros_like(tgt_labels)
            groups.append(
                (enc["pred_logits"][None], enc["pred_boxes"][None], ["_enc"],
                 self._flat_indices(enc_indices, offsets), labels, num_boxes * self.enc_k)
            )  # fmt: skip
        dn = outputs.get("denoising")
        if dn is not None:  # denoising queries: a fixed assignment, no matching
            dn_logits, dn_boxes, dn_suffixes = self._stacked(dn)
            dn_flat = self._flat_indices(denoising_indices(sizes, dn["groups"], dn["slots"]), offsets)
            groups.append(
                (dn_logits, dn_boxes, [f"_dn{s}" for s in dn_suffixes],
                 dn_flat.expand(dn_logits.shape[0], -1, -1), tgt_labels, num_boxes * dn["groups"])
            )  # fmt: skip
        # every index and the target counts reach the device in one copy that does not wait for the GPU
        pieces = [g[3] for g in groups] + [torch.tensor(sizes, dtype=torch.int64)]
        packed = _to_device(torch.cat([p.flatten() for p in pieces]), device).split(
            [p.numel() for p in pieces]
        )
        tgt_lengths = packed[-1].float()

        weighted = []
        for (g_logits, g_boxes, g_suffixes, cpu_idx, labels, norm), idx in zip(
            groups, packed[:-1], strict=True
        ):
            losses = self._group_losses(g_logits, g_boxes, idx.view(cpu_idx.shape), labels, tgt_boxes, norm)
            weighted += [([k + s for s in g_suffixes], self.weight_dict[k], v) for k, v in losses.items()]
        return weighted, tgt_lengths

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Compute all losses.

        Args:
            outputs: ``"pred_logits"`` ``[B, Q, C]``, ``"pred_boxes"`` ``[B, Q, 4]`` cxcywh
                normalised, optional ``"aux_outputs"`` (list of dicts with the same keys, one per
                intermediate decoder layer) and optional ``"enc_outputs"`` (two-stage Deformable
                DETR proposals, trained class-agnostically: every target gets label 0) and optional
                ``"one_to_many"`` (hybrid matching, H-DETR: the outputs of an extra group of
                queries, same keys, matched one-to-one to every target repeated
                ``one_to_many_k`` times; ignored when ``one_to_many_k`` is 0) and optional
                ``"denoising"`` (DINO's denoising queries: the same keys plus ``"groups"`` and
                ``"slots"``, positive query ``g * 2 slots + j`` assigned to target ``j``, see
                :mod:`detrkit.models.denoising`; losses normalised by ``groups`` times the number
                of boxes).
            targets: ``B`` dicts with ``"labels"`` ``int64[N_i]`` in ``0..K-1`` and ``"boxes"``
                ``[N_i, 4]`` cxcywh normalised.
        Returns:
            ``"loss"``: differentiable weighted total; detached scalars ``"loss_ce"``,
            ``"loss_bbox"``, ``"loss_giou"``, the same per auxiliary layer with suffix ``_i``
            (``_enc`` for encoder proposals, ``_dn`` and ``_dn_i`` for denoising queries), the same
            with suffix ``_o2m`` for the one-to-many group, and ``"cardinality_error"`` (of the one-to-one predictions; logging only).
        """
        weighted, tgt_lengths = self._weighted_losses(outputs, targets)
        o2m = outputs.get("one_to_many")
        if o2m is not None and self.one_to_many_k > 0:  # hybrid matching: targets repeated k times
            k = self.one_to_many_k
            repeated = [{"labels": t["labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in targets]
            for names, weight, losses in self._weighted_losses(o2m, repeated)[0]:
                weighted.append(([n + "_o2m" for n in names], weight * self.one_to_many_weight, losses))
        dense = outputs.get("enc_dense")
        if dense is not None and self.weight_dense > 0:
            num_boxes = num_boxes_across_processes(
                sum(int(t["boxes"].shape[0]) for t in targets), dense["pred_logits"].device
            )
            loss = self.loss_dense(dense["pred_logits"], dense["anchors"], targets, num_boxes)
            weighted.append((["loss_dense"], self.weight_dense, loss[None]))
        total = torch.stack([w * v.sum() for _, w, v in weighted]).sum()
        result = {n: x for names, _, v in weighted for n, x in zip(names, v.detach().unbind(0), strict=True)}
        result["loss"] = total
        result["cardinality_error"] = self.cardinality_error(outputs["pred_logits"], tgt_lengths)
        return result
