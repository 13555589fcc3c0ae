"""Co-Deformable-DETR (Zong et al., ICCV 2023, "DETRs with Collaborative Hybrid Assignments Training").

A Deformable DETR trained with two extra kinds of supervision, both for training only:

1. **Collaborative auxiliary heads** with one-to-many assignments on the encoder output: the
   :class:`~detrkit.models.co_detr.neck.EncoderNeck` maps the memory back to feature maps, an
   :class:`~detrkit.models.co_detr.atss.ATSSHead` and an :class:`~detrkit.models.co_detr.rcnn.RCNNHead`
   (Faster R-CNN) train on them, each loss scaled by its head weight (the paper's
   ``lambda_2 * num_decoder_layers``: 12 for 6 layers).
2. **Customized positive queries**: each head's positives become a group of extra decoder queries
   with their assignments (:mod:`detrkit.models.co_detr.queries`), weight ``lambda_1`` (1).

Everything auxiliary lives under ``co_heads.`` and runs only in training with targets: in eval mode
the model *is* the Deformable DETR (same outputs), :meth:`CoDeformableDETR.inference_model` returns
it with exactly Deformable DETR's state-dict keys, and Deformable DETR checkpoints (ours or Hugging
Face's) load with the auxiliary parts left at their fresh initialisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from detrkit.models.base import check_inputs
from detrkit.models.baselines import pixel_targets, unpadded_sizes
from detrkit.models.co_detr.atss import ATSSHead
from detrkit.models.co_detr.neck import EncoderNeck
from detrkit.models.co_detr.queries import PositiveQueries, pack_positive_queries
from detrkit.models.co_detr.rcnn import RCNNHead
from detrkit.models.criterion import SetCriterion, num_boxes_across_processes, sigmoid_focal_loss
from detrkit.models.deformable_detr import TINY_DEFAULTS, DeformableDETR, build_deformable_detr
from detrkit.models.deformable_transformer import TransformerOutput, inverse_sigmoid
from detrkit.models.options import CoDeformableDETROptions, DeformableDETROptions
from detrkit.models.registry import register_model

__all__ = ["CoDeformableDETR", "CoHeads", "build_co_deformable_detr"]


class CoHeads(nn.Module):
    """The training-only parts: neck, auxiliary heads and the positive queries' embeddings.

    Args:
        d_model: ``D``.
        num_classes: ``K``.
        strides: strides of the Deformable DETR levels (the neck adds ``extra_levels`` coarser ones).
        extra_levels, norm_groups: see :class:`EncoderNeck`.
        atss: :class:`ATSSHead` options, or ``None`` for no one-stage head.
        rcnn: :class:`RCNNHead` options, or ``None`` for no two-stage head.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_classes: int,
        strides: list[int],
        extra_levels: int = 1,
        norm_groups: int = 32,
        atss: dict[str, Any] | None = None,
        rcnn: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if atss is None and rcnn is None:
            raise ValueError("Co-DETR needs at least one auxiliary head (atss or rcnn)")
        self.neck = EncoderNeck(d_model=d_model, extra_levels=extra_levels, norm_groups=norm_groups)
        all_strides = list(strides) + [strides[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.heads = nn.ModuleDict()
        if rcnn is not None:
            self.heads["rcnn"] = RCNNHead(
                channels=d_model,
                num_classes=num_classes,
                strides=all_strides,
                roi_levels=len(strides),
                **rcnn,
            )
        if atss is not None:
            self.heads["atss"] = ATSSHead(
                channels=d_model,
                num_classes=num_classes,
                strides=all_strides,
                norm_groups=norm_groups,
                **atss,
            )
        self.query_embed = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Linear(2 * d_model, 2 * d_model), nn.LayerNorm(2 * d_model))
                for name in self.heads
            }
        )
        for proj in self.query_embed.values():
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)


class CoDeformableDETR(DeformableDETR):
    """Deformable DETR + Co-DETR's training-only auxiliary heads and positive queries.

    Build it with :func:`build_co_deformable_detr` (or :meth:`from_deformable`). Outputs and
    postprocessing are Deformable DETR's; in training with targets the loss adds, per head ``h``,
    ``head_weights[h] *`` its losses (``loss_atss_*``, ``loss_rpn_*``, ``loss_roi_*``) and
    ``pos_query_weight *`` DETR's losses of its positive queries (``loss_ce_q_<h>``,
    ``loss_bbox_q_<h>``, ``loss_giou_q_<h>``, and ``_<i>`` for the intermediate decoder layers).
    """

    #: state-dict prefixes of the training-only parts (fresh when a Deformable DETR checkpoint loads)
    training_only_prefixes = ("co_heads.",)
    co_heads: CoHeads

    @classmethod
    def from_deformable(
        cls,
        base: DeformableDETR,
        *,
        co_heads: CoHeads,
        head_weights: dict[str, float],
        pos_query_weight: float = 1.0,
        max_pos_queries: int = 300,
    ) -> CoDeformableDETR:
        """Adopt the modules of ``base`` (shared, not copied) and add ``co_heads``."""
        if base.criterion is None:
            raise ValueError("Co-DETR trains through the criterion; build the Deformable DETR with one")
        if sorted(head_weights) != sorted(co_heads.heads):
            raise ValueError(
                f"head_weights must name the heads {sorted(co_heads.heads)}, got {sorted(head_weights)}"
            )
        if max_pos_queries < 1 or pos_query_weight < 0 or min(head_weights.values()) < 0:
            raise ValueError("max_pos_queries must be >= 1 and the loss weights >= 0")
        model = _adopt(cls, base)
        model.co_heads = co_heads
        model.head_weights = dict(head_weights)
        model.pos_query_weight = pos_query_weight
        model.max_pos_queries = max_pos_queries
        return model

    def inference_model(self) -> DeformableDETR:
        """The Deformable DETR inside (its modules shared): Deformable DETR's state-dict keys,
        parameters and outputs, for export and deployment."""
        return _adopt(DeformableDETR, self, drop=("co_heads",))

    def forward(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        """:meth:`DeformableDETR.forward`; in training with targets also the Co-DETR losses."""
        check_inputs(images, pixel_mask, targets)
        if targets is not None and self.criterion is None:
            raise ValueError("this model was built without a criterion; pass targets=None")
        outputs, out = self.forward_outputs(images, pixel_mask, targets)
        if targets is None:
            return outputs
        outputs.update(self.criterion(outputs, targets))
        if self.training:
            extra = self.co_losses(images, pixel_mask, targets, out)
            outputs["loss"] = outputs["loss"] + torch.stack([w * v for w, v in extra.values()]).sum()
            outputs.update({k: v.detach() for k, (_, v) in extra.items()})
        return outputs

    def co_losses(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]], out: TransformerOutput
    ) -> dict[str, tuple[float, Tensor]]:
        """The auxiliary heads' and positive queries' losses: ``{name: (weight, loss)}``."""
        _, sizes = unpadded_sizes(pixel_mask)
        image_list = ImageList(images, sizes)
        maps = self.co_heads.neck(out.memory, out.levels)
        losses: dict[str, tuple[float, Tensor]] = {}
        positives = []
        for name, head in self.co_heads.heads.items():
            offset = 1 if name == "rcnn" else 0  # torchvision's background is class 0
            head_losses, head_positives = head(
                maps, image_list, pixel_targets(targets, sizes, device=images.device, label_offset=offset)
            )
            losses.update({k: (self.head_weights[name] * w, v) for k, (w, v) in head_losses.items()})
            positives.append(head_positives)
        queries = pack_positive_queries(
            positives, targets, sizes, num_classes=self.num_classes, max_queries=self.max_pos_queries
        )
        losses.update(self._positive_query_losses(queries, out))
        return losses

    def _positive_query_losses(
        self, q: PositiveQueries, out: TransformerOutput
    ) -> dict[str, tuple[float, Tensor]]:
        d_model = self.transformer.d_model
        box_logits = inverse_sigmoid(q.boxes)
        embeds, start = [], 0
        for proj, m in zip(self.co_heads.query_embed.values(), q.group_sizes, strict=True):
            embeds.append(
                proj(self.transformer.proposal_pos_embed(box_logits[:, start : start + m], out.memory.dtype))
            )
            start += m
        query_pos, tgt = torch.cat(embeds, 1).split(d_model, dim=-1)
        num_layers = len(self.transformer.decoder_layers)
        hidden, references = self.transformer.decode(
            tgt,
            query_pos,
            q.boxes,
            out.memory,
            out.levels,
            self.bbox_embed[:num_layers] if self.with_box_refine else None,
            q.attn_mask,
        )
        heads = self._heads(TransformerOutput(hidden, q.boxes, references))
        layers = [("", heads)] + [(f"_{i}", aux) for i, aux in enumerate(heads["aux_outputs"])]
        criterion: SetCriterion = self.criterion
        losses: dict[str, tuple[float, Tensor]] = {}
        start = 0
        for name, m in zip(self.co_heads.heads, q.group_sizes, strict=True):
            sl = slice(start, start + m)
            start += m
            valid = q.valid[:, sl]
            num = num_boxes_across_processes(int(valid.sum()), valid.device)
            onehot = torch.zeros((*valid.shape, self.num_classes + 1), device=valid.device)
            onehot.scatter_(2, q.labels[:, sl, None], 1.0)
            for suffix, layer in layers:
                loss_ce = sigmoid_focal_loss(
                    layer["pred_logits"][:, sl].float(),
                    onehot[..., :-1],
                    num,
                    alpha=criterion.focal_alpha,
                    gamma=criterion.focal_gamma,
                    mask=valid[..., None],
                )
                loss_bbox, loss_giou = criterion.loss_boxes(
                    layer["pred_boxes"][:, sl][valid], q.target_boxes[:, sl][valid], num
                )
                for key, value in (("loss_ce", loss_ce), ("loss_bbox", loss_bbox), ("loss_giou", loss_giou)):
                    losses[f"{key}_q_{name}{suffix}"] = (
                        criterion.weight_dict[key] * self.pos_query_weight,
                        value,
                    )
        return losses


def _adopt(cls: type[DeformableDETR], module: nn.Module, *, drop: tuple[str, ...] = ()) -> Any:
    """A ``cls`` instance holding ``module``'s attributes and submodules (not copies), minus ``drop``."""
    new = cls.__new__(cls)
    state = {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in module.__dict__.items()}
    state["_modules"] = {k: v for k, v in module._modules.items() if k not in drop}
    new.__dict__.update(state)
    return new


def build_co_deformable_detr(*, num_classes: int, **options: Any) -> CoDeformableDETR:
    """Build a Co-Deformable-DETR with random weights.

    Args:
        num_classes: ``K``.
        **options: the fields of :class:`~detrkit.models.options.CoDeformableDETROptions` (as
            Python values; :func:`~detrkit.models.registry.build_model` checks and converts them
            first): those of Deformable DETR (:func:`~detrkit.models.deformable_detr.build_deformable_detr`)
            and ``atss``, ``rcnn`` (which auxiliary heads; the paper: both), ``atss_weight``,
            ``rcnn_weight`` (each head's loss scale; ``None``: ``2 * num_decoder_layers``, the
            paper's ``lambda_2 = 2`` times the decoder depth, 12 for 6 layers),
            ``pos_query_weight`` (``lambda_1``, the weight of the positive queries' DETR losses,
            1), ``max_pos_queries`` (positive queries per head and image, 300),
            ``neck_extra_levels`` (coarser maps added by the neck; 1: strides up to 128 for 4
            levels), ``atss_topk``, ``atss_stacked_convs`` (ATSS candidates per level, 9, and
            tower depth, 1), ``rpn_batch``, ``rpn_pre_nms``, ``rpn_post_nms``, ``roi_batch``,
            ``roi_representation`` (see :class:`RCNNHead`).
    """
    o = CoDeformableDETROptions(**options)
    deformable = {f.name: getattr(o, f.name) for f in dataclasses.fields(DeformableDETROptions)}
    atss, rcnn = o.atss, o.rcnn
    base = build_deformable_detr(num_classes=num_classes, **deformable)
    n_levels = base.num_feature_levels
    strides = list(base.backbone.level_strides)
    while len(strides) < n_levels:
        strides.append(strides[-1] * 2)
    co_heads = CoHeads(
        d_model=base.transformer.d_model,
        num_classes=num_classes,
        strides=strides,
        extra_levels=o.neck_extra_levels,
        norm_groups=base.norm_groups,
        atss={"topk": o.atss_topk, "stacked_convs": o.atss_stacked_convs} if atss else None,
        rcnn={
            "rpn_batch": o.rpn_batch,
            "rpn_pre_nms": o.rpn_pre_nms,
            "rpn_post_nms": o.rpn_post_nms,
            "roi_batch": o.roi_batch,
            "representation": o.roi_representation,
        }
        if rcnn
        else None,
    )
    default = 2.0 * len(base.transformer.decoder_layers)
    weights = {
        "atss": default if o.atss_weight is None else o.atss_weight,
        "rcnn": default if o.rcnn_weight is None else o.rcnn_weight,
    }
    model = CoDeformableDETR.from_deformable(
        base,
        co_heads=co_heads,
        head_weights={k: weights[k] for k in co_heads.heads},
        pos_query_weight=o.pos_query_weight,
        max_pos_queries=o.max_pos_queries,
    )
    model.model_name = "co-deformable-detr"
    return model


#: The paper's Co-Deformable-DETR R50: two-stage with box refinement, 300 queries, 6+6 layers, FFN
#: 2048, no dropout (its config; its mixed query selection and look-forward-twice are not ported).
R50_DEFAULTS: dict[str, Any] = {
    "with_box_refine": True,
    "two_stage": True,
    "dim_feedforward": 2048,
    "dropout": 0.0,
}


def _register(name: str, defaults: dict[str, Any]) -> Any:
    """``@register_model`` of a Co-Deformable-DETR builder: its options class and defaults."""
    return register_model(
        name, options=CoDeformableDETROptions, defaults=defaults, family="co-deformable-detr"
    )


@_register("co-deformable-detr-r50", R50_DEFAULTS)
def co_deformable_detr_r50(*, num_classes: int, **options: Any) -> CoDeformableDETR:
    """Co-Deformable-DETR R50 (ATSS + Faster R-CNN auxiliary heads, positive queries), two-stage + refine."""
    return build_co_deformable_detr(num_classes=num_classes, **{**R50_DEFAULTS, **options})


#: The tiny test/CPU model: the tiny Deformable DETR with small auxiliary heads.
TINY_CO_DEFAULTS: dict[str, Any] = {
    **TINY_DEFAULTS,
    "rpn_batch": 64,
    "rpn_pre_nms": 200,
    "rpn_post_nms": 100,
    "roi_batch": 64,
    "roi_representation": 64,
    "max_pos_queries": 50,
}


@_register("co-deformable-detr-tiny", TINY_CO_DEFAULTS)
def co_deformable_detr_tiny(*, num_classes: int, **options: Any) -> CoDeformableDETR:
    """Tiny Co-Deformable-DETR for tests and CPU: the tiny Deformable DETR (learned queries) + small heads."""
    return build_co_deformable_detr(num_classes=num_classes, **{**TINY_CO_DEFAULTS, **options})
