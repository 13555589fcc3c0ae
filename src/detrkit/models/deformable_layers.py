"""The building blocks of Deformable DETR's transformer: flattened feature levels, encoder and
decoder layers, reference points and box refinement (after fundamentalvision/Deformable-DETR).

Shapes: ``B`` batch, ``L`` feature levels of sizes ``(H_l, W_l)``, ``S = sum_l H_l * W_l``, ``Q``
queries, ``D = d_model``. Masks are **True on real pixels** (Hugging Face's ``pixel_mask``
convention). Boxes are ``cxcywh`` normalised to the unpadded image; "logits" of boxes are their
inverse sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detrkit.models.ops import Dropout, MSDeformAttn, attention
from detrkit.models.ops.ms_deform_attn import offset_normalizer

__all__ = [
    "DeformableDecoderLayer",
    "DeformableEncoderLayer",
    "FlatLevels",
    "encoder_reference_points",
    "inverse_sigmoid",
    "refine_reference",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms to ``>= eps``; any shape."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _device_ints(values: Sequence[int], device: torch.device) -> Tensor:
    """``int64[len(values)]`` on ``device`` built by fill kernels: unlike ``torch.tensor(values,
    device=cuda)``, no blocking host-to-device copy (a host sync) in the forward pass. Under
    ``torch.jit.trace`` (ONNX export) sizes are 0-dim tensors: stacked as they are, they stay
    functions of the input shape instead of constants."""
    return torch.stack(
        [v if isinstance(v, Tensor) else torch.full((), v, dtype=torch.long, device=device) for v in values]
    )


@dataclass
class FlatLevels:
    """The feature levels flattened into one sequence of ``S`` positions, and their geometry.

    Attributes:
        shapes: ``int64[L, 2]`` ``(H_l, W_l)`` on the device (for kernels and offset scaling).
        shapes_list: the same as Python ints (for splitting without a host sync).
        start_index: ``int64[L]`` offset of each level in ``S``; ``start_index_list`` as ints.
        valid_mask: ``bool[B, S]``, True on real (unpadded) positions.
        valid_ratios: ``float32[B, L, 2]`` valid fraction ``(w, h)`` of each level.
        padding: ``bool[B, S, 1]``, True on padded positions (``~valid_mask``, computed once).
        normalizer: ``float32[1, 1, 1, L, 1, 2]`` ``(W_l, H_l)`` (offsets in pixels -> [0, 1]).
    """

    shapes: Tensor
    shapes_list: list[tuple[int, int]]
    start_index: Tensor
    start_index_list: list[int]
    valid_mask: Tensor
    valid_ratios: Tensor
    padding: Tensor | None = None
    normalizer: Tensor | None = None

    @classmethod
    def from_masks(cls, masks: Sequence[Tensor]) -> FlatLevels:
        """From ``L`` masks ``bool[B, H_l, W_l]`` (True on real pixels); no host sync."""
        # no int(): traced (ONNX export) sizes must stay symbolic; eager sizes are ints already
        shapes_list = [(m.shape[1], m.shape[2]) for m in masks]
        starts = [0]
        for h, w in shapes_list[:-1]:
            starts.append(starts[-1] + h * w)
        device = masks[0].device
        # float32 so that reference points stay precise when the model runs in bf16
        ratios = [
            torch.stack([m[:, 0, :].sum(1) / m.shape[2], m[:, :, 0].sum(1) / m.shape[1]], -1) for m in masks
        ]
        shapes = _device_ints([v for hw in shapes_list for v in hw], device).view(-1, 2)
        valid_mask = torch.cat([m.flatten(1) for m in masks], 1)
        return cls(
            shapes=shapes,
            shapes_list=shapes_list,
            start_index=_device_ints(starts, device),
            start_index_list=starts,
            valid_mask=valid_mask,
            valid_ratios=torch.stack(ratios, 1).float(),
            padding=~valid_mask[..., None],
            normalizer=offset_normalizer(shapes),
        )

    def attend(self, attn: MSDeformAttn, query: Tensor, reference_points: Tensor, value: Tensor) -> Tensor:
        """``attn(query [B, Q, D], reference_points [B, Q, L, 2 or 4], value [B, S, D]) -> [B, Q, D]``."""
        return attn(
            query,
            reference_points,
            value,
            self.shapes,
            self.shapes_list,
            self.start_index,
            self.valid_mask,
            value_padding=self.padding,
            normalizer=self.normalizer,
        )


def encoder_reference_points(levels: FlatLevels) -> Tensor:
    """Pixel centres of every level, normalised by the valid (unpadded) size, seen from every level.

    Returns:
        ``float32[B, S, L, 2]`` ``(x, y)`` in the padded maps' ``[0, 1]`` coordinates.
    """
    ratios = levels.valid_ratios
    points = []
    for level, (h, w) in enumerate(levels.shapes_list):
        ys, xs = torch.meshgrid(  # arange: linspace of a traced size exports wrong for 1-px levels
            torch.arange(0.5, h, dtype=ratios.dtype, device=ratios.device),
            torch.arange(0.5, w, dtype=ratios.dtype, device=ratios.device),
            indexing="ij",
        )
        ys = ys.reshape(-1)[None] / (ratios[:, None, level, 1] * h)
        xs = xs.reshape(-1)[None] / (ratios[:, None, level, 0] * w)
        points.append(torch.stack((xs, ys), -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a ReLU FFN; post-norm residuals."""

    def __init__(
        self, *, d_model: int, n_heads: int, n_levels: int, n_points: int, ffn_dim: int, dropout: float
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, levels: FlatLevels) -> Tensor:
        """``src``, ``pos``: ``[B, S, D]``; ``reference_points``: ``[B, S, L, 2]``. Returns ``[B, S, D]``."""
        src = self.norm1(src + self.dropout(levels.attend(self.self_attn, src + pos, reference_points, src)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DeformableDecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention to the memory, ReLU FFN; post-norm."""

    def __init__(
        self, *, d_model: int, n_heads: int, n_levels: int, n_points: int, ffn_dim: int, dropout: float
    ):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.attn_dropout = dropout

    def _self_attn(self, tgt: Tensor, query_pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        b, q, d = tgt.shape
        qk = tgt + query_pos
        heads = (b, q, self.n_heads, d // self.n_heads)
        query = self.q_proj(qk).view(heads).transpose(1, 2)
        key = self.k_proj(qk).view(heads).transpose(1, 2)
        value = self.v_proj(tgt).view(heads).transpose(1, 2)
        p = self.attn_dropout if self.training else 0.0
        bias = None
        if attn_mask is not None:  # bool[Q, Q], True where allowed -> additive
            bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill_(~attn_mask, float("-inf"))
        out = attention(query, key, value, bias, p)  # [B, nH, Q, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(b, q, d))

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        levels: FlatLevels,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``tgt``, ``query_pos``: ``[B, Q, D]``; ``reference_points``: ``[B, Q, L, 2 or 4]`` in the
        padded maps' coordinates; ``memory``: ``[B, S, D]``; ``attn_mask``: optional ``bool[Q, Q]``
        for the query self-attention, True where query ``i`` may attend to ``j``. Returns ``[B, Q, D]``."""
        tgt = self.norm1(tgt + self.dropout(self._self_attn(tgt, query_pos, attn_mask)))
        cross = levels.attend(self.cross_attn, tgt + query_pos, reference_points, memory)
        tgt = self.norm2(tgt + self.dropout(cross))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


def refine_reference(reference_points: Tensor, delta: Tensor) -> Tensor:
    """Boxes from a reference and a box-logit delta.

    Args:
        reference_points: ``[..., 2]`` points ``(x, y)`` or ``[..., 4]`` boxes cxcywh in ``[0, 1]``.
        delta: ``[..., 4]`` box-logit deltas (a box head's output).
    Returns:
        ``[..., 4]`` cxcywh in ``[0, 1]``: ``sigmoid(delta + inverse_sigmoid(reference))`` (points
        move the centre only).
    """
    if reference_points.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference_points)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1).sigmoid()
