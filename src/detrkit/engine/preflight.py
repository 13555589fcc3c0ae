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

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detrkit.engine.loop import EpochLoop
from detrkit.engine.memory import peak_memory_mb, reset_peak
from detrkit.engine.step import TrainStep
from detrkit.errors import CheckpointError, TrainingError
from detrkit.runs import checkpoint as ckpt_io


def run_preflight(
    *,
    run_dir: Path,
    state: Callable[[], dict[str, Any]],
    load_state: Callable[[dict[str, Any]], None],
    step: TrainStep,
    loop: EpochLoop,
    epoch: int,
    evaluate: Callable[..., tuple[dict[str, Any], dict[str, float]]] | None,
    log: Any,
    batch_size: int,
) -> dict[str, Any]:
    """Run the four checks; returns timings and memory, raises on failure.

    Args:
        run_dir: the run folder (the round-trip file goes to its ``checkpoints/``).
        state, load_state: the trainer's whole checkpoint state and its restore (collective).
        step, loop: the training step and the epoch loop (the step's batch is the loop's next).
        epoch: the epoch the run starts (or resumes) at, 0-based.
        evaluate: ``evaluate(max_batches=1) -> (metrics, losses)``, ``None`` without validation data.
        log: the run logger; batch_size: per process, named in the out-of-memory advice.
    """
    acc = step.acc
    device = acc.device
    report: dict[str, Any] = {}
    t0 = time.perf_counter()
    saved = state()
    path = run_dir / "checkpoints" / ".preflight.pt"
    if acc.is_main_process:
        ckpt_io.atomic_save(saved, path)
        report["checkpoint_mb"] = round(path.stat().st_size / 2**20, 2)
    acc.wait_for_everyone()
    reloaded = ckpt_io.load_checkpoint(path)
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "runner"):
        diffs = ckpt_io.state_dicts_equal(saved[key] or {}, reloaded[key] or {})
        if diffs:
            raise CheckpointError(f"{path}: checkpoint round trip changed {key} entries {diffs[:5]}")
    report["checkpoint_s"] = round(time.perf_counter() - t0, 3)

    reset_peak(device)
    t1 = time.perf_counter()
    first = loop.first_batch(epoch)
    try:
        result = step.train_step([first] * step.settings.grad_accum, epoch=epoch)
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"{run_dir}: out of memory in the preflight step with batch {batch_size}; lower train.batch_size "
            "(or use train.batch_size=auto, train.precision=bf16, train.grad_accum)"
        ) from None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report["step_s"] = round(time.perf_counter() - t1, 3)
    report["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    report["peak_memory_kind"] = "cuda_max_allocated" if device.type == "cuda" else "process_max_rss"
    report["loss"] = result["loss"]
    if result["nonfinite"]:
        log.warn(f"preflight: the first training step gave a non-finite loss ({result['loss']})")

    if evaluate is not None:
        t2 = time.perf_counter()
        metrics, losses = evaluate(max_batches=1)
        report["val_batch_s"] = round(time.perf_counter() - t2, 3)
        report["val_batch_AP50"] = metrics.get("AP50")
        report["val_loss"] = losses.get("loss")

    load_state(reloaded)
    acc.wait_for_everyone()
    if acc.is_main_process:
        path.unlink(missing_ok=True)
    report["total_s"] = round(time.perf_counter() - t0, 3)
    log.info(
        f"preflight ok: step {report['step_s']}s, peak memory {report['peak_memory_mb']} MB "
        f"({report['peak_memory_kind']}), loss {report['loss']:.4f}, checkpoint {report.get('checkpoint_mb', '?')} MB "
        f"round trip equal, validation batch through the metric ok"
    )
    return report


def auto_batch_size(
    *,
    model: nn.Module,
    dataset: Any,
    acc: Any,
    log: Any,
    collate: Callable[[list[Any]], Any] | None = None,
    where: str = "config",
    max_batch: int = 64,
    margin: float = 0.85,
) -> int:
    """The largest batch (per process) that fits: doubling real steps on CUDA, a fixed choice on CPU.

    On CUDA each probe runs forward + backward on real training images (the largest of the first
    samples of ``dataset``, so multi-scale augmentation does not surprise later), then adds the
    AdamW state (two fp32 copies of the trainable parameters); a batch is accepted while its peak
    is below ``margin`` of the device memory. ``torch.OutOfMemoryError`` ends the search.
    ``model`` is the prepared model, ``collate`` the training collate function (default
    :func:`~detrkit.data.collate.collate_detection`), ``where`` names the config in errors.
    """
    device = acc.device
    n_train = len(dataset)
    if device.type != "cuda":
        choice = max(1, min(4, n_train // max(acc.num_processes, 1)))
        log.info(
            f"train.batch_size=auto on {device.type}: using {choice} (memory probing runs only on CUDA; "
            "set train.batch_size to choose)"
        )
        return choice
    from detrkit.data.collate import collate_detection

    collate = collate or collate_detection
    model_name = str(getattr(acc.unwrap_model(model), "model_name", type(model).__name__))
    total = torch.cuda.get_device_properties(device).total_memory
    adam_bytes = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    samples = [s for s in (dataset[i] for i in range(min(n_train, 16))) if s is not None]
    largest = max(samples, key=lambda s: s[0].shape[-1] * s[0].shape[-2])
    best = 0
    bs = 1
    while bs <= min(max_batch, n_train):
        try:
            batch = collate([largest] * bs).to(device)
            reset_peak(device)
            out = model(batch.normalized(), batch.pixel_mask, batch.targets)
            acc.backward(out["loss"])
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) + adam_bytes
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
            f"{where}: not even batch 1 fits in GPU memory with {model_name}; use bf16 or a smaller image size"
        )
    if acc.num_processes > 1:
        best = _min_across(acc, best)
    log.info(
        f"train.batch_size=auto: {best} per process (peak below {int(margin * 100)}% of {total / 2**30:.1f} GiB)"
    )
    return best


def _min_across(acc: Any, value: int) -> int:
    from accelerate.utils import gather

    return int(gather(torch.tensor([value], device=acc.device)).min())
