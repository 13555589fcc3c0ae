"""Co-DETR's two-stage auxiliary head: Faster R-CNN (RPN + RoI head) from torchvision's parts.

On the encoder's feature maps: torchvision's :class:`RegionProposalNetwork` (an :class:`RPNHead`,
anchors of 3 scales ``4 * stride * 2**(i/3)`` x 3 ratios per level at fixed strides, IoU 0.7 / 0.3,
256 sampled anchors, NMS 0.7) proposes boxes; its :class:`RoIHeads` sample 512 proposals per image
(a quarter positive, IoU >= 0.5, the ground-truth boxes added), pool them with
:class:`MultiScaleRoIAlign` over the first ``roi_levels`` maps, and classify / refine them with a
two-layer MLP (:class:`TwoMLPHead`, :class:`FastRCNNPredictor`; torchvision's ``fastrcnn_loss``:
cross-entropy + smooth L1). The sampled positive proposals and their assigned boxes become Co-DETR's
positive queries.

Differences from Co-DETR's mmdetection heads: torchvision's losses (the RPN's smooth L1 and
binary cross-entropy, the RoI head's smooth L1 on deltas, where Co-DETR uses L1 and GIoU on decoded
boxes) and torchvision's level mapping of RoIs (equal to mmdetection's ``finest_scale=112`` one).

Boxes are xyxy in pixels of the unpadded input; torchvision's class 0 is the background, so the
targets given here carry labels ``1..K``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detrkit.models.co_detr.neck import FixedStrideAnchors

__all__ = ["RCNNHead"]


class RCNNHead(nn.Module):
    """RPN + RoI head (see the module docstring).

    Args:
        channels: channels of the feature maps.
        num_classes: ``K`` (the RoI classifier has ``K + 1`` outputs, 0 the background).
        strides: the maps' strides in pixels, finest first (one RPN level each).
        roi_levels: the first maps RoIAlign pools from (Co-DETR: the 4 encoder levels).
        rpn_batch: anchors sampled per image for the RPN loss (256).
        rpn_pre_nms: proposals kept per level before NMS in training (Co-DETR: 4000).
        rpn_post_nms: proposals kept per image after NMS (1000).
        roi_batch: proposals sampled per image for the RoI loss (512, a quarter positive).
        representation: hidden size of the RoI MLP (1024).
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        strides: Sequence[int],
        roi_levels: int = 4,
        rpn_batch: int = 256,
        rpn_pre_nms: int = 4000,
        rpn_post_nms: int = 1000,
        roi_batch: int = 512,
        representation: int = 1024,
    ) -> None:
        super().__init__()
        if not 1 <= roi_levels <= len(strides):
            raise ValueError(f"roi_levels must be in 1..{len(strides)}, got {roi_levels}")
        sizes = [tuple(4.0 * s * 2 ** (i / 3) for i in range(3)) for s in strides]
        anchors = FixedStrideAnchors(sizes, [(0.5, 1.0, 2.0)] * len(strides), strides)
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=rpn_batch,
            positive_fraction=0.5,
            pre_nms_top_n={"training": rpn_pre_nms, "testing": 1000},
            post_nms_top_n={"training": rpn_post_nms, "testing": rpn_post_nms},
            nms_thresh=0.7,
        )
        self.roi_names = [str(i) for i in range(roi_levels)]
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(self.roi_names, output_size=7, sampling_ratio=2),
            TwoMLPHead(channels * 7 * 7, representation),
            FastRCNNPredictor(representation, num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=roi_batch,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=100,
        )

    def forward(
        self, maps: list[Tensor], image_list: ImageList, targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, tuple[float, Tensor]], list[tuple[Tensor, Tensor]]]:
        """Losses and positives of a batch (training only).

        Args:
            maps: ``L`` maps ``[B, C, H_l, W_l]``.
            image_list: the padded batch and its unpadded ``image_sizes``.
            targets: ``B`` dicts with ``"boxes"`` ``[N_i, 4]`` xyxy pixels and ``"labels"``
                ``int64[N_i]`` in ``1..K`` (torchvision's convention).
        Returns:
            ``({"loss_rpn_cls" | "loss_rpn_box" | "loss_roi_cls" | "loss_roi_box": (1.0, loss)},
            positives)`` with one ``(proposals [P_i, 4] xyxy pixels, gt index int64[P_i])`` per image.
        """
        features = {str(i): f for i, f in enumerate(maps)}
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        proposals, matched, labels, regression = self.roi_heads.select_training_samples(proposals, targets)
        pooled = self.roi_heads.box_roi_pool(
            {k: features[k] for k in self.roi_names}, proposals, image_list.image_sizes
        )
        class_logits, box_regression = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression)
        losses = {
            "loss_rpn_cls": (1.0, rpn_losses["loss_objectness"]),
            "loss_rpn_box": (1.0, rpn_losses["loss_rpn_box_reg"]),
            "loss_roi_cls": (1.0, loss_cls),
            "loss_roi_box": (1.0, loss_box),
        }
        positives = [(p[lab > 0], m[lab > 0]) for p, m, lab in zip(proposals, matched, labels, strict=True)]
        return losses, positives
