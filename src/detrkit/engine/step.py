"""One optimizer step, built from explicit settings and the components it drives.

A step runs ``grad_accum`` micro-batches (DDP gradient sync only on the last), checks the loss for
non-finite values across processes, then clips, steps AdamW and the schedule, and updates the EMA.
A step with a non-finite loss is skipped: gradients are zeroed, nothing is updated, the step is
counted; ``max_nonfinite`` in a row raise :class:`~detrkit.errors.TrainingError`. The only host
sync of a step is one ``tolist()`` of the loss, its components, the gradient norm and the flags.

The step knows nothing of the trainer or the config: :func:`detrkit.engine.builders.step_settings`
reads the config into :class:`StepSettings`, the trainer hands over the components.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detrkit.engine.optim import set_bn_eval, trainable_parameters
from detrkit.errors import TrainingError


@dataclass(frozen=True)
class StepSettings:
    """What a training step needs to know (``train.*`` and ``model.freeze_bn``).

    Attributes:
        grad_accum: micro-batches per optimizer step (>= 1).
        clip_grad_norm: global gradient-norm clip; ``None`` or ``<= 0``: no clipping.
        max_nonfinite: consecutive non-finite losses that abort the run.
        channels_last: feed the images in NHWC memory format.
        freeze_bn: keep every BatchNorm layer in eval mode while training.
        where: how errors name the run (its folder).
    """

    grad_accum: int = 1
    clip_grad_norm: float | None = 0.1
    max_nonfinite: int = 5
    channels_last: bool = False
    freeze_bn: bool = False
    where: str = "run"


class TrainStep:
    """One optimizer step over micro-batches; counts the steps and the skipped ones.

    Args:
        settings: :class:`StepSettings`.
        accelerator: the ``accelerate.Accelerator`` that prepared ``model`` and ``optimizer``.
        model: the prepared (possibly DDP-wrapped) detector; ``model(images, pixel_mask, targets)``
            returns a dict with a scalar ``"loss"`` and its detached ``"loss_*"`` components.
        optimizer, scheduler: stepped after each finite step (the schedule only when the
            optimizer really stepped, e.g. not on an fp16 overflow).
        ema: a :class:`~detrkit.engine.ema.ModelEMA` updated after each finite step, or ``None``.
        stop: set when a stop (Ctrl-C) was asked; shared across processes in the step's one sync.
    """

    def __init__(
        self,
        settings: StepSettings,
        *,
        accelerator: Any,
        model: nn.Module,
        optimizer: Any,
        scheduler: Any,
        ema: Any = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.acc = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.stop = stop or threading.Event()
        self.global_step = 0
        self.nonfinite_total = 0
        self.consecutive_nonfinite = 0

    def state_dict(self) -> dict[str, int]:
        return {
            "global_step": self.global_step,
            "nonfinite_total": self.nonfinite_total,
            "consecutive_nonfinite": self.consecutive_nonfinite,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.consecutive_nonfinite = int(state["consecutive_nonfinite"])

    def train_mode(self) -> None:
        """``model.train()``, with the BatchNorm layers kept in eval mode under ``freeze_bn``
        (the one place that knows about frozen BatchNorm while training)."""
        self.model.train()
        if self.settings.freeze_bn:
            set_bn_eval(self.acc.unwrap_model(self.model))

    def train_step(self, micro_batches: list[Any], *, epoch: int = 0) -> dict[str, float]:
        """Forward/backward over the micro-batches (:class:`~detrkit.data.collate.Batch`) and one
        optimizer step (or a skip); ``epoch`` (0-based) only names the step in errors.

        Returns the step's host values: ``loss``, components (``loss_ce``...), ``grad_norm``,
        ``nonfinite`` (1.0 when skipped) and ``stop`` (1.0 when any process asked to stop).
        """
        acc, model, s = self.acc, self.model, self.settings
        self.train_mode()
        n = len(micro_batches)
        device = acc.device
        bad = torch.zeros((), device=device)
        total = torch.zeros((), device=device)
        comps: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            batch = batch.to(device)
            sync_now = i == n - 1 or acc.num_processes == 1
            with contextlib.nullcontext() if sync_now else acc.no_sync(model):
                images = batch.normalized()
                if s.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                out = model(images, batch.pixel_mask, batch.targets)
                loss = out["loss"]
                acc.backward(loss / n)
            detached = loss.detach().float()
            bad = torch.maximum(bad, (~torch.isfinite(detached)).float())
            total = total + detached / n
            for key, value in out.items():
                if (
                    key != "loss"
                    and key.startswith("loss")
                    and isinstance(value, torch.Tensor)
                    and value.ndim == 0
                ):
                    comps[key] = comps.get(key, 0.0) + value.detach().float() / n
        flags = torch.stack([bad, torch.tensor(float(self.stop.is_set()), device=device)])
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        grad_norm = torch.zeros((), device=device)
        skipped = False
        # One host sync decides the step: a non-finite loss anywhere skips it everywhere.
        if float(flags[0].item()) > 0:
            skipped = True
        else:
            clip = s.clip_grad_norm
            if clip is not None and clip > 0:
                grad_norm = acc.clip_grad_norm_(list(trainable_parameters(model)), clip)
            self.optimizer.step()
            if not getattr(self.optimizer, "step_was_skipped", False):
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(model))
        self.optimizer.zero_grad(set_to_none=True)
        keys = list(comps)
        values = torch.stack([total, grad_norm.float(), flags[1], *[comps[k] for k in keys]]).tolist()
        result = {"loss": values[0], "grad_norm": values[1], "stop": values[2], "nonfinite": float(skipped)}
        result.update(zip(keys, values[3:], strict=False))
        self.global_step += 1
        if skipped:
            self.nonfinite_total += 1
            self.consecutive_nonfinite += 1
            if self.consecutive_nonfinite >= s.max_nonfinite:
                raise TrainingError(
                    f"{s.where}: {self.consecutive_nonfinite} non-finite losses in a row (epoch {epoch + 1}, "
                    f"step {self.global_step}); lower optim.lr, set train.clip_grad_norm, use fp32 or check the data"
                )
        else:
            self.consecutive_nonfinite = 0
        return result
