"""torchvision Faster R-CNN baselines behind the :class:`~detrkit.models.base.Detector` interface.

Registered names: ``fasterrcnn-r50-fpn`` (ResNet-50 + FPN), ``fasterrcnn-vgg16`` and
``fasterrcnn-vgg19`` (VGG ``features`` as a single stride-16 feature map, AnchorGenerator +
RoIAlign). Random weights by
default (``weights=None``, no download).

Conversions done here: padded ``images`` + ``pixel_mask`` -> list of unpadded images (one host sync
to read their sizes); targets cxcywh normalised -> xyxy pixels, labels ``+1`` (torchvision
reserves 0 for the background). torchvision's transform neither resizes nor re-normalises (the
images are already normalised by our data pipeline), so its outputs are in the input pixel frame.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from detrkit.boxes import box_cxcywh_to_xyxy
from detrkit.models.backbone import load_imagenet_weights
from detrkit.models.base import Detector, check_inputs
from detrkit.models.options import FasterRCNNOptions, FasterRCNNVGGOptions
from detrkit.models.registry import register_model

__all__ = [
    "FasterRCNNDetector",
    "build_fasterrcnn_r50_fpn",
    "build_fasterrcnn_vgg16",
    "build_fasterrcnn_vgg19",
    "pixel_targets",
    "unpadded_sizes",
]


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's batching transform without resizing (inputs are already at the model size)."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        return image, target


class FasterRCNNDetector(Detector):
    """Wraps a torchvision :class:`FasterRCNN` built for ``num_classes + 1`` classes.

    Outputs of :meth:`forward`: ``{"detections": list of B dicts (boxes xyxy pixels of the
    unpadded input, scores, labels contiguous), "image_sizes_hw": int64[B, 2], "aux_outputs": []}``
    whenever the model is in eval mode or no targets are given; with targets also ``"loss"`` and
    torchvision's detached components (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
    ``loss_rpn_box_reg``). In training mode with targets only the losses are computed (as
    torchvision does), so call :meth:`postprocess` on eval-mode outputs.
    """

    def __init__(self, net: FasterRCNN, *, num_classes: int, model_name: str) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.model_name = model_name

    def _heads(self, images: ImageList, features: dict[str, Tensor], targets: Any, *, losses: bool):
        heads = (self.net.rpn, self.net.roi_heads)
        previous = [h.training for h in heads]
        for h in heads:
            h.train(losses)
        try:
            proposals, rpn_losses = self.net.rpn(images, features, targets if losses else None)
            dets, roi_losses = self.net.roi_heads(
                features, proposals, images.image_sizes, targets if losses else None
            )
        finally:
            for h, mode in zip(heads, previous, strict=True):
                h.train(mode)
        return dets, {**rpn_losses, **roi_losses}

    def forward(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        """See :meth:`Detector.forward`.

        Args:
            images: ``float[B, 3, H, W]`` normalised, zero-padded.
            pixel_mask: ``bool[B, H, W]``, True on real pixels (each image's real region is its
                top-left ``h x w`` block).
            targets: optional ``B`` dicts, ``"boxes"`` ``[N, 4]`` cxcywh normalised, ``"labels"``.
        """
        check_inputs(images, pixel_mask, targets)
        sizes, sizes_list = unpadded_sizes(pixel_mask)
        image_list = [img[:, :h, :w] for img, (h, w) in zip(images, sizes_list, strict=True)]
        tv_targets = (
            None
            if targets is None
            else pixel_targets(targets, sizes_list, device=images.device, label_offset=1)
        )
        batched, tv_targets = self.net.transform(image_list, tv_targets)
        features = self.net.backbone(batched.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        out: dict[str, Any] = {"image_sizes_hw": sizes, "aux_outputs": []}
        if not self.training or targets is None:
            dets, _ = self._heads(batched, features, None, losses=False)
            out["detections"] = [
                {"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in dets
            ]
        if targets is not None:
            _, losses = self._heads(batched, features, tv_targets, losses=True)
            out["loss"] = torch.stack(list(losses.values())).sum()
            out.update({k: v.detach() for k, v in losses.items()})
        return out

    def postprocess(self, outputs: dict[str, Any], orig_sizes_hw: Tensor) -> list[dict[str, Tensor]]:
        """Rescale detections from the input frame to the original images (see :class:`Detector`)."""
        if "detections" not in outputs:
            raise ValueError(
                "these outputs hold losses only (training mode with targets); call model.eval() and run "
                "forward again, or forward without targets"
            )
        src = outputs["image_sizes_hw"].float()
        dst = torch.as_tensor(orig_sizes_hw, device=src.device).float()
        if dst.shape != src.shape:
            raise ValueError(f"orig_sizes_hw must have shape {list(src.shape)}, got {list(dst.shape)}")
        ratio = dst / src
        results = []
        for d, (ry, rx), (h, w) in zip(outputs["detections"], ratio, dst, strict=True):
            scale = torch.stack((rx, ry, rx, ry))
            boxes = d["boxes"].float() * scale
            bound = torch.stack((w, h, w, h))
            boxes = torch.minimum(boxes.clamp(min=0), bound)
            results.append({"boxes": boxes, "scores": d["scores"], "labels": d["labels"]})
        return results


def unpadded_sizes(pixel_mask: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
    """``pixel_mask bool[B, H, W]`` (each image's real region its top-left block) ->
    ``(int64[B, 2], [(h, w), ...])`` unpadded sizes; the list costs one host sync (torchvision
    needs Python ints)."""
    sizes = torch.stack((pixel_mask.any(dim=2).sum(dim=1), pixel_mask.any(dim=1).sum(dim=1)), dim=1)
    return sizes, [(int(h), int(w)) for h, w in sizes.tolist()]


def pixel_targets(
    targets: list[dict[str, Tensor]],
    sizes_hw: list[tuple[int, int]],
    *,
    device: torch.device,
    label_offset: int = 0,
) -> list[dict[str, Tensor]]:
    """Our targets (cxcywh normalised) -> torchvision's on ``device``: ``"boxes"`` float32 xyxy
    pixels of the unpadded image ``(h, w)``, ``"labels"`` + ``label_offset`` (1: torchvision's
    background 0)."""
    out = []
    for t, (h, w) in zip(targets, sizes_hw, strict=True):
        boxes = t["boxes"].to(device, torch.float32)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        out.append(
            {"boxes": box_cxcywh_to_xyxy(boxes) * scale, "labels": t["labels"].to(device) + label_offset}
        )
    return out


def _transform(min_size: int, max_size: int) -> _NoResizeTransform:
    return _NoResizeTransform(min_size, max_size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])


def _check_common(num_classes: int, top_k: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


@register_model("fasterrcnn-r50-fpn", options=FasterRCNNOptions, family="faster-rcnn")
def build_fasterrcnn_r50_fpn(*, num_classes: int, **options: Any) -> FasterRCNNDetector:
    """Faster R-CNN ResNet-50-FPN (torchvision), random weights unless ``backbone_weights`` is given.

    Args:
        num_classes: dataset classes ``K`` (torchvision gets ``K + 1`` with the background).
        **options: the fields of :class:`~detrkit.models.options.FasterRCNNOptions`:
            ``backbone_weights`` (ImageNet ResNet-50 weights, ``.pth`` path or torchvision weight
            name; with them BatchNorm is frozen and ``trainable_backbone_layers`` defaults to 3),
            ``trainable_backbone_layers`` (ResNet stages trained, 0-5; default 5 without
            weights), ``top_k`` (detections kept per image), ``score_thresh`` (minimum score of
            a detection; 0: none dropped, as the contract asks).
    """
    o = FasterRCNNOptions(**options)
    backbone_weights, trainable_backbone_layers = o.backbone_weights, o.trainable_backbone_layers
    _check_common(num_classes, o.top_k)
    pretrained = backbone_weights is not None
    layers = trainable_backbone_layers if trainable_backbone_layers is not None else (3 if pretrained else 5)
    if not 0 <= layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {layers}")
    resnet = torchvision.models.resnet50(
        weights=None, norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    )
    if pretrained:
        load_imagenet_weights(resnet, "resnet50", backbone_weights)
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:layers] + (["bn1"] if layers == 5 else [])
    for name, p in resnet.named_parameters():
        p.requires_grad_(any(name.startswith(t) for t in trainable))
    backbone = BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=256,
        extra_blocks=LastLevelMaxPool(),
    )
    net = FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        box_detections_per_img=o.top_k,
        box_score_thresh=o.score_thresh,
    )
    net.transform = _transform(800, 1333)
    return FasterRCNNDetector(net, num_classes=num_classes, model_name="fasterrcnn-r50-fpn")


_VGG_CONFIGS = {"vgg16": "D", "vgg19": "E"}


def _build_fasterrcnn_vgg(name: str, *, num_classes: int, **options: Any) -> FasterRCNNDetector:
    """Faster R-CNN on the ``features`` of torchvision's VGG ``name`` (see :func:`build_fasterrcnn_vgg16`)."""
    o = FasterRCNNVGGOptions(**options)
    backbone_weights, anchor_sizes, aspect_ratios = o.backbone_weights, o.anchor_sizes, o.aspect_ratios
    _check_common(num_classes, o.top_k)
    if not anchor_sizes or not aspect_ratios:
        raise ValueError(
            "anchor_sizes and aspect_ratios must be non-empty tuples, e.g. (32, 64, 128) and (0.5, 1.0, 2.0)"
        )
    # the VGG convolutions only: building torchvision's vgg16()/vgg19() would also initialise its
    # 120M-parameter classifier, which we drop.
    vgg = nn.Module()
    vgg.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[_VGG_CONFIGS[name]])
    for m in vgg.features.modules():
        if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if backbone_weights is not None:
        load_imagenet_weights(vgg, name, backbone_weights)
        for p in vgg.features[:10].parameters():  # conv1_1..conv2_2 (the same layers in VGG16 and 19)
            p.requires_grad_(False)
    features = vgg.features[:-1]  # drop the last max-pool: stride 16
    features.out_channels = 512
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    net = FasterRCNN(
        features,
        num_classes=num_classes + 1,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_detections_per_img=o.top_k,
        box_score_thresh=o.score_thresh,
    )
    net.transform = _transform(600, 1000)
    return FasterRCNNDetector(net, num_classes=num_classes, model_name=f"fasterrcnn-{name}")


@register_model("fasterrcnn-vgg16", options=FasterRCNNVGGOptions, family="faster-rcnn")
def build_fasterrcnn_vgg16(*, num_classes: int, **options: Any) -> FasterRCNNDetector:
    """Faster R-CNN with VGG16 features (stride 16, 512 channels; Ren et al., 2015), one feature map.

    Args:
        num_classes: dataset classes ``K``.
        **options: the fields of :class:`~detrkit.models.options.FasterRCNNVGGOptions`:
            ``backbone_weights`` (ImageNet VGG16 weights, ``.pth`` path or torchvision weight
            name; with them the first 4 convolutions stay frozen, as in the paper),
            ``anchor_sizes`` (in pixels of the input image), ``aspect_ratios`` (height / width),
            ``top_k`` (detections kept per image), ``score_thresh`` (minimum score of a detection).
    """
    return _build_fasterrcnn_vgg("vgg16", num_classes=num_classes, **options)


@register_model("fasterrcnn-vgg19", options=FasterRCNNVGGOptions, family="faster-rcnn")
def build_fasterrcnn_vgg19(*, num_classes: int, **options: Any) -> FasterRCNNDetector:
    """Faster R-CNN with VGG19 features (16 convolutions, stride 16, 512 channels), one feature map.

    The options of :func:`build_fasterrcnn_vgg16`; ``backbone_weights`` are ImageNet VGG19 weights.
    """
    return _build_fasterrcnn_vgg("vgg19", num_classes=num_classes, **options)
