"""Deformable DETR (Zhu et al., 2021) with the iterative box refinement and two-stage options.

A ResNet gives C3-C5 (strides 8, 16, 32); 1x1 convolutions + GroupNorm project them to ``d_model``
and 3x3 stride-2 convolutions + GroupNorm add coarser levels (stride 64, ...). The
:class:`~detrkit.models.deformable_transformer.DeformableTransformer` encodes them with sine
position and learned level embeddings and decodes ``num_queries`` queries; a linear head gives
sigmoid class logits (no no-object class, focal loss) and a 3-layer MLP box-logit deltas added to
the inverse sigmoid of each layer's reference point.

Weight-compatible with Hugging Face's ``DeformableDetrForObjectDetection`` (SenseTime/deformable-detr
and its refine / two-stage variants): :func:`deformable_state_dict_from_hf` maps its state dict, in
the current and the older key naming, onto ours.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from detrkit.models.backbone import Backbone, downsample_mask
from detrkit.models.base import Detector, check_inputs, postprocess_sigmoid_topk
from detrkit.models.criterion import SetCriterion
from detrkit.models.deformable_hf import deformable_state_dict_from_hf
from detrkit.models.deformable_transformer import DeformableTransformer, TransformerOutput, refine_reference
from detrkit.models.denoising import make_denoising_queries
from detrkit.models.detr import MLP
from detrkit.models.matcher import HungarianMatcher, one_to_many_options
from detrkit.models.options import DeformableDETROptions
from detrkit.models.position import PositionEmbeddingSine
from detrkit.models.registry import register_model

__all__ = ["MLP", "DeformableDETR", "build_deformable_detr", "deformable_state_dict_from_hf"]

_BACKBONE_STAGES = ("layer2", "layer3", "layer4")  # C3, C4, C5


class DeformableDETR(Detector):
    """Deformable DETR detector (see the module docstring).

    Args:
        backbone: a ResNet whose :meth:`~detrkit.models.backbone.Backbone.forward_levels` gives
            ``len(backbone.level_channels)`` feature maps, finest first.
        transformer: the deformable transformer (its ``two_stage`` decides the variant).
        num_classes: number of classes ``K``.
        num_feature_levels: levels fed to the transformer; the backbone gives the first ones, 3x3
            stride-2 convolutions the rest.
        norm_groups: groups of the GroupNorm after each input projection (32 in the paper and in
            Hugging Face's models; ``d_model`` must be a multiple). With one channel per group
            (``d_model == norm_groups``) a 1x1 level at batch size 1 holds one value per group,
            which normalises to a constant and which torch refuses: :meth:`forward` then raises a
            ``ValueError`` naming the smallest input size.
        with_box_refine: per-layer box (and class) heads, each decoder layer refining the boxes.
        aux_loss: supervise every decoder layer (outputs ``aux_outputs``).
        criterion: the loss; ``None`` disallows ``targets`` in :meth:`forward`.
        top_k: detections kept per image by :meth:`postprocess`.
        one_to_many_queries: hybrid matching (H-DETR), training only: an extra group of learned
            queries decoded separately and output as ``"one_to_many"`` (see
            :class:`~detrkit.models.criterion.SetCriterion`'s ``one_to_many_k``). 0: off.
        num_denoising: contrastive denoising (DINO), training only, two-stage only: the budget of
            noised ground-truth queries decoded with the matched ones (see
            :mod:`detrkit.models.denoising`; DINO uses 100), output as ``"denoising"``. 0: off.
        dn_label_noise, dn_box_noise: the noise of those queries (DINO: 0.5 and 1.0).
        dense_head: two-stage only: train a dense class head on every encoder position
            (one-to-many supervision, see :mod:`detrkit.models.dense`), output as ``"enc_dense"``
            in training; its loss weight is the criterion's ``weight_dense``.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        transformer: DeformableTransformer,
        num_classes: int,
        num_feature_levels: int = 4,
        norm_groups: int = 32,
        with_box_refine: bool = False,
        aux_loss: bool = True,
        criterion: SetCriterion | None = None,
        top_k: int = 100,
        one_to_many_queries: int = 0,
        num_denoising: int = 0,
        dn_label_noise: float = 0.5,
        dn_box_noise: float = 1.0,
        dense_head: bool = False,
    ) -> None:
        super().__init__()
        d_model = transformer.d_model
        if norm_groups < 1 or d_model % norm_groups:
            raise ValueError(
                f"d_model must be a multiple of norm_groups (GroupNorm groups), got {d_model} and {norm_groups}"
            )
        channels = list(backbone.level_channels)
        if len(channels) > num_feature_levels:
            raise ValueError(f"the backbone gives {len(channels)} levels, more than num_feature_levels")
        self.num_classes = num_classes
        self.model_name = "deformable-detr"
        self.num_feature_levels = num_feature_levels
        self.norm_groups = norm_groups
        self.with_box_refine = with_box_refine
        self.two_stage = transformer.two_stage
        self.aux_loss = aux_loss
        self.top_k = top_k
        self.backbone = backbone
        self.position_embedding = PositionEmbeddingSine(d_model // 2, normalize=True, offset=-0.5)
        projections = [
            nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(norm_groups, d_model)) for c in channels
        ]
        in_ch = channels[-1]
        for _ in range(num_feature_levels - len(channels)):
            projections.append(
                nn.Sequential(nn.Conv2d(in_ch, d_model, 3, 2, 1), nn.GroupNorm(norm_groups, d_model))
            )
            in_ch = d_model
        self.input_proj = nn.ModuleList(projections)
        self.transformer = transformer

        class_head = nn.Linear(d_model, num_classes)
        box_head = MLP(d_model, d_model, 4, 3)
        nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        num_pred = len(transformer.decoder_layers) + int(self.two_stage)
        if with_box_refine:  # independent heads per layer
            self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        else:  # one head shared by all layers (repeated, so state dicts list every layer)
            nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_head] * num_pred)
            self.bbox_embed = nn.ModuleList([box_head] * num_pred)
        if self.two_stage:
            for head in self.bbox_embed:
                nn.init.zeros_(head.layers[-1].bias[2:])
        self.criterion = criterion
        self.one_to_many_queries = one_to_many_queries
        if one_to_many_queries > 0:
            if self.two_stage:
                raise ValueError("one_to_many needs learned queries; it is not available with two_stage")
            self.query_embed_o2m = nn.Embedding(one_to_many_queries, 2 * d_model)
            nn.init.normal_(self.query_embed_o2m.weight)
        if num_denoising < 0 or not 0.0 <= dn_label_noise <= 1.0 or dn_box_noise < 0:
            raise ValueError(
                f"num_denoising must be >= 0, dn_label_noise in [0, 1] and dn_box_noise >= 0; got "
                f"{num_denoising}, {dn_label_noise}, {dn_box_noise}"
            )
        if num_denoising > 0 and not self.two_stage:
            raise ValueError("denoising queries (num_denoising > 0) need two_stage: true")
        self.num_denoising = num_denoising
        self.dn_label_noise = dn_label_noise
        self.dn_box_noise = dn_box_noise
        if num_denoising > 0:
            self.dn_label_embed = nn.Embedding(num_classes, d_model)
            nn.init.normal_(self.dn_label_embed.weight)
        if dense_head and not self.two_stage:
            raise ValueError("the dense encoder head (dense_weight > 0) needs two_stage: true")
        self.dense_head = nn.Linear(d_model, num_classes) if dense_head else None
        if self.dense_head is not None:
            nn.init.constant_(self.dense_head.bias, -math.log((1 - 0.01) / 0.01))

    def forward(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        """Detect.

        Args:
            images: ``float[B, 3, H, W]`` normalised, zero-padded bottom/right.
            pixel_mask: ``bool[B, H, W]``, True on real pixels.
            targets: optional ``B`` dicts with ``"boxes"`` ``[N_i, 4]`` cxcywh normalised and
                ``"labels"`` ``int64[N_i]``; adds the losses to the output.
        Returns:
            ``"pred_logits"`` ``[B, Q, K]`` (sigmoid), ``"pred_boxes"`` ``[B, Q, 4]`` cxcywh
            normalised to the unpadded image, ``"aux_outputs"`` (the same for the first ``N - 1``
            decoder layers; empty without ``aux_loss``), two-stage also ``"enc_outputs"``
            (``pred_logits [B, S, K]``, ``pred_boxes [B, S, 4]`` of every encoder proposal); with
            targets ``"loss"`` and the detached components of :class:`SetCriterion`.
        """
        check_inputs(images, pixel_mask, targets)
        if targets is not None and self.criterion is None:
            raise ValueError("this model was built without a criterion; pass targets=None")
        outputs, _ = self.forward_outputs(images, pixel_mask, targets)
        if targets is not None:
            outputs.update(self.criterion(outputs, targets))
        return outputs

    def forward_outputs(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[dict[str, Any], TransformerOutput]:
        """:meth:`forward` without the losses: ``(outputs, transformer output)`` for subclasses
        that add training-only branches on the encoder memory (see :mod:`detrkit.models.co_detr`).
        The inputs are not validated here."""
        features = self.backbone.forward_levels(images)
        self._check_level_sizes(images, features)
        srcs = [proj(f) for proj, f in zip(self.input_proj, features, strict=False)]
        for level in range(len(features), self.num_feature_levels):
            srcs.append(self.input_proj[level](features[-1] if level == len(features) else srcs[-1]))
        masks = [downsample_mask(pixel_mask, tuple(s.shape[-2:])) for s in srcs]
        pos = [self.position_embedding(m, dtype=s.dtype) for m, s in zip(masks, srcs, strict=True)]

        num_layers = len(self.transformer.decoder_layers)
        dn = None
        if targets is not None and self.training and self.num_denoising > 0:
            dn = make_denoising_queries(
                targets,
                num_classes=self.num_classes,
                num_queries=self.transformer.num_queries,
                num_denoising=self.num_denoising,
                label_noise=self.dn_label_noise,
                box_noise=self.dn_box_noise,
            )
        out = self.transformer(
            srcs,
            masks,
            pos,
            bbox_heads=self.bbox_embed[:num_layers] if self.with_box_refine else None,
            proposal_heads=(self.class_embed[-1], self.bbox_embed[-1]) if self.two_stage else None,
            one_to_many_queries=(
                self.query_embed_o2m.weight if self.one_to_many_queries > 0 and self.training else None
            ),
            denoising=(None if dn is None else (self.dn_label_embed(dn.labels), dn.box_logits, dn.attn_mask)),
        )
        outputs = self._heads(out)
        if out.one_to_many is not None:
            outputs["one_to_many"] = self._heads(out.one_to_many)
        if dn is not None and out.denoising is not None:
            outputs["denoising"] = {**self._heads(out.denoising), "groups": dn.groups, "slots": dn.slots}
        if self.two_stage:
            outputs["enc_outputs"] = {
                "pred_logits": out.enc_class_logits,
                "pred_boxes": out.enc_box_logits.sigmoid(),
            }
        if self.dense_head is not None and targets is not None and self.training:
            outputs["enc_dense"] = {
                "pred_logits": self.dense_head(out.enc_features),
                "anchors": out.enc_anchors,
            }
        return outputs, out

    def _heads(self, out: TransformerOutput) -> dict[str, Any]:
        """Per-layer class logits and refined boxes: the last layer's, ``"aux_outputs"`` and
        ``"stacked"`` (``(logits [N, B, Q, K], boxes [N, B, Q, 4])``, every layer). Shared heads
        run once on the stacked layers."""
        n = len(self.transformer.decoder_layers)
        if self.with_box_refine:  # one head per layer
            logits = torch.stack([self.class_embed[i](out.hidden[i]) for i in range(n)])
            deltas = torch.stack([self.bbox_embed[i](out.hidden[i]) for i in range(n)])
        else:
            logits, deltas = self.class_embed[0](out.hidden), self.bbox_embed[0](out.hidden)
        if n == 1:
            boxes = refine_reference(out.init_reference, deltas[0])[None]
        elif out.init_reference.shape[-1] == out.references.shape[-1]:  # one refinement for all layers
            boxes = refine_reference(torch.cat([out.init_reference[None], out.references[:-1]]), deltas)
        else:  # points first, refined boxes after
            refs = [out.init_reference, *out.references[:-1]]
            boxes = torch.stack([refine_reference(r, d) for r, d in zip(refs, deltas, strict=True)])
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "stacked": (logits, boxes),
            "aux_outputs": (
                [{"pred_logits": c, "pred_boxes": b} for c, b in zip(logits[:-1], boxes[:-1], strict=True)]
                if self.aux_loss
                else []
            ),
        }

    def _check_level_sizes(self, images: Tensor, features: list[Tensor]) -> None:
        """Raise ``ValueError`` where GroupNorm would see one value per group (see ``norm_groups``).

        Only Python shapes are read: no host sync, nothing for ``torch.compile`` to trace.
        """
        if images.shape[0] != 1 or self.transformer.d_model // self.norm_groups != 1:
            return
        h, w = (int(v) for v in features[-1].shape[-2:])
        sizes = [tuple(int(v) for v in f.shape[-2:]) for f in features]
        for _ in range(len(features), self.num_feature_levels):
            h, w = (h + 1) // 2, (w + 1) // 2  # 3x3 stride-2 convolution with padding 1
            sizes.append((h, w))
        if (1, 1) in sizes:
            coarsest = self.backbone.level_strides[-1] * 2 ** (self.num_feature_levels - len(features))
            raise ValueError(
                f"a {images.shape[-2]}x{images.shape[-1]} image at batch size 1 gives a 1x1 feature level, "
                f"which GroupNorm cannot normalise with one channel per group (d_model {self.transformer.d_model}"
                f" == norm_groups {self.norm_groups}); use norm_groups <= {self.transformer.d_model // 2} or "
                f"images larger than {coarsest} px on a side"
            )

    def postprocess(self, outputs: dict[str, Any], orig_sizes_hw: Tensor) -> list[dict[str, Tensor]]:
        """Sigmoid scores, top ``top_k`` (query, class) pairs per image, boxes in original pixels.

        Args:
            outputs: :meth:`forward`'s dict.
            orig_sizes_hw: ``[B, 2]`` (height, width) of the original images.
        Returns:
            ``B`` dicts of ``boxes [N, 4]`` xyxy pixels, ``scores [N]`` descending, ``labels [N]``.
        """
        return postprocess_sigmoid_topk(
            outputs["pred_logits"], outputs["pred_boxes"], orig_sizes_hw, top_k=self.top_k
        )


def build_deformable_detr(*, num_classes: int, **options: Any) -> DeformableDETR:
    """Build a Deformable DETR with random weights (defaults: the paper's R50 model and loss).

    ``backbone_weights`` optionally loads ImageNet weights into the ResNet (see
    :class:`~detrkit.models.backbone.Backbone`). ``num_feature_levels`` 1 uses C5 only, 2 uses
    C4-C5, 3 C3-C5 and more adds stride-2 convolutions on top. ``norm_groups``: GroupNorm groups
    of the input projections (see :class:`DeformableDETR`). Matcher costs and loss weights follow
    the paper (class 2, L1 5, GIoU 2, focal alpha 0.25). ``backbone_norm`` ``"bn"``/``"gn"``
    trains the backbone's norms (from scratch); ``trainable_backbone_layers=None`` (default) then
    trains the whole backbone, stem included, and layer2-4 with ``"frozen_bn"`` (the paper). ``one_to_many`` (``{"k": 4, "queries": 100}``, optional
    ``"weight"``): hybrid matching in training, see :func:`~detrkit.models.detr.build_detr`.
    ``two_stage_class_aware`` / ``two_stage_k`` (two-stage only): train the encoder proposals with
    the targets' classes and rank them by their best class / match each target to ``k`` proposals
    (dense supervision of the encoder, which speeds up learning from scratch; see
    :class:`~detrkit.models.criterion.SetCriterion` ``enc_class_aware``, ``enc_k``).

    ``options`` are the fields of :class:`~detrkit.models.options.DeformableDETROptions`, given as
    Python values (:func:`~detrkit.models.registry.build_model` checks and converts them first);
    another name raises ``TypeError``, invalid values or combinations ``ValueError``.
    """
    o = DeformableDETROptions(**options)
    if (o.two_stage_class_aware or o.two_stage_k != 1 or o.two_stage_query != "position") and not o.two_stage:
        raise ValueError("two_stage_class_aware, two_stage_k and two_stage_query need two_stage: true")
    o2m = one_to_many_options(o.one_to_many)
    if o.num_feature_levels < 1:
        raise ValueError(f"num_feature_levels must be >= 1, got {o.num_feature_levels}")
    stages = _BACKBONE_STAGES[-min(o.num_feature_levels, len(_BACKBONE_STAGES)) :]
    trunk = Backbone(
        o.backbone,
        return_layers=stages,
        trainable_layers=o.trainable_backbone_layers,
        weights=o.backbone_weights,
        norm=o.backbone_norm,
        width=o.backbone_width,
    )
    transformer = DeformableTransformer(
        d_model=o.d_model,
        n_heads=o.num_heads,
        num_encoder_layers=o.num_encoder_layers,
        num_decoder_layers=o.num_decoder_layers,
        ffn_dim=o.dim_feedforward,
        dropout=o.dropout,
        n_levels=o.num_feature_levels,
        enc_n_points=o.enc_n_points,
        dec_n_points=o.dec_n_points,
        num_queries=o.num_queries,
        two_stage=o.two_stage,
        proposal_score="max" if o.two_stage_class_aware else "first",
        query_content=o.two_stage_query,
    )
    matcher = HungarianMatcher(
        cost_class=o.cost_class,
        cost_bbox=o.cost_bbox,
        cost_giou=o.cost_giou,
        class_cost="focal",
        focal_alpha=o.focal_alpha,
    )
    criterion = SetCriterion(
        num_classes=num_classes,
        matcher=matcher,
        loss="focal",
        weight_ce=o.weight_ce,
        weight_bbox=o.weight_bbox,
        weight_giou=o.weight_giou,
        focal_alpha=o.focal_alpha,
        one_to_many_k=o2m["k"],
        one_to_many_weight=o2m["weight"],
        enc_class_aware=o.two_stage_class_aware,
        enc_k=o.two_stage_k,
        weight_dense=o.dense_weight,
        dense_center_fraction=o.dense_center_fraction,
    )
    return DeformableDETR(
        backbone=trunk,
        transformer=transformer,
        num_classes=num_classes,
        num_feature_levels=o.num_feature_levels,
        norm_groups=o.norm_groups,
        with_box_refine=o.with_box_refine,
        aux_loss=o.aux_loss,
        criterion=criterion,
        top_k=o.top_k,
        one_to_many_queries=o2m["queries"],
        num_denoising=o.num_denoising,
        dn_label_noise=o.dn_label_noise,
        dn_box_noise=o.dn_box_noise,
        dense_head=o.dense_weight > 0,
    )


def _register(name: str, defaults: dict[str, Any], **info: Any) -> Any:
    """``@register_model`` of a Deformable DETR builder: its options class and defaults."""
    return register_model(
        name, options=DeformableDETROptions, defaults=defaults, family="deformable-detr", **info
    )


@_register("deformable-detr-r50", {}, hf_id="SenseTime/deformable-detr")
def deformable_detr_r50(*, num_classes: int, **options: Any) -> DeformableDETR:
    """Deformable DETR, ResNet-50, 4 levels, 300 queries, 6+6 layers (options: :class:`DeformableDETROptions`)."""
    return build_deformable_detr(num_classes=num_classes, **options)


_REFINE = {"with_box_refine": True}


@_register("deformable-detr-r50-refine", _REFINE, hf_id="SenseTime/deformable-detr-with-box-refine")
def deformable_detr_r50_refine(*, num_classes: int, **options: Any) -> DeformableDETR:
    """Deformable DETR R50 with iterative bounding box refinement."""
    return build_deformable_detr(num_classes=num_classes, **{**_REFINE, **options})


_TWO_STAGE = {"with_box_refine": True, "two_stage": True}


@_register(
    "deformable-detr-r50-two-stage", _TWO_STAGE, hf_id="SenseTime/deformable-detr-with-box-refine-two-stage"
)
def deformable_detr_r50_two_stage(*, num_classes: int, **options: Any) -> DeformableDETR:
    """Deformable DETR R50 with box refinement and two-stage proposals (the paper's best variant)."""
    return build_deformable_detr(num_classes=num_classes, **{**_TWO_STAGE, **options})


#: Options of the tiny test/CPU model.
TINY_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18",
    "d_model": 32,
    "num_heads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "dim_feedforward": 64,
    "enc_n_points": 2,
    "dec_n_points": 2,
    "num_queries": 20,
    # 4 channels per GroupNorm group: with 32 groups of 1 channel, the 1x1 levels of small inputs
    # (<= 64 px) would normalise to a constant, and torch refuses them at batch size 1.
    "norm_groups": 8,
}


@_register("deformable-detr-tiny", TINY_DEFAULTS)
def deformable_detr_tiny(*, num_classes: int, **options: Any) -> DeformableDETR:
    """Tiny Deformable DETR for tests and CPU: ResNet-18, d_model 32, 1+2 layers, 20 queries, 2 points,
    8 GroupNorm groups (works on inputs from 32 px at batch size 1)."""
    return build_deformable_detr(num_classes=num_classes, **{**TINY_DEFAULTS, **options})
