"""The only place where the engine reads the config: data, model, accelerator and the settings of
the training step and the epoch loop (``build_*``, ``*_settings``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from detrkit.config import DataConfig, ModelConfig, RunConfig
from detrkit.engine.loop import LoopSettings
from detrkit.engine.step import StepSettings
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
    #: rare class names when known (``data.rare_classes``, or the ``detrkit data stats`` definition).
    rare: list[str] | None = None

    @property
    def classes(self) -> dict[str, list]:
        """``{"names": [...], "category_ids": [...]}`` (+ ``"rare"`` when known), as saved in runs
        and checkpoints."""
        out = {"names": list(self.class_names), "category_ids": list(self.category_ids)}
        if self.rare:
            out["rare"] = list(self.rare)
        return out


def ensure_shapes(data: DataConfig, *, main_process: bool = True) -> DataConfig:
    """Generate the built-in shapes dataset when ``data.shapes`` is set and it is missing.

    Returns a copy of ``data`` with the four paths filled in. Only the main process generates.

    Raises:
        ConfigError: a data path is set too and is not the shapes dataset's (two data sources).
    """
    if data.shapes is None:
        return data
    from dataclasses import replace

    from detrkit.data.shapes import generate_shapes, read_shapes_params, shapes_params

    s = data.shapes
    root = Path(s.out)
    paths = {
        "train_ann": root / "annotations" / "train.json",
        "train_images": root / "train",
        "val_ann": root / "annotations" / "val.json",
        "val_images": root / "val",
    }
    conflicts = [
        f"data.{k}={getattr(data, k)}"
        for k, v in paths.items()
        if getattr(data, k) and Path(getattr(data, k)) != v
    ]
    if conflicts:
        raise ConfigError(
            f"data.shapes and {', '.join(conflicts)} are both set: give either data.shapes or the data paths"
        )
    wanted = shapes_params(
        train=s.train, val=s.val, size=s.size, seed=s.seed,
        class_counts=s.class_counts, val_class_counts=s.val_class_counts,
    )  # fmt: skip
    complete = paths["train_ann"].is_file() and paths["val_ann"].is_file()
    if main_process and (not complete or read_shapes_params(root) != wanted):
        # missing, or generated with other parameters (or before they were recorded): regenerate, so
        # that the run's config.yaml describes the data it trained on
        generate_shapes(
            root,
            train=s.train,
            val=s.val,
            size=s.size,
            seed=s.seed,
            class_counts=s.class_counts,
            val_class_counts=s.val_class_counts,
        )
    return replace(data, **{k: str(v) for k, v in paths.items()})


def _require(value: str | None, key: str, source: str) -> Path:
    if not value:
        raise ConfigError(f"{source}: data.{key} is not set (give it in the config or as data.{key}=PATH)")
    path = Path(value)
    if not path.exists():
        raise DataError(f"{path}: not found (data.{key} in {source})")
    return path


def build_data(cfg: RunConfig, *, train: bool = True) -> DataSplits:
    """CocoDetection train/val datasets with the configured transform presets.

    The training set is ``data.train_ann`` plus every ``data.extra`` file (class names must be among
    the training file's), with online copy-paste (``data.copy_paste``) in front of the training
    transforms. ``train=False`` builds only what validation needs (``DataSplits.train`` is then the
    training set without transforms, extra files or copy-paste, for its class list).
    """
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
    rare = rare_classes_for(cfg, train_index)
    if train:
        extra = _extra_files(cfg, train_index)
        if d.copy_paste is not None:
            train_tf = _with_copy_paste(cfg, train_index, train_images, rare, train_tf)
        train_ds = CocoDetection(
            train_index, train_images, transforms=train_tf, on_bad_box=d.on_bad_box, extra=extra
        )
    else:
        train_ds = CocoDetection(train_index, train_images, transforms=None, on_bad_box=d.on_bad_box)
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
        train=train_ds,
        val=val,
        class_names=list(train_index.class_names),
        category_ids=list(train_index.category_ids),
        val_ann=val_ann,
        rare=rare,
    )


def rare_classes_for(cfg: RunConfig, train_index: Any) -> list[str]:
    """``data.rare_classes`` (checked against the class names), else the classes that
    ``detrkit data stats`` marks rare with ``data.rare_fraction`` (rarest first)."""
    from detrkit.synth.rare import find_rare_classes

    d = cfg.data
    names = list(train_index.class_names)
    if d.rare_classes is not None:
        unknown = [n for n in d.rare_classes if n not in names]
        if unknown:
            raise ConfigError(
                f"{cfg.source}: data.rare_classes: {', '.join(unknown)} not among the classes of "
                f"{d.train_ann} ({', '.join(names)})"
            )
        return list(d.rare_classes)
    try:
        return find_rare_classes(train_index, fraction=d.rare_fraction)
    except ValueError as err:
        raise ConfigError(f"{cfg.source}: data.rare_fraction: {err}") from None


def _extra_files(cfg: RunConfig, train_index: Any) -> list[tuple[Any, Path]]:
    """``data.extra`` -> ``[(CocoIndex, images dir)]``; ``{seed}`` in a path becomes ``train.seed``."""
    from detrkit.data.coco import CocoIndex

    names = set(train_index.class_names)
    out = []
    for i, item in enumerate(cfg.data.extra):
        key = f"data.extra[{i}]"
        ann = _require(item.ann.replace("{seed}", str(cfg.train.seed)), f"extra[{i}].ann", cfg.source)
        images = _require(
            item.images.replace("{seed}", str(cfg.train.seed)), f"extra[{i}].images", cfg.source
        )
        index = CocoIndex.load(ann)
        unknown = [c.name for c in index.categories if c.name not in names]
        if unknown:
            raise ConfigError(
                f"{ann}: classes {', '.join(unknown[:5])} are not in the training file {cfg.data.train_ann} "
                f"({key}; an extra file must use the training file's class names, see `detrkit data merge`)"
            )
        out.append((index, images))
    return out


def _with_copy_paste(
    cfg: RunConfig, train_index: Any, train_images: Path, rare: list[str], transforms: Any
) -> Any:
    """``v2.Compose([online copy-paste, transforms])`` for ``data.copy_paste``."""
    from torchvision.transforms import v2

    from detrkit.synth.online import build_online_copy_paste

    cp = cfg.data.copy_paste
    assert cp is not None
    classes = cp.classes if cp.classes is not None else rare
    if not classes:
        raise ConfigError(
            f"{cfg.source}: data.copy_paste: no classes to paste (set data.copy_paste.classes or "
            f"data.rare_classes; no class is rare at data.rare_fraction={cfg.data.rare_fraction})"
        )
    from detrkit.synth.copy_paste import PasteParams

    if len(cp.scale) != 2 or not 0 < cp.scale[0] <= cp.scale[1]:
        raise ConfigError(
            f"{cfg.source}: data.copy_paste.scale: expected [lo, hi] with 0 < lo <= hi, got {cp.scale}"
        )
    try:
        online = build_online_copy_paste(
            train_index,
            train_images,
            classes=list(classes),
            p=cp.prob,
            max_instances=cp.max_instances,
            min_area=cp.min_area,
            max_bank_per_class=cp.max_bank_per_class,
            seed=cfg.train.seed if cp.seed is None else cp.seed,
            params=PasteParams(scale_range=(float(cp.scale[0]), float(cp.scale[1]))),
        )
    except ValueError as err:
        raise ConfigError(f"{cfg.source}: data.copy_paste: {err}") from None
    return v2.Compose([online, transforms])


def build_detector(model_cfg: ModelConfig, *, num_classes: int, source: str, log: Any = None) -> nn.Module:
    """``build_model`` + ``model.pretrained`` (HF weights) + ``model.init_from`` (weight transfer).

    ``model.overrides`` are checked against the options class of the model's family
    (:mod:`detrkit.models.options`): an unknown option, or a value of the wrong type or range,
    fails naming ``model.overrides`` and the option.
    """
    from detrkit.models.options import ModelOptionError
    from detrkit.models.registry import build_model
    from detrkit.runs.checkpoint import transfer_weights

    try:
        model = build_model(model_cfg.name, num_classes=num_classes, **model_cfg.overrides)
    except ModelOptionError as err:
        raise ConfigError(f"{source}: model.overrides: {err}") from None
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


def step_settings(cfg: RunConfig, *, where: str) -> StepSettings:
    """The training step's settings from ``train.*`` and ``model.freeze_bn``."""
    if cfg.train.grad_accum < 1:
        raise ConfigError(f"{cfg.source}: train.grad_accum must be >= 1, got {cfg.train.grad_accum}")
    t = cfg.train
    return StepSettings(
        grad_accum=t.grad_accum,
        clip_grad_norm=t.clip_grad_norm,
        max_nonfinite=t.max_nonfinite,
        channels_last=t.channels_last,
        freeze_bn=cfg.model.freeze_bn,
        where=where,
    )


def loop_settings(cfg: RunConfig, *, batches_per_epoch: int, profile_dir: Path | None) -> LoopSettings:
    """The epoch loop's settings; ``steps_per_epoch`` = ceil(batches / grad_accum), capped by
    ``train.max_steps_per_epoch``."""
    t = cfg.train
    steps = math.ceil(batches_per_epoch / t.grad_accum)
    if t.max_steps_per_epoch:
        steps = min(steps, t.max_steps_per_epoch)
    return LoopSettings(
        epochs=t.epochs,
        steps_per_epoch=steps,
        grad_accum=t.grad_accum,
        checkpoint_every_steps=t.checkpoint_every_steps,
        profile=t.profile,
        profile_steps=t.profile_steps,
        profile_dir=profile_dir,
        train_images=str(cfg.data.train_images),
    )


def resolve_auto_precision(cfg: RunConfig, device: torch.device) -> None:
    """``train.precision=auto`` -> ``bf16`` with ``train.channels_last`` where bf16 is fast on
    ``device`` (:func:`detrkit.devices.fast_bf16`; on AMX CPUs bf16 convolutions gain from NHWC
    and lose without it), else ``fp32``; in place, so that the saved config says what ran."""
    if cfg.train.precision != "auto":
        return
    from detrkit.devices import fast_bf16

    if fast_bf16(device):
        cfg.train.precision, cfg.train.channels_last = "bf16", True
    else:
        cfg.train.precision = "fp32"


def build_accelerator(cfg: RunConfig) -> Any:
    """The Accelerator for ``train.precision``/``train.cpu``/``train.device`` (fp16 needs CUDA)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    from detrkit.devices import resolve_device

    dev = resolve_device(cfg.train.device, option="train.device")  # checks a named device exists
    use_cpu = cfg.train.cpu or dev.type == "cpu"
    resolve_auto_precision(cfg, torch.device("cpu") if use_cpu else dev)
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.train.precision]
    if dev.type == "cuda" and dev.index is not None and not use_cpu:
        torch.cuda.set_device(dev.index)  # a single process on cuda:N (launchers set their own)
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


def repeat_factors_for(data: DataConfig, dataset: Any, source: str, log: Any = None) -> list[float] | None:
    """Per-image repeat factors when ``data.sampler`` is ``repeat_factor`` (else ``None``).

    The factors weight :class:`~detrkit.engine.sampling.ResumableBatchSampler`, whose order stays a
    function of ``(seed, epoch)``, so exact resume holds with repeat-factor sampling too.
    """
    if data.sampler == "random":
        return None
    threshold = data.rfs_threshold  # > 0: checked by the config's Range
    labels = getattr(dataset, "labels_per_image", None)
    if labels is None:
        raise ConfigError(f"{source}: data.sampler=repeat_factor needs a dataset with labels_per_image()")
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
