"""Deformable DETR's encoder-decoder transformer (Zhu et al., 2021), after fundamentalvision/Deformable-DETR.

The encoder runs multi-scale deformable self-attention over the flattened feature levels, each
position attending around its own location; the decoder runs self-attention between the object
queries, then deformable cross-attention around each query's reference point (a point, or a box
once refined). Options: iterative box refinement (each decoder layer refines the previous boxes with
its own box head) and two-stage (encoder positions propose the initial boxes and queries).

Shapes: ``B`` batch, ``L`` feature levels of sizes ``(H_l, W_l)``, ``S = sum_l H_l * W_l``, ``Q``
queries, ``D = d_model``, ``N`` decoder layers. Masks are **True on real pixels** (Hugging Face's
``pixel_mask`` convention). Boxes are ``cxcywh`` normalised to the unpadded image; "logits" of boxes
are their inverse sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detrkit.models.ops import MSDeformAttn

__all__ = [
    "DeformableDecoderLayer",
    "DeformableEncoderLayer",
    "FlatLevels",
    "DeformableTransformer",
    "TransformerOutput",
    "encoder_reference_points",
    "inverse_sigmoid",
    "refine_reference",
    "select_proposals",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms to ``>= eps``; any shape."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _device_ints(values: Sequence[int], device: torch.device) -> Tensor:
    """``int64[len(values)]`` on ``device`` built by fill kernels: unlike ``torch.tensor(values,
    device=cuda)``, no blocking host-to-device copy (a host sync) in the forward pass."""
    return torch.stack([torch.full((), v, dtype=torch.long, device=device) for v in values])


@dataclass
class FlatLevels:
    """The feature levels flattened into one sequence of ``S`` positions, and their geometry.

    Attributes:
        shapes: ``int64[L, 2]`` ``(H_l, W_l)`` on the device (for kernels and offset scaling).
        shapes_list: the same as Python ints (for splitting without a host sync).
        start_index: ``int64[L]`` offset of each level in ``S``; ``start_index_list`` as ints.
        valid_mask: ``bool[B, S]``, True on real (unpadded) positions.
        valid_ratios: ``float32[B, L, 2]`` valid fraction ``(w, h)`` of each level.
    """

    shapes: Tensor
    shapes_list: list[tuple[int, int]]
    start_index: Tensor
    start_index_list: list[int]
    valid_mask: Tensor
    valid_ratios: Tensor

    @classmethod
    def from_masks(cls, masks: Sequence[Tensor]) -> FlatLevels:
        """From ``L`` masks ``bool[B, H_l, W_l]`` (True on real pixels); no host sync."""
        shapes_list = [(int(m.shape[1]), int(m.shape[2])) for m in masks]
        starts = [0]
        for h, w in shapes_list[:-1]:
            starts.append(starts[-1] + h * w)
        device = masks[0].device
        # float32 so that reference points stay precise when the model runs in bf16
        ratios = [
            torch.stack([m[:, 0, :].sum(1) / m.shape[2], m[:, :, 0].sum(1) / m.shape[1]], -1) for m in masks
        ]
        return cls(
            shapes=_device_ints([v for hw in shapes_list for v in hw], device).view(-1, 2),
            shapes_list=shapes_list,
            start_index=_device_ints(starts, device),
            start_index_list=starts,
            valid_mask=torch.cat([m.flatten(1) for m in masks], 1),
            valid_ratios=torch.stack(ratios, 1).float(),
        )

    def attend(self, attn: MSDeformAttn, query: Tensor, reference_points: Tensor, value: Tensor) -> Tensor:
        """``attn(query [B, Q, D], reference_points [B, Q, L, 2 or 4], value [B, S, D]) -> [B, Q, D]``."""
        return attn(
            query, reference_points, value, self.shapes, self.shapes_list, self.start_index, self.valid_mask
        )


def encoder_reference_points(levels: FlatLevels) -> Tensor:
    """Pixel centres of every level, normalised by the valid (unpadded) size, seen from every level.

    Returns:
        ``float32[B, S, L, 2]`` ``(x, y)`` in the padded maps' ``[0, 1]`` coordinates.
    """
    ratios = levels.valid_ratios
    points = []
    for level, (h, w) in enumerate(levels.shapes_list):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=ratios.dtype, device=ratios.device),
            torch.linspace(0.5, w - 0.5, w, dtype=ratios.dtype, device=ratios.device),
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
        self.dropout = nn.Dropout(dropout)

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
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def _self_attn(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        b, q, d = tgt.shape
        qk = tgt + query_pos
        heads = (b, q, self.n_heads, d // self.n_heads)
        query = self.q_proj(qk).view(heads).transpose(1, 2)
        key = self.k_proj(qk).view(heads).transpose(1, 2)
        value = self.v_proj(tgt).view(heads).transpose(1, 2)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=p)  # [B, nH, Q, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(b, q, d))

    def forward(
        self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor, levels: FlatLevels
    ) -> Tensor:
        """``tgt``, ``query_pos``: ``[B, Q, D]``; ``reference_points``: ``[B, Q, L, 2 or 4]`` in the
        padded maps' coordinates; ``memory``: ``[B, S, D]``. Returns ``[B, Q, D]``."""
        tgt = self.norm1(tgt + self.dropout(self._self_attn(tgt, query_pos)))
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


def select_proposals(
    class_logits: Tensor, box_logits: Tensor, num_queries: int, *, score: str = "first"
) -> Tensor:
    """The two-stage queries' initial boxes: the proposals of highest score.

    Args:
        class_logits: ``[B, S, K]`` proposal class logits.
        box_logits: ``[B, S, 4]`` proposal box logits (``inf`` at padded or border positions).
        num_queries: ``Q``, the number of proposals to keep.
        score: ``"first"``: the first class's logit (class-agnostic proposals, the paper and
            transformers); ``"max"``: the highest logit over classes (class-aware proposals).
    Returns:
        ``[B, Q, 4]`` box logits, detached, by decreasing score. An image with fewer positions
        than queries (``S < Q``: a small input) keeps all ``S`` and fills the rest with ``inf``
        box logits, the same proposal as a padded position's, so that outputs keep ``Q`` queries.
    """
    k = min(num_queries, class_logits.shape[1])
    if score not in ("first", "max"):
        raise ValueError(f"score must be 'first' or 'max', got {score!r}")
    scores = class_logits[..., 0] if score == "first" else class_logits.amax(-1)
    topk = torch.topk(scores, k, dim=1).indices
    selected = torch.gather(box_logits, 1, topk[..., None].expand(-1, -1, 4)).detach()
    if k < num_queries:
        fill = selected.new_full((selected.shape[0], num_queries - k, 4), float("inf"))
        selected = torch.cat([selected, fill], 1)
    return selected


@dataclass
class TransformerOutput:
    """What :class:`DeformableTransformer` returns.

    Attributes:
        hidden: ``[N, B, Q, D]`` output of every decoder layer.
        init_reference: ``[B, Q, 2 or 4]`` reference points given to the first layer.
        references: ``[N, B, Q, 2 or 4]`` reference points after each layer.
        enc_class_logits: two-stage only: ``[B, S, K]`` proposal logits of every encoder position.
        enc_box_logits: two-stage only: ``[B, S, 4]`` proposal box logits (inverse sigmoid of
            cxcywh; ``inf`` at padded or border positions).
        one_to_many: with ``one_to_many_queries``: the same three tensors for that extra group.
    """

    hidden: Tensor
    init_reference: Tensor
    references: Tensor
    enc_class_logits: Tensor | None = None
    enc_box_logits: Tensor | None = None
    one_to_many: TransformerOutput | None = None


class DeformableTransformer(nn.Module):
    """Encoder, decoder, level embeddings and the query/reference-point generation.

    Args:
        d_model: feature size ``D`` (even).
        n_heads: attention heads.
        num_encoder_layers, num_decoder_layers: depths (``N`` = decoder layers).
        ffn_dim: FFN hidden size.
        dropout: dropout of attention outputs, FFNs and query self-attention weights.
        n_levels: feature levels ``L``.
        enc_n_points, dec_n_points: sampling points per head and level.
        num_queries: object queries ``Q`` (two-stage: the number of top proposals kept; see
            :func:`select_proposals` for inputs with fewer positions than queries).
        two_stage: initial boxes and queries from encoder proposals instead of learned embeddings.
        proposal_score: two-stage: how proposals are ranked, see :func:`select_proposals`.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        n_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        num_queries: int = 300,
        two_stage: bool = False,
        proposal_score: str = "first",
    ) -> None:
        super().__init__()
        if proposal_score not in ("first", "max"):
            raise ValueError(f"proposal_score must be 'first' or 'max', got {proposal_score!r}")
        if d_model % 2 != 0:
            raise ValueError(f"d_model must be even, got {d_model}")
        self.d_model = d_model
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.proposal_score = proposal_score
        common = {
            "d_model": d_model,
            "n_heads": n_heads,
            "n_levels": n_levels,
            "ffn_dim": ffn_dim,
            "dropout": dropout,
        }
        self.encoder_layers = nn.ModuleList(
            DeformableEncoderLayer(n_points=enc_n_points, **common) for _ in range(num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DeformableDecoderLayer(n_points=dec_n_points, **common) for _ in range(num_decoder_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * d_model)  # (position, content) halves
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier for matrices, the paper's init for deformable attention, N(0, 1) level embeddings."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.normal_(self.query_embed.weight)
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def proposal_pos_embed(self, box_logits: Tensor, dtype: torch.dtype) -> Tensor:
        """Sine embedding of proposal boxes: ``[B, Q, 4]`` box logits -> ``[B, Q, 2 * D]`` in ``dtype``
        (computed in float32)."""
        num_feats = self.d_model // 2
        dim_t = torch.arange(num_feats, dtype=torch.float32, device=box_logits.device)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
        pos = box_logits.float().sigmoid()[..., None] * (2 * math.pi) / dim_t  # [B, Q, 4, D/2]
        pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)
        return pos.to(dtype)

    def encoder_proposals(self, memory: Tensor, levels: FlatLevels) -> tuple[Tensor, Tensor]:
        """One proposal per encoder position: a box at its pixel centre of size ``0.05 * 2**level``.

        Args:
            memory: ``[B, S, D]`` encoder output.
        Returns:
            ``(features [B, S, D], box_logits float32[B, S, 4])``: projected memory (zeroed before
            the projection at padded and border positions) and proposal box logits (``inf`` there).
        """
        b = memory.shape[0]
        proposals = []
        for level, (h, w) in enumerate(levels.shapes_list):
            start = levels.start_index_list[level]
            valid = levels.valid_mask[:, start : start + h * w].view(b, h, w)
            ys, xs = torch.meshgrid(
                torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
                torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            scale = torch.stack([valid[:, 0, :].sum(1), valid[:, :, 0].sum(1)], -1).view(b, 1, 1, 2)
            centres = (torch.stack([xs, ys], -1)[None] + 0.5) / scale  # [B, h, w, 2]
            sizes = torch.full_like(centres, 0.05 * (2.0**level))
            proposals.append(torch.cat((centres, sizes), -1).view(b, -1, 4))
        proposals = torch.cat(proposals, 1)
        keep = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True) & levels.valid_mask[..., None]
        box_logits = torch.log(proposals / (1 - proposals)).masked_fill(~keep, float("inf"))
        features = self.enc_output_norm(self.enc_output(memory.masked_fill(~keep, 0.0)))
        return features, box_logits

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor],
        pos_embeds: Sequence[Tensor],
        *,
        bbox_heads: Sequence[nn.Module] | None = None,
        proposal_heads: tuple[nn.Module, nn.Module] | None = None,
        one_to_many_queries: Tensor | None = None,
    ) -> TransformerOutput:
        """Encode the feature levels and decode the queries.

        Args:
            srcs: ``L`` projected feature maps ``[B, D, H_l, W_l]``.
            masks: ``L`` masks ``bool[B, H_l, W_l]``, True on real pixels.
            pos_embeds: ``L`` position embeddings ``[B, D, H_l, W_l]`` (level embeddings are added here).
            bbox_heads: iterative box refinement: ``N`` heads mapping ``[B, Q, D]`` to box-logit
                deltas ``[B, Q, 4]``; layer ``i``'s refined (detached) boxes feed layer ``i + 1``.
                ``None``: the reference points stay fixed.
            proposal_heads: two-stage only: ``(class_head, box_head)`` scoring and refining the
                encoder proposals (``D -> K`` logits, ``D -> 4`` box-logit deltas).
            one_to_many_queries: hybrid matching (training only, not two-stage): ``[Q2, 2 * D]``
                (position, content) embeddings of an extra group of queries, decoded separately
                (the two groups do not attend to each other) into ``output.one_to_many``.
        Returns:
            A :class:`TransformerOutput`.
        """
        levels = FlatLevels.from_masks(masks)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # [B, S, D]
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i] for i, p in enumerate(pos_embeds)], 1
        )
        enc_reference = encoder_reference_points(levels)
        for layer in self.encoder_layers:
            src = layer(src, pos, enc_reference, levels)
        memory = src

        b = memory.shape[0]
        enc_class_logits = enc_box_logits = None
        if self.two_stage:
            if proposal_heads is None:
                raise ValueError("a two-stage transformer needs proposal_heads=(class_head, box_head)")
            features, proposal_logits = self.encoder_proposals(memory, levels)
            enc_class_logits = proposal_heads[0](features)
            enc_box_logits = proposal_heads[1](features) + proposal_logits
            topk_box_logits = select_proposals(
                enc_class_logits, enc_box_logits, self.num_queries, score=self.proposal_score
            )
            reference = topk_box_logits.sigmoid()
            query_pos, tgt = self.pos_trans_norm(
                self.pos_trans(self.proposal_pos_embed(topk_box_logits, memory.dtype))
            ).split(self.d_model, dim=2)
        else:
            query_pos, tgt = self.query_embed.weight.split(self.d_model, dim=1)
            query_pos = query_pos[None].expand(b, -1, -1)
            tgt = tgt[None].expand(b, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()

        hidden, references = self._decode(tgt, query_pos, reference, memory, levels, bbox_heads)
        o2m = None
        if one_to_many_queries is not None:
            if self.two_stage:
                raise ValueError("one_to_many_queries needs learned queries (two_stage=False)")
            o2m_pos, o2m_tgt = one_to_many_queries.split(self.d_model, dim=1)
            o2m_pos, o2m_tgt = o2m_pos[None].expand(b, -1, -1), o2m_tgt[None].expand(b, -1, -1)
            o2m_reference = self.reference_points(o2m_pos).sigmoid()
            o2m_hidden, o2m_references = self._decode(
                o2m_tgt, o2m_pos, o2m_reference, memory, levels, bbox_heads
            )
            o2m = TransformerOutput(o2m_hidden, o2m_reference, o2m_references)
        return TransformerOutput(
            hidden, reference, references, enc_class_logits, enc_box_logits, one_to_many=o2m
        )

    def _decode(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        levels: FlatLevels,
        bbox_heads: Sequence[nn.Module] | None,
    ) -> tuple[Tensor, Tensor]:
        """Run the decoder: ``tgt, query_pos [B, Q, D]``, ``reference [B, Q, 2 or 4]`` ->
        ``(hidden [N, B, Q, D], references [N, B, Q, 2 or 4])``."""
        ratios = levels.valid_ratios
        hidden, references = [], []
        for i, layer in enumerate(self.decoder_layers):
            scale = torch.cat([ratios, ratios], -1) if reference.shape[-1] == 4 else ratios
            tgt = layer(tgt, query_pos, reference[:, :, None] * scale[:, None], memory, levels)
            if bbox_heads is not None:
                reference = refine_reference(reference, bbox_heads[i](tgt)).detach()
            hidden.append(tgt)
            references.append(reference)
        return torch.stack(hidden), torch.stack(references)
