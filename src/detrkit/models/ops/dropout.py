"""Dropout in one ATen op.

``F.dropout`` on the CPU dispatches four ops per call (``empty_like``, ``bernoulli_``, ``div_``,
``mul``); ``torch.native_dropout`` is one op forward and one backward on every device (on CUDA
``F.dropout`` uses it already). Same distribution: zero with probability ``p``, else ``x / (1 - p)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Dropout"]


class Dropout(nn.Dropout):
    """Drop-in :class:`torch.nn.Dropout` (same arguments, no state) running ``native_dropout``."""

    def forward(self, x: Tensor) -> Tensor:
        """``x`` of any shape -> the same shape; identity in eval mode or with ``p == 0``."""
        if not self.training or self.p == 0.0:
            return x
        if self.inplace:
            return super().forward(x)
        return torch.native_dropout(x, self.p, True)[0]
