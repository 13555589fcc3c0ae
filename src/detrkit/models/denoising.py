"""Contrastive denoising queries (DN-DETR, Li et al. 2022; DINO, Zhang et al. 2023), training only.

Besides its matched queries, the decoder gets ``G`` groups of noised copies of the ground truth: a
*positive* half (box moved by less than ``box_noise`` of its size, label flipped with probability
``label_noise / 2``) that must reconstruct the true box and class, and a *negative* half (moved by
``box_noise`` to ``2 * box_noise`` of its size) that must predict "no object". These queries need no
Hungarian matching: query ``g * 2N + i`` (positive) belongs to target ``i`` of its image. That
gives every object ``G`` extra, stable positives per decoder layer, and teaches the decoder to
classify what lies at a box and to reject near misses, which is what DETR learns slowly.

An attention mask keeps the groups apart: matched queries see neither group, each group sees itself
and the matched queries. Inference does not build any of this.

Shapes: ``B`` images, ``N = max_i N_i`` targets of the fullest image (the other images' missing
slots are padding: background queries at the whole image), ``G`` groups, ``Dn = 2 G N`` queries,
``Q`` matched queries, ``D`` the model width, ``K`` classes. Boxes ``cxcywh`` normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detrkit.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

__all__ = ["DenoisingQueries", "denoising_indices", "make_denoising_queries"]


@dataclass
class DenoisingQueries:
    """What the decoder needs for the denoising part, and how to score it.

    Attributes:
        labels: ``int64[B, Dn]`` noised labels (content queries are their embeddings).
        box_logits: ``float32[B, Dn, 4]`` inverse sigmoid of the noised boxes (reference boxes).
        attn_mask: ``bool[Dn + Q, Dn + Q]`` for the decoder's query self-attention over
            ``[denoising; matched]``: True where a query may attend.
        groups: ``G``.
        slots: ``N`` (queries per half group).
    """

    labels: Tensor
    box_logits: Tensor
    attn_mask: Tensor
    groups: int
    slots: int

    @property
    def num_queries(self) -> int:
        """``Dn = 2 G N``."""
        return 2 * self.groups * self.slots


def _attention_mask(groups: int, slots: int, num_queries: int, device: torch.device) -> Tensor:
    """``bool[Dn + Q, Dn + Q]``: groups see themselves and the matched queries; matched see matched."""
    dn = 2 * groups * slots
    group_of = torch.arange(dn + num_queries, device=device) // (2 * slots)  # matched: >= groups
    allowed = group_of[:, None] == group_of[None, :]
    allowed[:dn, dn:] = True
    return allowed


def make_denoising_queries(
    targets: list[dict[str, Tensor]],
    *,
    num_classes: int,
    num_queries: int,
    num_denoising: int,
    label_noise: float = 0.5,
    box_noise: float = 1.0,
) -> DenoisingQueries | None:
    """Noised positive and negative copies of the targets (DINO's contrastive denoising).

    Args:
        targets: ``B`` dicts with ``"labels"`` ``int64[N_i]`` in ``0..K-1`` and ``"boxes"``
            ``[N_i, 4]`` cxcywh normalised, on the model's device.
        num_classes: ``K``.
        num_queries: ``Q``, matched queries decoded with them (for the attention mask).
        num_denoising: budget of denoising queries: ``G = max(1, num_denoising // (2 N))`` groups
            (DINO: 100).
        label_noise: a positive's label is replaced by a uniformly drawn one with probability
            ``label_noise / 2`` (DINO: 0.5); negatives keep the true label.
        box_noise: ``lambda``: each box edge moves by ``u * lambda`` times half the box size, with
            ``u`` uniform in ``[0, 1)`` for positives and ``[1, 2)`` for negatives, random sign
            (DINO: 1.0).
    Returns:
        :class:`DenoisingQueries`, or ``None`` when no image of the batch has a target. Random draws
        come from the global torch generator (the engine checkpoints its state).
    """
    sizes = [int(t["labels"].shape[0]) for t in targets]
    slots = max(sizes, default=0)
    if slots == 0 or num_denoising <= 0:
        return None
    groups = max(1, num_denoising // (2 * slots))
    b = len(targets)
    device = targets[0]["boxes"].device
    labels = torch.zeros((b, slots), dtype=torch.int64, device=device)
    boxes = torch.tensor([0.5, 0.5, 1.0, 1.0], device=device).repeat(b, slots, 1)  # padding: whole image
    for i, t in enumerate(targets):
        labels[i, : sizes[i]] = t["labels"]
        boxes[i, : sizes[i]] = t["boxes"].float()
    # [B, G, 2 (positive, negative), N]
    labels = labels[:, None, None].expand(b, groups, 2, slots).clone()
    boxes = boxes[:, None, None].expand(b, groups, 2, slots, 4)
    flip = torch.rand(labels.shape, device=device) < label_noise * 0.5
    flip[:, :, 1] = False
    labels = torch.where(flip, torch.randint_like(labels, num_classes), labels)

    xyxy = box_cxcywh_to_xyxy(boxes)
    half_wh = boxes[..., 2:].repeat(1, 1, 1, 1, 2) / 2  # (w/2, h/2, w/2, h/2)
    magnitude = torch.rand(xyxy.shape, device=device)
    magnitude[:, :, 1] += 1.0
    sign = torch.randint_like(xyxy, 2) * 2 - 1
    xyxy = (xyxy + sign * magnitude * half_wh * box_noise).clamp(0.0, 1.0)
    noised = box_xyxy_to_cxcywh(xyxy).clamp(1e-4, 1 - 1e-4)
    box_logits = torch.log(noised / (1 - noised))
    dn = 2 * groups * slots
    return DenoisingQueries(
        labels=labels.reshape(b, dn),
        box_logits=box_logits.reshape(b, dn, 4),
        attn_mask=_attention_mask(groups, slots, num_queries, device),
        groups=groups,
        slots=slots,
    )


def denoising_indices(sizes: list[int], groups: int, slots: int) -> list[tuple[Tensor, Tensor]]:
    """The fixed assignment of positive denoising queries, in the matcher's format.

    Args:
        sizes: ``N_i`` targets per image.
        groups, slots: ``G`` and ``N`` of the :class:`DenoisingQueries`.
    Returns:
        ``B`` pairs ``(query int64[G N_i], target int64[G N_i])`` on the CPU: query ``g 2N + j``
        reconstructs target ``j``.
    """
    out = []
    for n in sizes:
        target = torch.arange(n).repeat(groups)
        query = (torch.arange(groups)[:, None] * 2 * slots + torch.arange(n)[None]).flatten()
        out.append((query, target))
    return out
