"""One epoch of the training loop: micro-batches from the loader into :class:`TrainStep`.

:class:`EpochLoop` groups the loader's batches into ``grad_accum`` micro-batches, skips batches of
unreadable images, runs the step, keeps the epoch's loss sums and its position (micro-batches
consumed, for exact mid-epoch resume), logs, saves ``last.pt`` every ``checkpoint_every_steps`` and
on a stop, and returns the epoch's ``metrics.csv`` row. It is built from :class:`LoopSettings` and
explicit components; it never sees the trainer or the config.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detrkit.engine.memory import current_rss_mb, peak_memory_mb, reset_peak
from detrkit.engine.step import TrainStep
from detrkit.errors import DataError, TrainingError


@dataclass(frozen=True)
class LoopSettings:
    """What the epoch loop needs to know (``train.*``, ``data.train_images``).

    Attributes:
        epochs: epochs of the run (for the progress bar).
        steps_per_epoch: optimizer steps per epoch.
        grad_accum: micro-batches per optimizer step.
        checkpoint_every_steps: save ``last.pt`` every N steps inside an epoch (0: never).
        profile: trace ``profile_steps`` steps of the first epoch into ``profile_dir``.
        profile_dir: where the trace goes (``None``: no trace, e.g. on non-main processes).
        train_images: how errors name the training images.
    """

    epochs: int
    steps_per_epoch: int
    grad_accum: int = 1
    checkpoint_every_steps: int = 0
    profile: bool = False
    profile_steps: int = 5
    profile_dir: Path | None = None
    train_images: str = "training images"


class EpochLoop:
    """Epochs of training steps.

    Args:
        settings: :class:`LoopSettings`.
        step: the :class:`TrainStep` (its optimizer's param groups give the logged rates).
        loader, sampler: the training ``DataLoader`` and its
            :class:`~detrkit.engine.sampling.ResumableBatchSampler`.
        log: the :class:`~detrkit.runs.logger.RunLogger`.
        save_last: writes ``checkpoints/last.pt`` (collective: every process calls it).
        run_dir: named in the interruption message.
    """

    def __init__(
        self,
        settings: LoopSettings,
        *,
        step: TrainStep,
        loader: Any,
        sampler: Any,
        log: Any,
        save_last: Callable[[], None],
        run_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.step = step
        self.loader = loader
        self.sampler = sampler
        self.log = log
        self.save_last = save_last
        self.run_dir = run_dir
        self.epoch_batches = 0  # micro-batches of the current epoch already consumed
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.epoch_nonfinite = 0

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "epoch_nonfinite": self.epoch_nonfinite}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = dict(state["sums"])
        self.steps = int(state["steps"])
        self.epoch_nonfinite = int(state["epoch_nonfinite"])

    def first_batch(self, epoch: int) -> Any:
        """The first batch with a readable image the next step of ``epoch`` would use (for the
        preflight); batches of unreadable images are passed over, and none at all is one line."""
        self.sampler.set_epoch(epoch, start_batch=self.epoch_batches)
        skipped = 0
        for batch in self.loader:
            if len(batch.targets) > 0:
                return batch
            skipped += getattr(batch, "skipped", 0)
        if skipped:
            raise DataError(
                f"{self.settings.train_images}: no training image could be read ({skipped} tried); "
                "run `detrkit data check` on the folder"
            )
        raise TrainingError(
            f"{self.run_dir}: the training loader yields no batch (check data and batch size)"
        )

    def _drop_empty(self, micro: list[Any]) -> list[Any]:
        """Batches whose every image was unreadable are skipped (one process) or fatal (several)."""
        kept = [b for b in micro if len(b.targets) > 0]
        if len(kept) < len(micro):
            acc = self.step.acc
            if acc.num_processes > 1:
                raise TrainingError(
                    f"{self.settings.train_images}: a whole batch of unreadable images on process "
                    f"{acc.process_index}; run `detrkit data check` and fix or remove them"
                )
            self.log.warn(
                f"skipped a batch of {sum(getattr(b, 'skipped', 0) for b in micro)} unreadable images"
            )
        return kept

    def _profiler(self, epoch: int) -> contextlib.AbstractContextManager[Any]:
        s = self.settings
        if not (s.profile and epoch == 0 and s.profile_dir is not None):
            return contextlib.nullcontext(None)
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        cuda = self.step.acc.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        return profile(
            activities=activities,
            schedule=schedule(wait=1, warmup=1, active=max(s.profile_steps, 1), repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(s.profile_dir)),
            record_shapes=True,
            profile_memory=True,
        )

    def run_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train epoch ``epoch`` (0-based) from :attr:`epoch_batches` on; returns the
        ``metrics.csv`` row, or ``None`` when a stop (Ctrl-C) was requested (``last.pt`` is then
        saved)."""
        s, step, log = self.settings, self.step, self.log
        acc, optimizer = step.acc, step.optimizer
        accum = s.grad_accum
        if self.epoch_batches == 0:
            self.sums, self.steps, self.epoch_nonfinite = {}, 0, 0
        self.sampler.set_epoch(epoch, start_batch=self.epoch_batches)
        steps_done = -(-self.epoch_batches // accum)
        log.start_epoch(epoch, s.epochs, s.steps_per_epoch, steps_done)
        t0 = time.perf_counter()
        images = skipped_images = 0
        reset_peak(acc.device)
        iterator = iter(self.loader)
        with self._profiler(epoch) as prof:
            while steps_done < s.steps_per_epoch:
                micro = []
                for batch in iterator:
                    micro.append(batch)
                    if len(micro) == accum:
                        break
                if not micro:
                    break
                consumed = len(micro)
                skipped_images += sum(getattr(b, "skipped", 0) for b in micro)
                micro = self._drop_empty(micro)
                if not micro:
                    self.epoch_batches += consumed
                    continue
                res = step.train_step(micro, epoch=epoch)
                self.epoch_batches += consumed
                steps_done += 1
                self.steps += 1
                if res["nonfinite"]:
                    self.epoch_nonfinite += 1
                n_img = sum(len(b.targets) for b in micro) * acc.num_processes
                images += n_img
                for k, v in res.items():
                    if k.startswith("loss") and res["nonfinite"] == 0:
                        self.sums[k] = self.sums.get(k, 0.0) + v
                lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
                log.advance(n_img, loss=res["loss"], lr=max(lrs.values()))
                log.scalars(
                    {k: v for k, v in res.items() if k.startswith("loss") or k == "grad_norm"},
                    step.global_step,
                    "train",
                )
                log.scalars(lrs, step.global_step, "lr")
                if prof is not None:
                    prof.step()
                if res["stop"] > 0:
                    log.end_epoch()
                    self.save_last()
                    log.info(
                        f"interrupted: saved {self.run_dir}/checkpoints/last.pt (epoch {epoch + 1}, batch {self.epoch_batches}); resume with --resume {self.run_dir}"
                    )
                    return None
                every = s.checkpoint_every_steps
                if every and steps_done % every == 0 and steps_done < s.steps_per_epoch:
                    self.save_last()
        rate = log.end_epoch()
        if images == 0 and skipped_images > 0:
            raise DataError(
                f"{s.train_images}: none of the training images of epoch {epoch + 1} could be read "
                f"({skipped_images} skipped); run `detrkit data check` on the folder"
            )
        good = max(self.steps - self.epoch_nonfinite, 1)
        if acc.num_processes > 1 and self.sums:  # mean of the per-process losses
            keys = sorted(self.sums)
            mean = acc.reduce(torch.tensor([self.sums[k] for k in keys], device=acc.device), reduction="mean")
            self.sums = dict(zip(keys, mean.tolist(), strict=False))
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step.global_step}
        row.update({f"train/{k}": v / good for k, v in sorted(self.sums.items())})
        row.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
        row["train/images_per_s"] = images / max(time.perf_counter() - t0, 1e-9) if images else rate
        row["time_s"] = time.perf_counter() - t0
        row["nonfinite"] = self.epoch_nonfinite
        row["skipped_images"] = skipped_images
        row["memory_mb"] = round(peak_memory_mb(acc.device), 1)  # CUDA peak of the epoch, or peak RSS
        row["rss_mb"] = round(current_rss_mb(), 1)
        return row
