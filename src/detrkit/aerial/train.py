"""Training loop for the aerial model, with the detection engine's run-folder conventions.

A run folder holds ``config.yaml``, ``env.json``, ``classes.json``, ``checkpoints/{last,best,epoch_N}.pt``
(written atomically), ``metrics.csv`` (one row per epoch), ``metrics.json``, ``tb/`` and ``log.txt``.
``train_aerial(cfg, resume=RUN)`` continues a run from its ``last.pt`` (model, optimizer, scheduler,
epoch, RNG states and the best IoU so far).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from torch.utils.data import DataLoader

from detrkit.aerial.augment import AugmentSpec
from detrkit.aerial.config import AerialTrainConfig
from detrkit.aerial.data import AerialCrops
from detrkit.aerial.losses import AerialLoss, BoundaryWeightSchedule
from detrkit.aerial.metrics import SegmentationMeter
from detrkit.aerial.model import AERIAL, CHECKPOINT_KIND, AerialUNet, build_aerial_model
from detrkit.aerial.sources import SourceSpec
from detrkit.devices import resolve_device
from detrkit.errors import CheckpointError, TrainingError
from detrkit.runs.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from detrkit.runs.layout import check_resumable, environment, make_run_dir, write_json
from detrkit.runs.logger import RunLogger
from detrkit.runs.restore import restore


def model_checkpoint(model: AerialUNet, cfg: AerialTrainConfig, metrics: dict[str, float]) -> dict[str, Any]:
    """The inference part of a checkpoint: weights plus what is needed to rebuild and run the model."""
    return {
        "kind": CHECKPOINT_KIND,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_name": cfg.model,
        "model_kwargs": {"in_channels": cfg.in_channels},
        "classes": {"names": ["building"], "category_ids": [1]},
        "tile": cfg.crop,
        "gsd_range_m": [cfg.default_gsd * cfg.scale_range[0], cfg.default_gsd * cfg.scale_range[1]],
        "config": cfg.to_dict(),
        "metrics": metrics,
    }


def data_sources(cfg: AerialTrainConfig) -> list[SourceSpec]:
    """The config's ``data`` (a root, or a list of roots / mappings) as :class:`SourceSpec` objects."""
    items = cfg.data if isinstance(cfg.data, list) else [cfg.data]
    return [SourceSpec.parse(item, label="aerial config data") for item in items]


def load_init_weights(model: AerialUNet, source: str) -> None:
    """Copy the weights of an aerial checkpoint (run folder, ``.pt``, or a file name in the package's
    ``weights/`` folder) into ``model``; raises :class:`CheckpointError` when they do not fit."""
    path = Path(source)
    packaged = Path(__file__).parent / "weights" / source
    if not path.exists() and packaged.is_file():
        path = packaged
    state = restore(path, kind=AERIAL).model.state_dict()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: init_weights do not fit the model ({str(err).splitlines()[0]})"
        ) from None


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.inference_mode()
def evaluate_aerial(
    model: AerialUNet, loader: DataLoader, criterion: AerialLoss, device: torch.device, amp: bool = False
) -> dict[str, float]:
    """Validation loss and :class:`SegmentationMeter` metrics over ``loader``."""
    model.eval()
    meter, loss_sum, n = SegmentationMeter(), 0.0, 0
    for batch in loader:
        batch = _batch_to(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            out = model(batch["image"])
        out = {k: v.float() for k, v in out.items()}
        loss_sum += float(criterion(out, batch)["loss"]) * batch["image"].shape[0]
        n += batch["image"].shape[0]
        meter.update(torch.sigmoid(out["logits"]), batch["mask"], out["log_gsd"], batch["log_gsd"])
    return {"loss": loss_sum / max(1, n), **meter.compute()}


def train_aerial(
    cfg: AerialTrainConfig,
    *,
    resume: str | Path | None = None,
    quiet: bool = False,
    console: Console | None = None,
) -> Path:
    """Train (or resume) a run; returns the run folder."""
    device = resolve_device(cfg.device, option="device")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if resume is not None:
        last = check_resumable(resume)
        run_dir = Path(resume)
        ckpt = load_checkpoint(last)
        cfg = AerialTrainConfig(**{**ckpt["config"], "epochs": max(cfg.epochs, ckpt["config"]["epochs"])})
    else:
        ckpt = None
        run_dir = make_run_dir(root=cfg.out, name=cfg.name, explicit=cfg.run_dir, source="aerial config")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(
        run_dir / "env.json", environment(device, num_processes=1, precision="bf16" if cfg.amp else "fp32")
    )
    write_json(run_dir / "classes.json", {"names": ["building"], "category_ids": [1]})

    common = {
        "crop": cfg.crop,
        "in_channels": cfg.in_channels,
        "default_gsd": cfg.default_gsd,
        "seed": cfg.seed,
    }
    sources = data_sources(cfg)
    train_ds = AerialCrops(
        sources,
        split="train",
        samples_per_tile=cfg.samples_per_tile,
        scale_range=tuple(cfg.scale_range),
        train=True,
        augment=AugmentSpec() if cfg.augment else None,
        **common,
    )
    val_ds = AerialCrops(
        sources,
        split="val",
        samples_per_tile=cfg.val_samples_per_tile,
        scale_range=tuple(cfg.scale_range),
        train=False,
        **common,
    )
    loader_kw = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.workers > 0,
    }
    train_dl = DataLoader(train_ds, shuffle=True, drop_last=len(train_ds) > cfg.batch_size, **loader_kw)
    val_dl = DataLoader(val_ds, shuffle=False, **loader_kw)

    weights = None if ckpt is not None else cfg.encoder_weights
    model = build_aerial_model(cfg.model, in_channels=cfg.in_channels, encoder_weights=weights)
    if ckpt is None and cfg.init_weights:
        load_init_weights(model, cfg.init_weights)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(train_dl)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    criterion = AerialLoss(
        dice_weight=cfg.dice_weight,
        focal_weight=cfg.focal_weight,
        gsd_weight=cfg.gsd_weight,
        focal_alpha=cfg.focal_alpha,
        boundary=BoundaryWeightSchedule(cfg.boundary_weight, cfg.boundary_start, cfg.boundary_ramp),
    )
    start_epoch, step, best = 0, 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, step, best = ckpt["epoch"] + 1, ckpt["step"], ckpt.get("best_iou", -1.0)
        set_rng_state(ckpt["rng"])

    log = RunLogger(run_dir, tensorboard=cfg.tensorboard, console=console, quiet=quiet)
    log.info(
        f"run {run_dir}: {cfg.model} on {device}, {len(train_ds)} train / {len(val_ds)} val crops "
        f"of {cfg.crop} px, epochs {start_epoch + 1}..{cfg.epochs}"
    )
    metrics: dict[str, float] = {}
    amp = cfg.amp and device.type == "cuda"
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_ds.set_epoch(epoch)
            criterion.set_epoch(epoch)
            model.train()
            sums: dict[str, float] = {}
            t0 = time.perf_counter()
            log.start_epoch(epoch, cfg.epochs, len(train_dl))
            for batch in train_dl:
                batch = _batch_to(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(batch["image"])
                losses = criterion({k: v.float() for k, v in out.items()}, batch)
                if not torch.isfinite(losses["loss"]):
                    raise TrainingError(
                        f"{run_dir}: non-finite loss at epoch {epoch + 1} step {step}; lower lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                scheduler.step()
                step += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                log.advance(
                    batch["image"].shape[0],
                    loss=float(losses["loss"].detach()),
                    lr=scheduler.get_last_lr()[0],
                )
            log.end_epoch()
            train_metrics = {k: v / max(1, len(train_dl)) for k, v in sums.items()}
            val = evaluate_aerial(model, val_dl, criterion, device, amp)
            metrics = {
                **{f"train/{k}": v for k, v in train_metrics.items()},
                **{f"val/{k}": v for k, v in val.items()},
                "boundary_weight": criterion.boundary_weight,
            }
            row = {
                "epoch": epoch + 1,
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "time_s": round(time.perf_counter() - t0, 2),
                **metrics,
            }
            log.csv_row(row)
            log.scalars(metrics, step)
            log.info(
                f"epoch {epoch + 1}/{cfg.epochs} loss {train_metrics['loss']:.4f} val IoU {val['IoU']:.4f} "
                f"acc {val['accuracy']:.4f} F1 {val['F1']:.4f} GSD MAPE {val['gsd_mape']:.1f}%"
            )
            is_best = val["IoU"] > best
            best = max(best, val["IoU"])
            state = {
                **model_checkpoint(model, cfg, metrics),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "step": step,
                "rng": rng_state(),
                "best_iou": best,
            }
            atomic_save(state, run_dir / "checkpoints" / "last.pt")
            if is_best:
                atomic_save(
                    model_checkpoint(model, cfg, metrics) | {"epoch": epoch},
                    run_dir / "checkpoints" / "best.pt",
                )
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                atomic_save(state, run_dir / "checkpoints" / f"epoch_{epoch + 1}.pt")
        write_json(run_dir / "metrics.json", {"final": metrics, "best_val_IoU": best, "epochs": cfg.epochs})
        log.table(
            "aerial training",
            {
                "run": str(run_dir),
                "best val IoU": best,
                "val GSD MAPE %": metrics.get("val/gsd_mape", math.nan),
            },
        )
    finally:
        log.close()
    return run_dir
