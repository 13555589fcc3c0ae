"""Segmentation and GSD losses: a functional core with thin ``nn.Module`` wrappers (smp style).

All segmentation losses are binary ("building" vs background) and take
``logits: float[B,1,H,W]`` (raw, before sigmoid) and ``target: float[B,1,H,W]`` in {0, 1}.

- :func:`dice_loss`: ``1 - (2 Σ p t + s) / (Σ p + Σ t + s)`` over the whole batch (``per_image``:
  averaged over images instead).
- :func:`focal_loss`: sigmoid focal loss of Lin et al. (alpha-balanced), mean over pixels.
- :func:`boundary_loss`: Kervadec et al.'s boundary loss ``mean(sigmoid(logits) * sdm)`` with the
  signed distance map of the target (negative inside objects, positive outside,
  :func:`signed_distance_map`); its weight is ramped up by :class:`BoundaryWeightSchedule`.
- :func:`gsd_loss`: L1 on log-GSD (so ``exp(loss) - 1`` is close to the relative error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn


def dice_loss(logits: Tensor, target: Tensor, *, smooth: float = 1.0, per_image: bool = False) -> Tensor:
    """Soft Dice loss. logits, target: [B,1,H,W]. Returns a scalar in [0, 1]."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    if not per_image:
        p, t = p.reshape(1, -1), t.reshape(1, -1)
    inter = (p * t).sum(1)
    dice = (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()


def focal_loss(logits: Tensor, target: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss, mean over all pixels. logits, target: [B,1,H,W]; ``alpha < 0`` disables balancing."""
    logits, target = logits.float(), target.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def signed_distance_map(mask: np.ndarray, *, clip: float = 32.0) -> np.ndarray:
    """Signed Euclidean distance to the object boundary, in pixels divided by ``clip``.

    Args:
        mask: bool[H,W] (True on buildings).
        clip: distances are clipped to ``[-clip, clip]`` pixels then divided by ``clip``.
    Returns:
        float32[H,W]: ``-(d_in - 1)`` inside (0 on the boundary pixels, negative deeper inside),
        ``d_out`` outside (1 px away = 1/clip). All zeros when the mask is empty or full (no boundary).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float32)
    d_out = ndimage.distance_transform_edt(~mask)
    d_in = ndimage.distance_transform_edt(mask)
    sdm = np.where(mask, -(d_in - 1.0), d_out)
    return (np.clip(sdm, -clip, clip) / clip).astype(np.float32)


def boundary_loss(logits: Tensor, sdm: Tensor) -> Tensor:
    """Boundary loss ``mean(sigmoid(logits) * sdm)``. logits, sdm: [B,1,H,W]. Minimised by the target mask."""
    return (torch.sigmoid(logits.float()) * sdm.float()).mean()


def gsd_loss(pred_log_gsd: Tensor, target_log_gsd: Tensor) -> Tensor:
    """L1 loss between predicted and true natural-log GSDs. Both [B]; NaN targets (unknown GSD) are left out.

    Returns 0 (with a gradient path) when no target in the batch is known.
    """
    known = torch.isfinite(target_log_gsd)
    diff = (pred_log_gsd.float() - torch.nan_to_num(target_log_gsd.float())).abs()
    return (diff * known).sum() / known.sum().clamp(min=1)


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss`."""

    def __init__(self, *, smooth: float = 1.0, per_image: bool = False) -> None:
        super().__init__()
        self.smooth, self.per_image = smooth, per_image

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_loss(logits, target, smooth=self.smooth, per_image=self.per_image)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`."""

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma)


class BoundaryLoss(nn.Module):
    """Module form of :func:`boundary_loss`."""

    def forward(self, logits: Tensor, sdm: Tensor) -> Tensor:
        return boundary_loss(logits, sdm)


@dataclass(frozen=True)
class BoundaryWeightSchedule:
    """Boundary-loss weight: 0 for ``start`` epochs, then a linear ramp to ``max_weight`` over ``ramp`` epochs.

    Kervadec et al. start from the region losses alone and increase the boundary term, because the
    boundary loss alone has trivial minima (empty predictions) early in training.
    """

    max_weight: float = 1.0
    start: int = 1
    ramp: int = 10

    def __call__(self, epoch: int) -> float:
        if epoch < self.start:
            return 0.0
        return self.max_weight * min(1.0, (epoch - self.start + 1) / max(1, self.ramp))


class AerialLoss(nn.Module):
    """Dice + Focal + w_b(epoch) Boundary + GSD loss.

    ``forward(outputs, batch)`` with ``outputs = {"logits": [B,1,H,W], "log_gsd": [B]}`` and
    ``batch = {"mask": [B,1,H,W], "sdm": [B,1,H,W], "log_gsd": [B]}`` returns ``{"loss": scalar,
    "loss_dice", "loss_focal", "loss_boundary", "loss_gsd"}`` (components detached).
    Call :meth:`set_epoch` once per epoch to update the boundary weight.
    """

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        focal_weight: float = 10.0,
        boundary: BoundaryWeightSchedule | None = None,
        gsd_weight: float = 0.5,
        focal_alpha: float = 0.25,
    ) -> None:
        super().__init__()
        self.dice_weight, self.focal_weight, self.gsd_weight = dice_weight, focal_weight, gsd_weight
        self.focal_alpha = focal_alpha
        self.schedule = boundary or BoundaryWeightSchedule()
        self.boundary_weight = self.schedule(0)

    def set_epoch(self, epoch: int) -> None:
        self.boundary_weight = self.schedule(epoch)

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = outputs["logits"]
        parts = {
            "loss_dice": dice_loss(logits, batch["mask"]),
            "loss_focal": focal_loss(logits, batch["mask"], alpha=self.focal_alpha),
            "loss_boundary": boundary_loss(logits, batch["sdm"]),
            "loss_gsd": gsd_loss(outputs["log_gsd"], batch["log_gsd"]),
        }
        total = (
            self.dice_weight * parts["loss_dice"]
            + self.focal_weight * parts["loss_focal"]
            + self.boundary_weight * parts["loss_boundary"]
            + self.gsd_weight * parts["loss_gsd"]
        )
        return {"loss": total, **{k: v.detach() for k, v in parts.items()}}
