"""Exponential moving average of model weights (as in YOLO / RT-DETR / timm ModelEmaV2)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` after each optimizer step.

    The decay ramps up from 0 as ``decay * (1 - exp(-updates / warmup))`` so that early, poor
    weights are forgotten quickly. Floating-point buffers follow the same average; integer buffers
    (e.g. BatchNorm's ``num_batches_tracked``) are copied.

    Args:
        model: the (unwrapped) model to follow; a deep copy is kept on the same device.
        decay: final decay.
        warmup: ramp length in updates (0 disables the ramp).
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9998, warmup: int = 2000) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model`` (same architecture, unwrapped)."""
        self.updates += 1
        d = self.current_decay()
        src = model.state_dict()
        for name, ema_t in self.module.state_dict().items():
            cur = src[name].detach()
            if ema_t.dtype.is_floating_point:
                ema_t.mul_(d).add_(cur.to(ema_t.dtype), alpha=1 - d)
            else:
                ema_t.copy_(cur)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
