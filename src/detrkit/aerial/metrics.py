"""Segmentation and GSD metrics, accumulated over a validation set.

Inria's official metrics are the IoU and the pixel accuracy over *all* pixels of the set (not the
mean over images); we add F1 (= Dice) of the building class and the mean absolute percentage error
of the predicted GSD.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class SegmentationMeter:
    """Accumulates confusion counts and GSD errors; :meth:`compute` returns the metrics dict."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0
        self.ape_sum, self.n_gsd = 0.0, 0

    def update(
        self,
        prob: Tensor,
        target: Tensor,
        pred_log_gsd: Tensor | None = None,
        true_log_gsd: Tensor | None = None,
        *,
        threshold: float = 0.5,
    ) -> None:
        """prob, target: [B,1,H,W] (probabilities, {0,1}); log-GSDs: [B] (NaN true values are skipped)."""
        pred = prob >= threshold
        true = target >= 0.5
        self.tp += int((pred & true).sum())
        self.fp += int((pred & ~true).sum())
        self.fn += int((~pred & true).sum())
        self.tn += int((~pred & ~true).sum())
        if pred_log_gsd is not None and true_log_gsd is not None:
            known = torch.isfinite(true_log_gsd)  # NaN: the tile's GSD is not known
            ape = (torch.exp(pred_log_gsd.float()[known] - true_log_gsd.float()[known]) - 1).abs()
            self.ape_sum += float(ape.sum())
            self.n_gsd += int(ape.numel())

    def compute(self) -> dict[str, float]:
        """``IoU``, ``accuracy``, ``F1``, ``precision``, ``recall`` in [0, 1] and ``gsd_mape`` in percent."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        total = tp + fp + fn + tn
        return {
            "IoU": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            "accuracy": (tp + tn) / total if total else math.nan,
            "F1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "gsd_mape": 100.0 * self.ape_sum / self.n_gsd if self.n_gsd else math.nan,
        }
