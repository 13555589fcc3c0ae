"""One optimizer step and one epoch of the training loop (used by the trainer and the preflight).

A step runs ``grad_accum`` micro-batches (DDP gradient sync only on the last), checks the loss for
non-finite values across processes, then clips, steps AdamW and the schedule, and updates the EMA.
A step with a non-finite loss is skipped: gradients are zeroed, nothing is updated, the step is
counted; ``train.max_nonfinite`` in a row raise :class:`~detrkit.errors.TrainingError`. The only host
sync of a step is one ``tolist()`` of the loss, its components, the gradient norm and the flags.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import torch

from detrkit.engine.optim import set_bn_eval, trainable_parameters
from detrkit.engine.preflight import _reset_peak, current_rss_mb, peak_memory_mb
from detrkit.errors import DataError, TrainingError

if TYPE_CHECKING:
    from detrkit.engine.trainer import Trainer


class StepRunner:
    """Training steps and epochs for a :class:`~detrkit.engine.trainer.Trainer`."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.global_step = 0
        self.nonfinite_total = 0
        self.consecutive_nonfinite = 0
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.epoch_nonfinite = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "nonfinite_total": self.nonfinite_total,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "sums": dict(self.sums),
            "steps": self.steps,
            "epoch_nonfinite": self.epoch_nonfinite,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.consecutive_nonfinite = int(state["consecutive_nonfinite"])
        self.sums = dict(state["sums"])
        self.steps = int(state["steps"])
        self.epoch_nonfinite = int(state["epoch_nonfinite"])

    def train_step(self, micro_batches: list[Any]) -> dict[str, float]:
        """Forward/backward over the micro-batches and one optimizer step (or a skip).

        Returns the step's host values: ``loss``, components (``loss_ce``...), ``grad_norm``,
        ``nonfinite`` (1.0 when skipped) and ``stop`` (1.0 when any process asked to stop).
        """
        t = self.t
        acc, model, cfg = t.acc, t.model, t.cfg
        model.train()
        if cfg.model.freeze_bn:
            set_bn_eval(t.unwrapped)
        n = len(micro_batches)
        device = t.device
        bad = torch.zeros((), device=device)
        total = torch.zeros((), device=device)
        comps: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            batch = batch.to(device)
            sync_now = i == n - 1 or acc.num_processes == 1
            with contextlib.nullcontext() if sync_now else acc.no_sync(model):
                images = batch.normalized()
                if cfg.train.channels_last:
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
        flags = torch.stack([bad, torch.tensor(float(t.stop_requested), device=device)])
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        grad_norm = torch.zeros((), device=device)
        skipped = False
        # One host sync decides the step: a non-finite loss anywhere skips it everywhere.
        if float(flags[0].item()) > 0:
            skipped = True
        else:
            clip = cfg.train.clip_grad_norm
            if clip is not None and clip > 0:
                grad_norm = acc.clip_grad_norm_(list(trainable_parameters(model)), clip)
            t.optimizer.step()
            if not getattr(t.optimizer, "step_was_skipped", False):
                t.scheduler.step()
            if t.ema is not None:
                t.ema.update(t.unwrapped)
        t.optimizer.zero_grad(set_to_none=True)
        keys = list(comps)
        values = torch.stack([total, grad_norm.float(), flags[1], *[comps[k] for k in keys]]).tolist()
        result = {"loss": values[0], "grad_norm": values[1], "stop": values[2], "nonfinite": float(skipped)}
        result.update(zip(keys, values[3:], strict=False))
        self.global_step += 1
        if skipped:
            self.nonfinite_total += 1
            self.epoch_nonfinite += 1
            self.consecutive_nonfinite += 1
            if self.consecutive_nonfinite >= cfg.train.max_nonfinite:
                raise TrainingError(
                    f"{t.run_dir}: {self.consecutive_nonfinite} non-finite losses in a row (epoch {t.epoch + 1}, "
                    f"step {self.global_step}); lower optim.lr, set train.clip_grad_norm, use fp32 or check the data"
                )
        else:
            self.consecutive_nonfinite = 0
        return result

    def _drop_empty(self, micro: list[Any]) -> list[Any]:
        """Batches whose every image was unreadable are skipped (one process) or fatal (several)."""
        kept = [b for b in micro if len(b.targets) > 0]
        if len(kept) < len(micro):
            if self.t.acc.num_processes > 1:
                raise TrainingError(
                    f"{self.t.cfg.data.train_images}: a whole batch of unreadable images on process "
                    f"{self.t.acc.process_index}; run `detrkit data check` and fix or remove them"
                )
            self.t.log.warn(
                f"skipped a batch of {sum(getattr(b, 'skipped', 0) for b in micro)} unreadable images"
            )
        return kept

    def _profiler(self, epoch: int) -> contextlib.AbstractContextManager[Any]:
        t = self.t
        if not (t.cfg.train.profile and epoch == 0 and t.acc.is_main_process and t.run_dir is not None):
            return contextlib.nullcontext(None)
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if t.device.type == "cuda" else [])
        return profile(
            activities=activities,
            schedule=schedule(wait=1, warmup=1, active=max(t.cfg.train.profile_steps, 1), repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(t.run_dir / "profile")),
            record_shapes=True,
            profile_memory=True,
        )

    def run_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train one epoch from ``trainer.epoch_batches``; returns the ``metrics.csv`` row, or
        ``None`` when a stop (Ctrl-C) was requested (``last.pt`` is then saved)."""
        t = self.t
        cfg, acc = t.cfg, t.acc
        accum = cfg.train.grad_accum
        if t.epoch_batches == 0:
            self.sums, self.steps, self.epoch_nonfinite = {}, 0, 0
        t.train_sampler.set_epoch(epoch, start_batch=t.epoch_batches)
        steps_done = -(-t.epoch_batches // accum)
        t.log.start_epoch(epoch, cfg.train.epochs, t.steps_per_epoch, steps_done)
        t0 = time.perf_counter()
        images = skipped_images = 0
        _reset_peak(t.device)
        iterator = iter(t.train_loader)
        with self._profiler(epoch) as prof:
            while steps_done < t.steps_per_epoch:
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
                    t.epoch_batches += consumed
                    continue
                res = self.train_step(micro)
                t.epoch_batches += consumed
                steps_done += 1
                self.steps += 1
                n_img = sum(len(b.targets) for b in micro) * acc.num_processes
                images += n_img
                for k, v in res.items():
                    if k.startswith("loss") and res["nonfinite"] == 0:
                        self.sums[k] = self.sums.get(k, 0.0) + v
                lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(t.optimizer.param_groups)}
                t.log.advance(n_img, loss=res["loss"], lr=max(lrs.values()))
                t.log.scalars(
                    {k: v for k, v in res.items() if k.startswith("loss") or k == "grad_norm"},
                    self.global_step,
                    "train",
                )
                t.log.scalars(lrs, self.global_step, "lr")
                if prof is not None:
                    prof.step()
                if res["stop"] > 0:
                    t.log.end_epoch()
                    t.save(["last"])
                    t.log.info(
                        f"interrupted: saved {t.run_dir}/checkpoints/last.pt (epoch {epoch + 1}, batch {t.epoch_batches}); resume with --resume {t.run_dir}"
                    )
                    return None
                every = cfg.train.checkpoint_every_steps
                if every and steps_done % every == 0 and steps_done < t.steps_per_epoch:
                    t.save(["last"])
        rate = t.log.end_epoch()
        if images == 0 and skipped_images > 0:
            raise DataError(
                f"{cfg.data.train_images or 'the training set'}: none of the training images of epoch {epoch + 1} could be read "
                f"({skipped_images} skipped); run `detrkit data check` on the folder"
            )
        good = max(self.steps - self.epoch_nonfinite, 1)
        if acc.num_processes > 1 and self.sums:  # mean of the per-process losses
            keys = sorted(self.sums)
            mean = acc.reduce(torch.tensor([self.sums[k] for k in keys], device=t.device), reduction="mean")
            self.sums = dict(zip(keys, mean.tolist(), strict=False))
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.global_step}
        row.update({f"train/{k}": v / good for k, v in sorted(self.sums.items())})
        row.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(t.optimizer.param_groups)})
        row["train/images_per_s"] = images / max(time.perf_counter() - t0, 1e-9) if images else rate
        row["time_s"] = time.perf_counter() - t0
        row["nonfinite"] = self.epoch_nonfinite
        row["skipped_images"] = skipped_images
        row["memory_mb"] = round(peak_memory_mb(t.device), 1)  # CUDA peak this epoch, or peak RSS
        row["rss_mb"] = round(current_rss_mb(), 1)
        return row
