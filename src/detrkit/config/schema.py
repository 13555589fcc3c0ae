"""The sections of a detection run's config (:class:`RunConfig`): one dataclass per section.

A config file has up to seven sections (``model``, ``data``, ``train``, ``optim``, ``eval``,
``output``, ``log``) whose keys are the fields of the dataclasses below; every field's annotation (with its
:class:`~detrkit.config.checking.Range`) is what the loader checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from detrkit.config.checking import Fraction, NonNegFloat, NonNegInt, PosFloat, PosInt, Range

Precision = Literal["fp32", "bf16", "fp16", "auto"]


#: Model options renamed for one naming across the families (``{old: new}``): configs, command
#: lines and the configs saved in checkpoints may still use the old names (read with a
#: ``FutureWarning`` once per name). See :mod:`detrkit.models.options`.
MODEL_OPTION_RENAMES: dict[str, str] = {
    "n_heads": "num_heads",  # Deformable DETR
    "enc_layers": "num_encoder_layers",  # DETR
    "dec_layers": "num_decoder_layers",  # DETR
    "ffn_dim": "dim_feedforward",  # Deformable DETR
    "detections_per_img": "top_k",  # Faster R-CNN
}


@dataclass
class ModelConfig:
    """What to build: ``build_model(name, num_classes=..., **overrides)``, weights and freezing."""

    name: str = "detr-tiny"
    #: options of the model's family (:mod:`detrkit.models.options`), e.g. ``{num_queries: 50,
    #: d_model: 128}``, checked against the family's options class when the model is built.
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Hugging Face weights: Hub id, local folder or file (``load_hf_weights``).
    pretrained: str | None = None
    #: a detrkit checkpoint (or run folder) whose tensors are copied where names and shapes match.
    init_from: str | None = None
    #: parameter-name keywords to freeze, e.g. ``[backbone]`` (matches names containing the word).
    freeze: list[str] = field(default_factory=list)
    #: freeze the backbone stem and its first k residual stages (0 = none, 4 = whole ResNet).
    freeze_backbone_stages: Annotated[int, Range(ge=0, le=4)] = 0
    #: keep every BatchNorm layer in eval mode with frozen affine parameters.
    freeze_bn: bool = False


@dataclass
class ShapesConfig:
    """The built-in synthetic dataset, generated on first use when ``data.shapes`` is set."""

    out: str = "data/shapes"
    train: PosInt = 400
    val: PosInt = 100
    size: Annotated[int, Range(ge=64)] = 160
    seed: int = 0
    #: long-tailed variant: exactly this many train instances of the named classes (``{star: 30}``).
    class_counts: dict[str, int] | None = None
    #: the same for the val split (e.g. ``{star: 300, cross: 300}`` for a precise rare-class AP).
    val_class_counts: dict[str, int] | None = None


@dataclass
class ExtraDataConfig:
    """One extra training file (e.g. ``detrkit synth`` output) appended to the training set.

    ``{seed}`` in either path is replaced by ``train.seed`` (synthetic data generated per seed).
    """

    ann: str
    images: str


@dataclass
class CopyPasteConfig:
    """Online copy-paste (:func:`detrkit.synth.online.build_online_copy_paste`), training only."""

    #: probability that a training sample gets pastes.
    prob: Fraction = 0.5
    #: class names to paste; ``null``: the run's rare classes (``data.rare_classes`` or computed).
    classes: list[str] | None = None
    #: pastes per sample, uniform in 1..max_instances.
    max_instances: PosInt = 2
    #: scale jitter of a pasted instance, uniform in ``[lo, hi]`` times its source size (Simple
    #: Copy-Paste's large scale jitter is ``[0.1, 2.0]``); capped at 0.6 of the image side.
    scale: list[PosFloat] = field(default_factory=lambda: [0.6, 1.4])
    #: instances smaller than this many pixels do not enter the bank.
    min_area: NonNegInt = 64
    #: at most this many instances per class in the bank (``null``: all).
    max_bank_per_class: PosInt | None = 500
    #: seed of the bank's instance selection; ``null``: ``train.seed``.
    seed: int | None = None


@dataclass
class DataConfig:
    """COCO-format train/val data and loader settings."""

    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    #: generate the built-in shapes dataset and use it (fills the four paths above).
    shapes: ShapesConfig | None = None
    #: ``build_transforms`` presets for training and validation, and extra keyword arguments.
    train_preset: str = "detr"
    val_preset: str = "val"
    transform_args: dict[str, Any] = field(default_factory=dict)
    #: pad batches to a multiple of this many pixels (0: to the largest image only).
    size_divisibility: NonNegInt = 0
    #: extra training files ``[{ann, images}]``; their class names must be among the training file's.
    extra: list[ExtraDataConfig] = field(default_factory=list)
    #: online copy-paste of rare-class instances before the training transforms (``null``: off).
    copy_paste: CopyPasteConfig | None = None
    #: ``random`` (each image once per epoch) or ``repeat_factor`` (LVIS repeat-factor sampling).
    sampler: Literal["random", "repeat_factor"] = "random"
    #: repeat-factor threshold t: a class in a fraction f < t of the images repeats them sqrt(t/f) times.
    rfs_threshold: Annotated[float, Range(gt=0, le=1)] = 0.001
    #: the rare class names (recorded in ``classes.json``); ``null``: those ``detrkit data stats``
    #: marks (shown in fewer than ``rare_fraction`` x the images of the most frequent class).
    rare_classes: list[str] | None = None
    rare_fraction: Fraction = 0.05
    num_workers: NonNegInt = 2
    pin_memory: bool = True
    #: what to do with a degenerate box: ``drop`` it or ``error``.
    on_bad_box: str = "drop"


@dataclass
class TrainConfig:
    """The loop: epochs, batch, precision, checkpoints, faults."""

    epochs: PosInt = 10
    #: images per process per step, or ``auto`` (largest that fits; a fixed choice on CPU).
    batch_size: PosInt | Literal["auto"] = 4
    grad_accum: PosInt = 1
    #: clip the global gradient norm (DETR uses 0.1); ``null`` disables clipping.
    clip_grad_norm: PosFloat | None = 0.1
    #: ``fp32``, ``bf16``/``fp16`` (mixed precision; fp16 CUDA only) or ``auto``: bf16 with
    #: channels-last where bf16 is fast (``detrkit.devices.fast_bf16``: GPUs of compute capability
    #: >= 8, CPUs with AMX), fp32 elsewhere; the run's ``config.yaml`` records what was chosen.
    precision: Precision = "fp32"
    seed: int = 42
    ema: bool = False
    ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.9998
    #: EMA warm-up: the decay ramps up as ``decay * (1 - exp(-updates / ema_warmup))``.
    ema_warmup: NonNegInt = 2000
    #: save ``epoch_N.pt`` every N epochs (0 = only ``last`` and ``best``).
    checkpoint_every: NonNegInt = 1
    #: also save ``last.pt`` every N optimizer steps inside an epoch (0 = only at epoch ends).
    checkpoint_every_steps: NonNegInt = 0
    #: abort after this many consecutive non-finite losses.
    max_nonfinite: PosInt = 5
    #: early stopping: stop after this many validations in a row without an improvement of
    #: ``eval.best_metric`` by more than ``min_delta`` (0 = off). Only trained epochs are
    #: validated, so the starting (pretrained) weights never count as "best".
    patience: NonNegInt = 0
    min_delta: NonNegFloat = 0.0
    #: stop each epoch after this many steps (0 = whole epoch); for smoke runs.
    max_steps_per_epoch: NonNegInt = 0
    #: run on the CPU even when a GPU is present.
    cpu: bool = False
    #: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``detrkit train --device``); null: the best present.
    device: str | None = None
    #: channels-last (NHWC) memory format for the convolutions: the model's 4-D weights and the
    #: training images; faster convolutions on recent CPUs (oneDNN) and on GPUs with bf16/fp16.
    channels_last: bool = False
    #: write a torch.profiler trace of a few steps of the first epoch to ``profile/``.
    profile: bool = False
    profile_steps: PosInt = 5
    #: skip the preflight checks (not recommended).
    preflight: bool = True


@dataclass
class OptimConfig:
    """AdamW, parameter groups and the learning-rate schedule."""

    lr: NonNegFloat = 1e-4
    #: learning rate of parameters whose name contains ``backbone``.
    backbone_lr: NonNegFloat = 1e-5
    weight_decay: NonNegFloat = 1e-4
    betas: list[Annotated[float, Range(ge=0, lt=1)]] = field(default_factory=lambda: [0.9, 0.999])
    eps: PosFloat = 1e-8
    #: no weight decay on norms, biases and embeddings.
    no_decay_norm_bias: bool = True
    schedule: Literal["step", "cosine", "constant"] = "step"
    #: step schedule: multiply by ``gamma`` at these epochs.
    milestones: list[PosInt] = field(default_factory=list)
    gamma: PosFloat = 0.1
    #: cosine schedule: final lr as a fraction of the initial lr.
    min_lr_ratio: Fraction = 0.01
    #: linear warm-up length in optimizer steps.
    warmup_steps: NonNegInt = 0
    warmup_start_factor: Annotated[float, Range(gt=0, le=1)] = 0.001
    #: fused/foreach AdamW: ``auto`` picks fused on CUDA and CPU, foreach otherwise (e.g. MPS).
    impl: Literal["auto", "fused", "foreach", "loop"] = "auto"


@dataclass
class EvalConfig:
    """Validation during training."""

    every: NonNegInt = 1
    batch_size: PosInt | None = None
    #: metric of ``best.pt`` (a CocoMetrics stat name).
    best_metric: str = "AP"
    #: keep detections scoring at least this (0 keeps the model's top-k).
    score_threshold: Fraction = 0.0


@dataclass
class OutputConfig:
    """Where the run folder goes: ``dir``, or ``root/name`` auto-incremented (name, name2, ...)."""

    root: str = "runs"
    name: str | None = None
    dir: str | None = None
    tensorboard: bool = True
    plots: bool = True


@dataclass
class WandbConfig:
    """A Weights & Biases run beside the run folder (``pip install 'detrkit[wandb]'``)."""

    project: str = "detrkit"
    #: the W&B run's display name; ``null``: the run folder's name.
    name: str | None = None
    #: ``online``, ``offline`` (sync later with ``wandb sync``) or ``disabled``; ``null``: W&B's
    #: own default (``WANDB_MODE``, else online).
    mode: Literal["online", "offline", "disabled"] | None = None


@dataclass
class MlflowConfig:
    """An MLflow run beside the run folder (``pip install 'detrkit[mlflow]'``)."""

    #: ``http://host:5000``, ``file:///abs/mlruns``, ``sqlite:///mlflow.db``...; ``null``:
    #: MLflow's own default (``MLFLOW_TRACKING_URI``).
    tracking_uri: str | None = None
    experiment: str = "detrkit"
    #: ``null``: the run folder's name.
    run_name: str | None = None


@dataclass
class LogConfig:
    """Experiment trackers beside TensorBoard (``output.tensorboard``); ``null`` turns one off.

    They get the flattened config as parameters, every ``metrics.csv`` row (step = epoch) and the
    final summary; their run ends as failed when training fails.
    """

    wandb: WandbConfig | None = None
    mlflow: MlflowConfig | None = None


@dataclass
class RunConfig:
    """The whole run; ``source`` is the file it came from (for messages), not a config key."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every config key (``source`` left out)."""
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
