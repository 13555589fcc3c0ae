"""The :class:`Detector` interface every model in the registry implements, and shared postprocessing.

Formats used throughout ``detrkit.models``:

- ``images``: ``float[B, 3, H, W]``, normalised with the ImageNet mean/std, zero-padded bottom/right.
- ``pixel_mask``: ``bool[B, H, W]``, **True on real pixels**, False on padding (Hugging Face's
  ``pixel_mask``; the opposite of facebookresearch/detr's ``NestedTensor.mask``).
- ``targets``: one dict per image with ``"boxes"``: ``float[N, 4]`` cxcywh normalised to [0, 1] by
  the *unpadded* image size and ``"labels"``: ``int64[N]`` contiguous in ``0..num_classes-1``.
  Other keys are ignored.
- ``pred_boxes``: ``float[B, Q, 4]`` cxcywh normalised like the targets.
- ``pred_logits``: ``float[B, Q, num_classes + 1]`` for softmax (cross-entropy) models, where the
  last class is "no object", or ``float[B, Q, num_classes]`` for sigmoid (focal) models.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from detrkit.boxes import box_cxcywh_to_xyxy

__all__ = [
    "Detector",
    "check_inputs",
    "postprocess_sigmoid_topk",
    "postprocess_softmax",
    "scale_boxes_to_pixels",
]


class Detector(nn.Module, ABC):
    """Base class of every detector built by :func:`detrkit.models.registry.build_model`.

    Subclasses set ``num_classes`` (number of real classes ``K``; labels are ``0..K-1``) and
    ``model_name`` (the registry name) and implement :meth:`forward` and :meth:`postprocess`.
    """

    num_classes: int
    model_name: str
    #: state-dict key prefixes of parts used only in training (e.g. Co-DETR's auxiliary heads):
    #: checkpoints of the plain architecture load without them, which keep their initialisation
    training_only_prefixes: tuple[str, ...] = ()

    @abstractmethod
    def forward(
        self, images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        """Run the detector.

        Args:
            images: ``float[B, 3, H, W]`` normalised, zero-padded images.
            pixel_mask: ``bool[B, H, W]``, True on real pixels.
            targets: optional list of ``B`` dicts (``"boxes"`` ``[N_i, 4]`` cxcywh normalised,
                ``"labels"`` ``int64[N_i]``). When given, losses are added to the output.
        Returns:
            ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4] cxcywh normalised,
            "aux_outputs": list of dicts with the same two keys (one per intermediate decoder
            layer)}``; with targets also ``"loss"`` (differentiable scalar) and detached scalar
            components (``"loss_ce"``, ``"loss_bbox"``, ``"loss_giou"``, ``"loss_ce_0"``, ...).
        """

    @abstractmethod
    def postprocess(self, outputs: dict[str, Any], orig_sizes_hw: Tensor) -> list[dict[str, Tensor]]:
        """Turn raw outputs into detections in pixels of the original images.

        Args:
            outputs: the dict returned by :meth:`forward`.
            orig_sizes_hw: ``int[B, 2]`` (height, width) of each original image.
        Returns:
            One dict per image: ``"boxes"`` ``float[N, 4]`` xyxy pixels, ``"scores"`` ``float[N]``
            sorted descending, ``"labels"`` ``int64[N]`` contiguous.
        """


def check_inputs(images: Tensor, pixel_mask: Tensor, targets: list[dict[str, Tensor]] | None) -> None:
    """Validate shapes and types of a batch (host-side metadata only: no device sync).

    Args:
        images: expected ``float[B, 3, H, W]``.
        pixel_mask: expected ``bool[B, H, W]`` with the same ``B, H, W``.
        targets: ``None`` or ``B`` dicts with ``"boxes"`` ``[N, 4]`` and ``"labels"`` ``[N]``.
    Raises:
        ValueError: naming the wrong input and how to fix it.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape [B, 3, H, W], got {list(images.shape)}; batch RGB images with "
            "detrkit.data.collate.collate_detection"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor normalised with ImageNet mean/std, got {images.dtype}; "
            "for a uint8 batch pass batch.normalized() (detrkit.data.collate.normalize_images)"
        )
    b, _, h, w = images.shape
    if pixel_mask.dtype != torch.bool or tuple(pixel_mask.shape) != (b, h, w):
        raise ValueError(
            f"pixel_mask must be bool[{b}, {h}, {w}] (True on real pixels), got {pixel_mask.dtype}"
            f"{list(pixel_mask.shape)}; use torch.ones({b}, {h}, {w}, dtype=torch.bool) for unpadded images"
        )
    if targets is None:
        return
    if len(targets) != b:
        raise ValueError(f"got {len(targets)} target dicts for a batch of {b} images; give one per image")
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(
                f"targets[{i}] needs 'boxes' ([N, 4] cxcywh normalised) and 'labels' (int64[N]); "
                f"got keys {sorted(t)}"
            )
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"targets[{i}]: boxes must be [N, 4] and labels [N], got {list(boxes.shape)} and "
                f"{list(labels.shape)}"
            )
        if labels.is_floating_point():
            raise ValueError(f"targets[{i}]['labels'] must be an integer tensor, got {labels.dtype}")


def _as_sizes(orig_sizes_hw: Tensor | list[tuple[int, int]], batch: int, device: torch.device) -> Tensor:
    sizes = torch.as_tensor(orig_sizes_hw, device=device)
    if sizes.shape != (batch, 2):
        raise ValueError(
            f"orig_sizes_hw must have shape [{batch}, 2] (height, width per image), got {list(sizes.shape)}"
        )
    return sizes


def scale_boxes_to_pixels(boxes_cxcywh: Tensor, sizes_hw: Tensor) -> Tensor:
    """Normalised cxcywh to pixel xyxy, clipped to the image.

    Args:
        boxes_cxcywh: ``float[B, N, 4]`` cxcywh normalised to [0, 1].
        sizes_hw: ``[B, 2]`` (height, width) in pixels.
    Returns:
        ``float32[B, N, 4]`` xyxy pixels within ``[0, W] x [0, H]``.
    """
    h, w = sizes_hw.float().unbind(-1)
    scale = torch.stack((w, h, w, h), dim=-1)[:, None, :]
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh.float()) * scale
    return torch.minimum(boxes.clamp(min=0), scale)


def postprocess_softmax(
    pred_logits: Tensor, pred_boxes: Tensor, orig_sizes_hw: Tensor, *, top_k: int | None = None
) -> list[dict[str, Tensor]]:
    """DETR postprocessing: softmax, drop the no-object class, best class per query, sort.

    Args:
        pred_logits: ``[B, Q, K + 1]``, last class = no object.
        pred_boxes: ``[B, Q, 4]`` cxcywh normalised.
        orig_sizes_hw: ``[B, 2]`` (height, width).
        top_k: keep the ``top_k`` best queries per image (``None``: all ``Q``).
    Returns:
        ``B`` dicts of ``boxes [N, 4]`` xyxy pixels, ``scores [N]`` (descending), ``labels [N]``.
    """
    b, q, _ = pred_logits.shape
    sizes = _as_sizes(orig_sizes_hw, b, pred_logits.device)
    prob = pred_logits.float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    k = q if top_k is None else min(top_k, q)
    scores, order = scores.topk(k, dim=1)
    labels = labels.gather(1, order)
    boxes = scale_boxes_to_pixels(pred_boxes.gather(1, order[..., None].expand(-1, -1, 4)), sizes)
    return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(b)]


def postprocess_sigmoid_topk(
    pred_logits: Tensor, pred_boxes: Tensor, orig_sizes_hw: Tensor, *, top_k: int = 100
) -> list[dict[str, Tensor]]:
    """Focal-loss model postprocessing (Deformable DETR): sigmoid, top-k over queries x classes.

    A query may appear several times with different labels.

    Args:
        pred_logits: ``[B, Q, K]`` (no no-object class).
        pred_boxes: ``[B, Q, 4]`` cxcywh normalised.
        orig_sizes_hw: ``[B, 2]`` (height, width).
        top_k: detections kept per image (at most ``Q * K``).
    Returns:
        ``B`` dicts of ``boxes [N, 4]`` xyxy pixels, ``scores [N]`` (descending), ``labels [N]``.
    """
    b, q, c = pred_logits.shape
    sizes = _as_sizes(orig_sizes_hw, b, pred_logits.device)
    prob = pred_logits.float().sigmoid().flatten(1)
    scores, flat_idx = prob.topk(min(top_k, q * c), dim=1)
    query_idx = torch.div(flat_idx, c, rounding_mode="floor")
    labels = flat_idx % c
    boxes = scale_boxes_to_pixels(pred_boxes.gather(1, query_idx[..., None].expand(-1, -1, 4)), sizes)
    return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(b)]
