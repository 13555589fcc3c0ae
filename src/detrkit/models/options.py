"""The options of each model family: one dataclass per family, checked by the config's typed mechanism.

``build_model(name, num_classes=K, **options)`` and a config's ``model.overrides`` take the fields
of the options class that the registry entry names (:class:`DETROptions` for ``detr-*``,
:class:`DeformableDETROptions`, :class:`CoDeformableDETROptions`, :class:`FasterRCNNOptions` and
:class:`FasterRCNNVGGOptions`). :func:`check_options` turns the registry defaults of a model plus
the given options into an instance: an unknown option fails with the valid ones and a close match,
each value is converted and checked against its annotation and :class:`~detrkit.config.Range` by
:func:`~detrkit.config.checking.build_dataclass`, and the names of older releases
(:data:`~detrkit.config.schema.MODEL_OPTION_RENAMES`: ``n_heads``, ``enc_layers``, ``dec_layers``,
``ffn_dim``, ``detections_per_img``) are read under their new names with a one-time
``FutureWarning``.

Names are shared across families where the meaning is the same: ``d_model``, ``num_heads``,
``num_encoder_layers``, ``num_decoder_layers``, ``dim_feedforward``, ``dropout``,
``num_queries`` (PyTorch's ``nn.Transformer`` and Hugging Face's ``d_model``/``dropout``/
``num_queries``), ``backbone*``, ``cost_*`` / ``weight_*``, ``top_k`` (detections kept per image).

The classes hold no torch code: ``docs/ARCHITECTURE.md`` and README list their fields.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from detrkit.config.checking import (
    Fraction,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Range,
    build_dataclass,
    coerce,
    rename_keys,
)
from detrkit.config.schema import MODEL_OPTION_RENAMES
from detrkit.errors import ConfigError

__all__ = [
    "MODEL_OPTION_RENAMES",
    "CoDeformableDETROptions",
    "DETROptions",
    "DeformableDETROptions",
    "FasterRCNNOptions",
    "FasterRCNNVGGOptions",
    "ModelOptionError",
    "check_options",
    "option_values",
]


class ModelOptionError(ConfigError, ValueError):
    """An unknown model option or a value of the wrong type or range (one line naming the option).

    A :class:`~detrkit.errors.ConfigError` for the CLI (exit status 2, no traceback) and a
    ``ValueError`` as every other invalid builder argument.
    """


Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101"]
BackboneNorm = Literal["frozen_bn", "bn", "gn"]
Dropout = Annotated[float, Range(ge=0, lt=1)]
#: ResNet stages trained: 0-5 (5 = the stem too); ``None``: the builder's default.
TrainableStages = Annotated[int, Range(ge=0, le=5)]


def _two_stage_query(value: Any, where: str) -> str:
    """``position`` or ``memory`` (the deformable transformer's ``query_content``)."""
    try:
        return coerce(value, Literal["position", "memory"], where)
    except ConfigError as err:
        raise ConfigError(f"{err} (the transformer's query_content)") from None


@dataclass
class DETROptions:
    """DETR (``detr-*``), see :func:`detrkit.models.detr.build_detr`."""

    label: ClassVar[str] = "DETR"

    #: ResNet of the backbone.
    backbone: Backbone = "resnet50"
    #: backbone stage fed to the transformer (``layer4``: stride 32, ``layer3``: 16 for small images).
    return_layer: Literal["layer1", "layer2", "layer3", "layer4"] = "layer4"
    #: DC5: dilated ``layer4`` (bottleneck ResNets).
    dilation: bool = False
    trainable_backbone_layers: TrainableStages | None = None
    #: torchvision ResNet ``.pth`` path or weight name (``IMAGENET1K_V1``).
    backbone_weights: str | Path | None = None
    #: ``frozen_bn`` (pretrained weights), ``bn`` or ``gn`` (trainable, from scratch).
    backbone_norm: BackboneNorm = "frozen_bn"
    #: transformer width (a multiple of 4: sine position embedding).
    d_model: PosInt = 256
    num_heads: PosInt = 8
    #: encoder layers (0: the decoder reads the projected backbone features).
    num_encoder_layers: NonNegInt = 6
    num_decoder_layers: PosInt = 6
    dim_feedforward: PosInt = 2048
    dropout: Dropout = 0.1
    num_queries: PosInt = 100
    aux_loss: bool = True
    #: ``ce`` (softmax with a no-object class) or ``focal`` (sigmoid focal, Deformable DETR style).
    loss: Literal["ce", "focal"] = "ce"
    #: no-object weight of the ``ce`` loss.
    eos_coef: Fraction = 0.1
    #: matcher weights (``cost_class``: 1 for ``ce``, 2 for ``focal`` when null).
    cost_class: NonNegFloat | None = None
    cost_bbox: NonNegFloat = 5.0
    cost_giou: NonNegFloat = 2.0
    #: loss weights (``weight_ce``: 1 for ``ce``, 2 for ``focal`` when null).
    weight_ce: NonNegFloat | None = None
    weight_bbox: NonNegFloat = 5.0
    weight_giou: NonNegFloat = 2.0
    focal_alpha: Fraction = 0.25
    #: detections kept per image (null: every query for ``ce``, 100 for ``focal``).
    top_k: PosInt | None = None
    #: hybrid matching (H-DETR), training only: ``{k: 4, queries: 100}`` (+ optional ``weight``).
    one_to_many: dict[str, Any] | None = None


@dataclass
class DeformableDETROptions:
    """Deformable DETR (``deformable-detr-*``), see
    :func:`detrkit.models.deformable_detr.build_deformable_detr`."""

    label: ClassVar[str] = "Deformable DETR"

    backbone: Backbone = "resnet50"
    backbone_weights: str | Path | None = None
    backbone_norm: BackboneNorm = "frozen_bn"
    trainable_backbone_layers: TrainableStages | None = None
    #: channels of the first stage of a BasicBlock ResNet trained from scratch (a multiple of 8).
    backbone_width: Annotated[int, Range(ge=8)] = 64
    #: transformer width (a multiple of ``norm_groups``).
    d_model: PosInt = 256
    num_heads: PosInt = 8
    num_encoder_layers: PosInt = 6
    num_decoder_layers: PosInt = 6
    dim_feedforward: PosInt = 1024
    dropout: Dropout = 0.1
    #: feature levels (1: C5; 2: C4-C5; 3: C3-C5; more: stride-2 convolutions on top).
    num_feature_levels: PosInt = 4
    #: GroupNorm groups of the input projections.
    norm_groups: PosInt = 32
    #: sampling points per head and level in the encoder and the decoder.
    enc_n_points: PosInt = 4
    dec_n_points: PosInt = 4
    num_queries: PosInt = 300
    with_box_refine: bool = False
    two_stage: bool = False
    aux_loss: bool = True
    cost_class: NonNegFloat = 2.0
    cost_bbox: NonNegFloat = 5.0
    cost_giou: NonNegFloat = 2.0
    weight_ce: NonNegFloat = 2.0
    weight_bbox: NonNegFloat = 5.0
    weight_giou: NonNegFloat = 2.0
    focal_alpha: Fraction = 0.25
    top_k: PosInt = 100
    one_to_many: dict[str, Any] | None = None
    #: two-stage: train the encoder proposals with the targets' classes, rank them by their best class.
    two_stage_class_aware: bool = False
    #: two-stage: encoder proposals matched to each target.
    two_stage_k: PosInt = 1
    #: two-stage: the decoder queries' content, ``position`` (the paper) or ``memory`` (DINO style).
    two_stage_query: Literal["position", "memory"] = dataclasses.field(
        default="position", metadata={"check": _two_stage_query}
    )
    #: contrastive denoising queries (DINO; two-stage only; 0: off).
    num_denoising: NonNegInt = 0
    dn_label_noise: Fraction = 0.5
    dn_box_noise: NonNegFloat = 1.0
    #: weight of the dense encoder head's loss (two-stage only; 0: no head).
    dense_weight: NonNegFloat = 0.0
    dense_center_fraction: Annotated[float, Range(gt=0, le=1)] = 0.5


@dataclass
class CoDeformableDETROptions(DeformableDETROptions):
    """Co-Deformable-DETR (``co-deformable-detr-*``): the Deformable DETR options and those of the
    auxiliary heads, see :func:`detrkit.models.co_detr.model.build_co_deformable_detr`."""

    label: ClassVar[str] = "Co-Deformable-DETR"

    atss: bool = True
    rcnn: bool = True
    #: each head's loss scale (null: ``2 * num_decoder_layers``).
    atss_weight: NonNegFloat | None = None
    rcnn_weight: NonNegFloat | None = None
    #: weight of the positive queries' DETR losses.
    pos_query_weight: NonNegFloat = 1.0
    max_pos_queries: PosInt = 300
    neck_extra_levels: NonNegInt = 1
    atss_topk: PosInt = 9
    atss_stacked_convs: NonNegInt = 1
    rpn_batch: PosInt = 256
    rpn_pre_nms: PosInt = 4000
    rpn_post_nms: PosInt = 1000
    roi_batch: PosInt = 512
    roi_representation: PosInt = 1024


@dataclass
class FasterRCNNOptions:
    """Faster R-CNN ResNet-50-FPN (``fasterrcnn-r50-fpn``), see
    :func:`detrkit.models.baselines.build_fasterrcnn_r50_fpn`."""

    label: ClassVar[str] = "Faster R-CNN"

    #: ImageNet weights (``.pth`` path or torchvision weight name).
    backbone_weights: str | Path | None = None
    #: ResNet stages trained (null: 3 with weights, 5 without).
    trainable_backbone_layers: TrainableStages | None = None
    #: detections kept per image.
    top_k: PosInt = 100
    #: minimum score of a detection (0: none dropped).
    score_thresh: Fraction = 0.0


@dataclass
class FasterRCNNVGGOptions:
    """Faster R-CNN on VGG features (``fasterrcnn-vgg16``, ``fasterrcnn-vgg19``), see
    :func:`detrkit.models.baselines.build_fasterrcnn_vgg16`."""

    label: ClassVar[str] = "Faster R-CNN"

    backbone_weights: str | Path | None = None
    #: anchor sizes in input pixels, and aspect ratios (height / width).
    anchor_sizes: tuple[PosInt, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[PosFloat, ...] = (0.5, 1.0, 2.0)
    top_k: PosInt = 100
    score_thresh: Fraction = 0.0


def option_names(cls: type) -> list[str]:
    """The option names of an options class, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def option_values(options: Any) -> dict[str, Any]:
    """An options instance as builder keyword arguments (shallow: values are not copied)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def check_options(
    cls: type, options: dict[str, Any], *, name: str, defaults: dict[str, Any] | None = None
) -> Any:
    """``defaults`` (the registry's, valid) overridden by ``options`` -> a checked ``cls`` instance.

    Old option names (:data:`MODEL_OPTION_RENAMES`) are read under their new names (a
    ``FutureWarning`` once per name and process).

    Args:
        cls: the options dataclass of the model's family.
        options: what the user gave (``build_model`` keywords, ``model.overrides``).
        name: the model's registry name, for messages.
        defaults: the model's own defaults (``detr-tiny``'s small transformer).
    Raises:
        ModelOptionError: an unknown option (listing the valid ones, with a close match), or a
            value of the wrong type or outside its range (naming the option).
    """
    given = rename_keys(dict(options), MODEL_OPTION_RENAMES)
    names = option_names(cls)
    unknown = [k for k in given if k not in names]
    if unknown:
        close = [m for k in unknown for m in difflib.get_close_matches(str(k), names, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelOptionError(
            f"unknown {cls.label} option(s): {name} does not accept option(s) {sorted(unknown)}; "
            f"valid options: {', '.join(names)}{hint}"
        )
    try:
        return build_dataclass(cls, {**(defaults or {}), **given}, f"{name}: ")
    except ConfigError as err:
        raise ModelOptionError(str(err)) from None
