"""The only place where the engine reads the config to build data and models (``build_*``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from detrkit.config import DataConfig, ModelConfig, RunConfig
from detrkit.errors import ConfigError, DataError


@dataclass
class DataSplits:
    """Datasets and class mapping of a run."""

    train: Dataset
    val: Dataset | None
    class_names: list[str]
    category_ids: list[int]
    #: the val annotation file (ground truth for COCO evaluation).
    val_ann: Path | None

    @property
    def classes(self) -> dict[str, list]:
        """``{"names": [...], "category_ids": [...]}`` as saved in runs and checkpoints."""
        return {"names": list(self.class_names), "category_ids": list(self.category_ids)}


def ensure_shapes(data: DataConfig, *, main_process: bool = True) -> DataConfig:
    """Generate the built-in shapes dataset when ``data.shapes`` is set and it is missing.

    Returns a copy of ``data`` with the four paths filled in. Only the main process generates.
    """
    if data.shapes is None:
        return data
    from dataclasses import replace

    from detrkit.data.shapes import generate_shapes

    s = data.shapes
    root = Path(s.out)
    paths = {
        "train_ann": root / "annotations" / "train.json",
        "train_images": root / "train",
        "val_ann": root / "annotations" / "val.json",
        "val_images": root / "val",
    }
    if main_process and not (paths["train_ann"].is_file() and paths["val_ann"].is_file()):
        generate_shapes(root, train=s.train, val=s.val, size=s.size, seed=s.seed)
    return replace(data, **{k: str(v) for k, v in paths.items()})


def _require(value: str | None, key: str, source: str) -> Path:
    if not value:
        raise ConfigError(f"{source}: data.{key} is not set (give it in the config or as data.{key}=PATH)")
    path = Path(value)
    if not path.exists():
        raise DataError(f"{path}: not found (data.{key} in {source})")
    return path


def build_data(cfg: RunConfig) -> DataSplits:
    """CocoDetection train/val datasets with the configured transform presets."""
    from detrkit.data.coco import CocoIndex
    from detrkit.data.dataset import CocoDetection
    from detrkit.data.transforms import build_transforms

    d = cfg.data
    src = cfg.source
    train_ann = _require(d.train_ann, "train_ann", src)
    train_images = _require(d.train_images, "train_images", src)
    try:
        train_tf = build_transforms(d.train_preset, train=True, **d.transform_args)
        val_tf = build_transforms(d.val_preset, train=False, **d.transform_args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{src}: data.train_preset/val_preset/transform_args: {err}") from None
    train_index = CocoIndex.load(train_ann)
    train = CocoDetection(train_index, train_images, transforms=train_tf, on_bad_box=d.on_bad_box)
    val = None
    val_ann = None
    if d.val_ann:
        val_ann = _require(d.val_ann, "val_ann", src)
        val_images = _require(d.val_images, "val_images", src)
        val_index = CocoIndex.load(val_ann)
        if val_index.category_ids != train_index.category_ids:
            raise DataError(
                f"{val_ann}: categories {val_index.category_ids} differ from the training file's "
                f"{train_index.category_ids} ({train_ann}); merge the class lists with `detrkit data merge`"
            )
        val = CocoDetection(val_index, val_images, transforms=val_tf, on_bad_box=d.on_bad_box)
    return DataSplits(
        train=train,
        val=val,
        class_names=list(train_index.class_names),
        category_ids=list(train_index.category_ids),
        val_ann=val_ann,
    )


def build_detector(model_cfg: ModelConfig, *, num_classes: int, source: str, log: Any = None) -> nn.Module:
    """``build_model`` + ``model.pretrained`` (HF weights) + ``model.init_from`` (weight transfer)."""
    from detrkit.engine.checkpoint import transfer_weights
    from detrkit.models.registry import build_model

    try:
        model = build_model(model_cfg.name, num_classes=num_classes, **model_cfg.overrides)
    except ValueError as err:
        raise ConfigError(f"{source}: model: {err}") from None
    if model_cfg.pretrained:
        from detrkit.models.hf_weights import load_hf_weights

        report = load_hf_weights(model, model_cfg.pretrained)
        if log is not None:
            log(f"pretrained weights from {model_cfg.pretrained}: {_summarise(report)}")
    if model_cfg.init_from:
        loaded, skipped = transfer_weights(model, model_cfg.init_from)
        if log is not None:
            log(
                f"init_from {model_cfg.init_from}: {len(loaded)} tensors copied, {len(skipped)} kept (shape or name differ)"
            )
    return model


def build_accelerator(cfg: RunConfig) -> Any:
    """The Accelerator for ``train.precision``/``train.cpu`` (fp16 needs CUDA)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.train.precision]
    use_cpu = cfg.train.cpu or not torch.cuda.is_available()
    if mp == "fp16" and use_cpu:
        raise ConfigError(f"{cfg.source}: train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    # Several runs in one process (library use, tests): start from a clean Accelerate state.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=mp,
        cpu=use_cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


def build_collate(size_divisibility: int) -> Callable[[list[Any]], Any]:
    """The picklable default ``collate_fn`` (``DetectionCollator``)."""
    from detrkit.data.collate import DetectionCollator

    return DetectionCollator(size_divisibility=size_divisibility)


def repeat_factors_for(dataset: Any, threshold: float, source: str, log: Any = None) -> list[float] | None:
    """Per-image repeat factors for ``data.repeat_factor_threshold`` (``None`` when it is 0)."""
    if threshold <= 0:
        return None
    labels = getattr(dataset, "labels_per_image", None)
    if labels is None:
        raise ConfigError(f"{source}: data.repeat_factor_threshold needs a dataset with labels_per_image()")
    from detrkit.data.samplers import repeat_factors

    factors = repeat_factors(labels(), threshold=threshold)
    if log is not None:
        log(
            f"repeat-factor sampling (t={threshold}): {factors.sum():.0f} images per epoch instead of {len(factors)}"
        )
    return factors.tolist()


def _summarise(report: Any) -> str:
    if isinstance(report, dict):
        return ", ".join(f"{len(v)} {k}" for k, v in report.items() if isinstance(v, list)) or "loaded"
    return "loaded"
