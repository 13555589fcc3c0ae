"""``detrkit val``: re-evaluate a run's checkpoint on its validation set or on other data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detrkit.devices import resolve_device
from detrkit.engine.sampling import EvalBatchSampler
from detrkit.engine.validate import validate
from detrkit.errors import CheckpointError, ConfigError, DataError
from detrkit.runs.folder import resolve_run_path, run_train_cwd
from detrkit.runs.restore import restore


def evaluate_run(
    run: str | Path,
    *,
    checkpoint: str = "best",
    ann: str | Path | None = None,
    images: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate ``run``'s checkpoint (``best``, ``last``, ``epoch_N`` or a file path).

    The model is rebuilt by :func:`detrkit.runs.restore`; the data defaults to the run's
    validation set (``data.val_ann``/``data.val_images``), transformed with the run's val preset.
    Returns ``{"checkpoint", "ann", "num_images", "metrics": {AP, AP50, ..., per_class}, "losses"}``.

    Raises:
        CheckpointError: no such run/checkpoint; DataError: data whose classes differ from the run's.
    """
    from detrkit.data.collate import DetectionCollator
    from detrkit.data.dataset import CocoDetection

    requested_device = resolve_device(device) if device is not None else None  # fails before loading
    restored = restore(run, which=checkpoint)
    model, classes, transform, cfg = restored
    path, ckpt = restored.path, restored.checkpoint
    if "config" not in ckpt:
        raise CheckpointError(f"{path}: checkpoint lacks config/classes; was it written by detrkit train?")
    if (ann is None) != (images is None):
        raise ConfigError(
            f"{run}: give both --data ANN and --images DIR, or neither (to use the run's val set)"
        )
    if ann is None:  # the run's val set; relative paths also work from another folder
        run_dir = path.parent.parent  # RUN/checkpoints/NAME.pt
        train_cwd = run_train_cwd(run_dir)
        ann = resolve_run_path(cfg.data.val_ann, train_cwd)
        images = resolve_run_path(cfg.data.val_images, train_cwd)
    ann = Path(ann or "")
    images = Path(images or "")
    if not ann.is_file():
        raise DataError(f"{ann}: validation annotation file not found (pass --data ANN --images DIR)")
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found")
    ds = CocoDetection(ann, images, transforms=transform, on_bad_box=cfg.data.on_bad_box)
    if list(ds.category_ids) != list(classes["category_ids"]):
        if sorted(ds.class_names) == sorted(classes["names"]) and list(ds.class_names) != list(
            classes["names"]
        ):
            hint = "same names in another order"
        else:
            hint = f"data has {list(ds.class_names)}, model has {list(classes['names'])}"
        raise DataError(
            f"{ann}: categories differ from the run's classes ({hint}); remap with `detrkit data merge`"
        )
    dev = requested_device or (torch.device("cpu") if cfg.train.cpu else resolve_device(None))
    model.to(dev)
    bs = batch_size or cfg.eval.batch_size or (cfg.train.batch_size if cfg.train.batch_size != "auto" else 4)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=EvalBatchSampler(len(ds), int(bs)),
        collate_fn=DetectionCollator(size_divisibility=cfg.data.size_divisibility),
        num_workers=num_workers,
    )
    metrics, losses = validate(
        model,
        loader,
        device=dev,
        label_to_cat_id=list(classes["category_ids"]),
        gt=ann,
        score_threshold=cfg.eval.score_threshold,
    )
    return {
        "checkpoint": str(path),
        "epoch": ckpt.get("epoch"),
        "ann": str(ann),
        "num_images": len(ds),
        "metrics": metrics,
        "losses": losses,
    }
