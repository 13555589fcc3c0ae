"""Preflight checks before a run, and ``train.batch_size: auto``.

The preflight follows the lesson of our users ("debug one training iteration, then validation, then
checkpoint saving, before a long run"), in a few seconds:

1. checkpoint round trip: the full state is saved (atomically) and read back; every tensor of the
   model, optimizer, scheduler, scaler and EMA must be equal;
2. one real training step (forward, backward, optimizer step), with its peak memory
   (CUDA ``max_memory_allocated``, or the process's peak RSS on the CPU) and time;
3. one validation batch through the model, the postprocessing and the COCO metric;
4. the state saved in 1. is restored (also the RNG streams), so the run that follows is the same
   as a run without preflight.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from detrkit.errors import CheckpointError, TrainingError
from detrkit.runs import checkpoint as ckpt_io

if TYPE_CHECKING:
    from detrkit.engine.trainer import Trainer


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def run_preflight(t: Trainer) -> dict[str, Any]:
    """Run the four checks on a built trainer; returns timings and memory, raises on failure."""
    report: dict[str, Any] = {}
    t0 = time.perf_counter()
    state = t.state()
    path = t.run_dir / "checkpoints" / ".preflight.pt"
    if t.acc.is_main_process:
        ckpt_io.atomic_save(state, path)
        report["checkpoint_mb"] = round(path.stat().st_size / 2**20, 2)
    t.acc.wait_for_everyone()
    reloaded = ckpt_io.load_checkpoint(path)
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "runner"):
        diffs = ckpt_io.state_dicts_equal(state[key] or {}, reloaded[key] or {})
        if diffs:
            raise CheckpointError(f"{path}: checkpoint round trip changed {key} entries {diffs[:5]}")
    report["checkpoint_s"] = round(time.perf_counter() - t0, 3)

    _reset_peak(t.device)
    t1 = time.perf_counter()
    t.train_sampler.set_epoch(t.epoch, start_batch=t.epoch_batches)
    try:
        first = next(iter(t.train_loader))
    except StopIteration:
        raise TrainingError(
            f"{t.run_dir}: the training loader yields no batch (check data and batch size)"
        ) from None
    try:
        result = t.runner.train_step([first] * t.cfg.train.grad_accum)
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"{t.run_dir}: out of memory in the preflight step with batch {t.batch_size}; lower train.batch_size "
            "(or use train.batch_size=auto, train.precision=bf16, train.grad_accum)"
        ) from None
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    report["step_s"] = round(time.perf_counter() - t1, 3)
    report["peak_memory_mb"] = round(peak_memory_mb(t.device), 1)
    report["peak_memory_kind"] = "cuda_max_allocated" if t.device.type == "cuda" else "process_max_rss"
    report["loss"] = result["loss"]
    if result["nonfinite"]:
        t.log.warn(f"preflight: the first training step gave a non-finite loss ({result['loss']})")

    if t.val_loader is not None:
        t2 = time.perf_counter()
        metrics, losses = t.evaluate(max_batches=1)
        report["val_batch_s"] = round(time.perf_counter() - t2, 3)
        report["val_batch_AP50"] = metrics.get("AP50")
        report["val_loss"] = losses.get("loss")

    t.load_state(reloaded)
    t.acc.wait_for_everyone()
    if t.acc.is_main_process:
        path.unlink(missing_ok=True)
    report["total_s"] = round(time.perf_counter() - t0, 3)
    t.log.info(
        f"preflight ok: step {report['step_s']}s, peak memory {report['peak_memory_mb']} MB "
        f"({report['peak_memory_kind']}), loss {report['loss']:.4f}, checkpoint {report.get('checkpoint_mb', '?')} MB "
        f"round trip equal, validation batch through the metric ok"
    )
    return report


def auto_batch_size(t: Trainer, *, max_batch: int = 64, margin: float = 0.85) -> int:
    """The largest batch (per process) that fits: doubling real steps on CUDA, a fixed choice on CPU.

    On CUDA each probe runs forward + backward on real training images (the largest of the first
    samples, so multi-scale augmentation does not surprise later), then adds the AdamW state
    (two fp32 copies of the trainable parameters); a batch is accepted while its peak is below
    ``margin`` of the device memory. ``torch.OutOfMemoryError`` ends the search.
    """
    n_train = len(t.data.train)
    if t.device.type != "cuda":
        choice = max(1, min(4, n_train // max(t.acc.num_processes, 1)))
        t.log.info(
            f"train.batch_size=auto on {t.device.type}: using {choice} (memory probing runs only on CUDA; "
            "set train.batch_size to choose)"
        )
        return choice
    from detrkit.data.collate import collate_detection

    collate = t._collate or collate_detection
    model = t.model
    total = torch.cuda.get_device_properties(t.device).total_memory
    adam_bytes = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    samples = [s for s in (t.data.train[i] for i in range(min(n_train, 16))) if s is not None]
    largest = max(samples, key=lambda s: s[0].shape[-1] * s[0].shape[-2])
    best = 0
    bs = 1
    while bs <= min(max_batch, n_train):
        try:
            batch = collate([largest] * bs).to(t.device)
            _reset_peak(t.device)
            out = model(batch.normalized(), batch.pixel_mask, batch.targets)
            t.acc.backward(out["loss"])
            torch.cuda.synchronize(t.device)
            peak = torch.cuda.max_memory_allocated(t.device) + adam_bytes
        except torch.OutOfMemoryError:
            break
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        if peak > margin * total:
            break
        best = bs
        bs *= 2
    if best == 0:
        raise TrainingError(
            f"{t.cfg.source}: not even batch 1 fits in GPU memory with {t.model_name}; use bf16 or a smaller image size"
        )
    if t.acc.num_processes > 1:
        best = _min_across(t, best)
    t.log.info(
        f"train.batch_size=auto: {best} per process (peak below {int(margin * 100)}% of {total / 2**30:.1f} GiB)"
    )
    return best


def _min_across(t: Trainer, value: int) -> int:
    from accelerate.utils import gather

    return int(gather(torch.tensor([value], device=t.device)).min())
