"""DETR (Carion et al., 2020): backbone + transformer + set prediction heads, and its builders.

Registered names: ``detr-r50``, ``detr-r101`` (the Hugging Face ``facebook/detr-resnet-50/-101``
architectures), ``detr-r18`` and ``detr-tiny`` (ResNet-18, d_model 64, 2+2 layers: tests and the
CPU demo). Every option of :class:`~detrkit.models.options.DETROptions` can be overridden through
``build_model(name, num_classes=K, **options)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor, nn

from detrkit.models.backbone import Backbone
from detrkit.models.base import Detector, check_inputs, postprocess_sigmoid_topk, postprocess_softmax
from detrkit.models.criterion import SetCriterion
from detrkit.models.matcher import HungarianMatcher, one_to_many_options
from detrkit.models.options import DETROptions
from detrkit.models.position import PositionEmbeddingSine
from detrkit.models.registry import register_model
from detrkit.models.transformer import Transformer

__all__ = ["DETR", "MLP", "build_detr"]


class MLP(nn.Module):
    """Feed-forward network with ReLU between layers (DETR's box head: 3 layers)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[..., input_dim]`` -> ``[..., output_dim]``."""
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else layer(x).relu()
        return x


class DETR(Detector):
    """DETR detector.

    Args:
        backbone: CNN returning ``(features [B, C, h, w], mask bool[B, h, w])``.
        transformer: the encoder-decoder.
        criterion: losses computed in :meth:`forward` when targets are given.
        num_classes: number of real classes ``K``.
        num_queries: number of object queries ``Q``.
        loss: ``"ce"`` (``K + 1`` logits, last = no object) or ``"focal"`` (``K`` sigmoid logits).
        aux_loss: also output (and train) the predictions of every intermediate decoder layer.
        top_k: detections kept per image by :meth:`postprocess` (``None``: ``Q`` for ``"ce"``,
            100 for ``"focal"``).
        one_to_many_queries: hybrid matching (H-DETR): an extra group of queries decoded in
            training only, separately from the ``Q`` one-to-one queries (the two groups do not see
            each other), and output as ``"one_to_many"`` for the criterion, which matches it to
            the targets repeated ``criterion.one_to_many_k`` times. 0: off.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        transformer: Transformer,
        criterion: SetCriterion,
        num_classes: int,
        num_queries: int = 100,
        loss: Literal["ce", "focal"] = "ce",
        aux_loss: bool = True,
        top_k: int | None = None,
        model_name: str = "detr",
        one_to_many_queries: int = 0,
    ) -> None:
        super().__init__()
        d_model = transformer.d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.model_name = model_name
        self.loss_type = loss
        self.aux_loss = aux_loss
        self.top_k = top_k
        self.backbone = backbone
        self.position = PositionEmbeddingSine(d_model // 2, normalize=True)
        self.input_proj = nn.Conv2d(backbone.num_channels, d_model, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.one_to_many_queries = one_to_many_queries
        if one_to_many_queries > 0:
            self.query_embed_o2m = nn.Embedding(one_to_many_queries, d_model)
        self.transformer = transformer
        self.class_embed = nn.Linear(d_model, num_classes + 1 if loss == "ce" else num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.criterion = criterion
        if loss == "focal":  # prior probability 0.01 for every class (RetinaNet, Deformable DETR)
            nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))

    def forward(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        """See :meth:`Detector.forward`.

        Args:
            images: ``float[B, 3, H, W]``.
            pixel_mask: ``bool[B, H, W]``, True on real pixels.
            targets: optional ``B`` dicts (``"boxes"`` ``[N, 4]`` cxcywh normalised, ``"labels"``).
        Returns:
            ``"pred_logits"`` ``[B, Q, K+1]`` (``"ce"``) or ``[B, Q, K]`` (``"focal"``),
            ``"pred_boxes"`` ``[B, Q, 4]`` cxcywh normalised, ``"aux_outputs"`` (``num_decoder_layers - 1``
            dicts, empty without ``aux_loss``), ``"stacked"`` (``(logits [L, B, Q, C], boxes
            [L, B, Q, 4])``: the aux layers then the last one, views of the same tensors), and with targets the losses of
            :class:`~detrkit.models.criterion.SetCriterion`.
        """
        check_inputs(images, pixel_mask, targets)
        features, mask = self.backbone(images, pixel_mask)
        pos = self.position(mask, features.dtype).flatten(2).transpose(1, 2)
        src = self.input_proj(features).flatten(2).transpose(1, 2)
        valid = mask.flatten(1)
        hs, memory = self.transformer(
            src, valid, pos, self.query_embed.weight, return_intermediate=self.aux_loss
        )
        out = self._heads(hs)
        if self.one_to_many_queries > 0 and self.training:
            hs_o2m = self.transformer.decode(
                memory, valid, pos, self.query_embed_o2m.weight, return_intermediate=self.aux_loss
            )
            out["one_to_many"] = self._heads(hs_o2m)
        if targets is not None:
            out.update(self.criterion(out, targets))
        return out

    def _heads(self, hs: Tensor) -> dict[str, Any]:
        """Decoder outputs ``[L, B, Q, D]`` -> last layer's logits and boxes plus ``"aux_outputs"``."""
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "stacked": (logits, boxes),  # every layer, for the criterion (no re-stacking)
            "aux_outputs": [
                {"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)
            ],
        }

    def postprocess(self, outputs: dict[str, Any], orig_sizes_hw: Tensor) -> list[dict[str, Tensor]]:
        """See :meth:`Detector.postprocess` (softmax for ``"ce"``, sigmoid top-k for ``"focal"``)."""
        if self.loss_type == "ce":
            return postprocess_softmax(
                outputs["pred_logits"], outputs["pred_boxes"], orig_sizes_hw, top_k=self.top_k
            )
        return postprocess_sigmoid_topk(
            outputs["pred_logits"], outputs["pred_boxes"], orig_sizes_hw, top_k=self.top_k or 100
        )


def build_detr(*, num_classes: int, model_name: str = "detr", **options: Any) -> DETR:
    """Build a DETR with random weights (``backbone_weights`` optionally loads ImageNet weights).

    Args:
        num_classes: dataset classes ``K``.
        model_name: stored as ``model.model_name`` (the registry sets it to the registered name).
        **options: the fields of :class:`~detrkit.models.options.DETROptions` (their defaults:
            DETR R50), given as Python values; :func:`~detrkit.models.registry.build_model` checks
            and converts them first. Notably ``return_layer`` (``"layer3"``: stride 16 for small
            images), ``trainable_backbone_layers`` (default: layer2 up to ``return_layer``, as
            DETR), ``backbone_norm`` (``"bn"``/``"gn"``: trainable norms, from scratch; the whole
            backbone then trains unless ``trainable_backbone_layers`` says otherwise, see
            :class:`Backbone`), ``d_model``, ``num_heads``, ``num_encoder_layers``,
            ``num_decoder_layers``, ``dim_feedforward``, ``dropout`` (the transformer),
            ``loss`` (``"ce"`` or ``"focal"``), the matcher costs ``cost_*`` and loss weights
            ``weight_*`` (``cost_class``/``weight_ce`` default 1 for ``"ce"``, 2 for ``"focal"``),
            ``one_to_many`` (hybrid matching, H-DETR, training only: ``{"k": 4, "queries": 100}``
            adds ``queries`` extra queries matched to the targets repeated ``k`` times, optional
            ``"weight"`` of their loss).
    Raises:
        TypeError: an option that is no field of ``DETROptions``.
        ValueError: invalid values or combinations.
    """
    o = DETROptions(**options)
    loss, num_queries, d_model = o.loss, o.num_queries, o.d_model
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if loss not in ("ce", "focal"):
        raise ValueError(f"loss must be 'ce' or 'focal', got {loss!r}")
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    if d_model % 4:
        raise ValueError(f"d_model must be a multiple of 4 (sine position embedding), got {d_model}")
    default_class = 1.0 if loss == "ce" else 2.0
    o2m = one_to_many_options(o.one_to_many)
    matcher = HungarianMatcher(
        cost_class=default_class if o.cost_class is None else o.cost_class,
        cost_bbox=o.cost_bbox,
        cost_giou=o.cost_giou,
        class_cost=loss,
        focal_alpha=o.focal_alpha,
    )
    criterion = SetCriterion(
        num_classes=num_classes,
        matcher=matcher,
        loss=loss,
        weight_ce=default_class if o.weight_ce is None else o.weight_ce,
        weight_bbox=o.weight_bbox,
        weight_giou=o.weight_giou,
        eos_coef=o.eos_coef,
        focal_alpha=o.focal_alpha,
        one_to_many_k=o2m["k"],
        one_to_many_weight=o2m["weight"],
    )
    return DETR(
        backbone=Backbone(
            o.backbone,
            return_layer=o.return_layer,
            dilation=o.dilation,
            trainable_layers=o.trainable_backbone_layers,
            weights=o.backbone_weights,
            norm=o.backbone_norm,
        ),
        transformer=Transformer(
            d_model=d_model,
            num_heads=o.num_heads,
            enc_layers=o.num_encoder_layers,
            dec_layers=o.num_decoder_layers,
            dim_feedforward=o.dim_feedforward,
            dropout=o.dropout,
        ),
        criterion=criterion,
        num_classes=num_classes,
        num_queries=num_queries,
        loss=loss,
        aux_loss=o.aux_loss,
        top_k=o.top_k,
        model_name=model_name,
        one_to_many_queries=o2m["queries"],
    )


def _builder(name: str, defaults: dict[str, Any], doc: str, **info: Any) -> Callable[..., DETR]:
    def build(*, num_classes: int, **options: Any) -> DETR:
        return build_detr(num_classes=num_classes, model_name=name, **{**defaults, **options})

    build.__doc__ = f"{doc}\n\nDefaults: {defaults}; options: :class:`~detrkit.models.options.DETROptions`."
    build.__name__ = build.__qualname__ = "build_" + name.replace("-", "_")
    return register_model(name, options=DETROptions, defaults=defaults, family="detr", **info)(build)


build_detr_r50 = _builder(
    "detr-r50",
    {"backbone": "resnet50"},
    "DETR ResNet-50 (6+6 layers, d_model 256, 100 queries); weights of facebook/detr-resnet-50 load.",
    hf_id="facebook/detr-resnet-50",
)
build_detr_r101 = _builder(
    "detr-r101",
    {"backbone": "resnet101"},
    "DETR ResNet-101 (6+6 layers, d_model 256, 100 queries); weights of facebook/detr-resnet-101 load.",
    hf_id="facebook/detr-resnet-101",
)
build_detr_r18 = _builder(
    "detr-r18",
    {"backbone": "resnet18"},
    "DETR ResNet-18 (6+6 layers, d_model 256, 100 queries): lighter backbone, same transformer.",
)
build_detr_tiny = _builder(
    "detr-tiny",
    {
        "backbone": "resnet18",
        "return_layer": "layer3",
        "d_model": 64,
        "num_heads": 4,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "dim_feedforward": 128,
        "dropout": 0.0,
        "num_queries": 50,
    },
    "Tiny DETR for tests and CPU demos: ResNet-18 up to layer3 (stride 16), d_model 64, 2+2 layers, 50 queries.",
)
