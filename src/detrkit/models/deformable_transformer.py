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
from torch import Tensor, nn

from detrkit.models.deformable_layers import (
    DeformableDecoderLayer,
    DeformableEncoderLayer,
    FlatLevels,
    encoder_reference_points,
    inverse_sigmoid,
    refine_reference,
)
from detrkit.models.ops import MSDeformAttn

__all__ = [
    "DeformableDecoderLayer",
    "DeformableEncoderLayer",
    "FlatLevels",
    "DeformableTransformer",
    "TransformerOutput",
    "encoder_reference_points",
    "gather_queries",
    "inverse_sigmoid",
    "proposal_indices",
    "refine_reference",
    "select_proposals",
]


def proposal_indices(class_logits: Tensor, num_queries: int, *, score: str = "first") -> Tensor:
    """Positions of the ``min(num_queries, S)`` encoder proposals of highest score.

    Args:
        class_logits: ``[B, S, K]`` proposal class logits.
        num_queries: ``Q``, the number of proposals to keep.
        score: ``"first"``: the first class's logit (class-agnostic proposals, the paper and
            transformers); ``"max"``: the highest logit over classes (class-aware proposals).
    Returns:
        ``int64[B, min(Q, S)]`` indices into ``S``, by decreasing score.
    """
    if score not in ("first", "max"):
        raise ValueError(f"score must be 'first' or 'max', got {score!r}")
    scores = class_logits[..., 0] if score == "first" else class_logits.amax(-1)
    return torch.topk(scores, min(num_queries, class_logits.shape[1]), dim=1).indices


def gather_queries(values: Tensor, indices: Tensor, num_queries: int, fill: float) -> Tensor:
    """``values [B, S, C]`` at ``indices int64[B, k]``, detached, padded with ``fill`` to ``[B, Q, C]``."""
    selected = torch.gather(values, 1, indices[..., None].expand(-1, -1, values.shape[-1])).detach()
    if indices.shape[1] < num_queries:
        pad = selected.new_full((selected.shape[0], num_queries - indices.shape[1], values.shape[-1]), fill)
        selected = torch.cat([selected, pad], 1)
    return selected


def select_proposals(
    class_logits: Tensor, box_logits: Tensor, num_queries: int, *, score: str = "first"
) -> Tensor:
    """The two-stage queries' initial boxes: the proposals of highest score.

    Args:
        class_logits: ``[B, S, K]`` proposal class logits.
        box_logits: ``[B, S, 4]`` proposal box logits (``inf`` at padded or border positions).
        num_queries: ``Q``, the number of proposals to keep.
        score: see :func:`proposal_indices`.
    Returns:
        ``[B, Q, 4]`` box logits, detached, by decreasing score. An image with fewer positions
        than queries (``S < Q``: a small input) keeps all ``S`` and fills the rest with ``inf``
        box logits, the same proposal as a padded position's, so that outputs keep ``Q`` queries.
    """
    indices = proposal_indices(class_logits, num_queries, score=score)
    return gather_queries(box_logits, indices, num_queries, float("inf"))


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
        denoising: with ``denoising``: the same three tensors for the denoising queries.
        enc_features: two-stage only: ``[B, S, D]`` the projected encoder memory that the
            proposal heads read (zero at padded or border positions).
        enc_anchors: two-stage only: ``[B, S, 4]`` each position's anchor box (cxcywh: its pixel
            centre, side ``0.05 * 2**level``); padded and border positions are ``(1, 1, 1, 1)``.
        memory: ``[B, S, D]`` the encoder output (auxiliary heads read it, see
            :mod:`detrkit.models.co_detr`).
        levels: the :class:`FlatLevels` geometry of ``memory``, for :meth:`DeformableTransformer.decode`.
    """

    hidden: Tensor
    init_reference: Tensor
    references: Tensor
    enc_class_logits: Tensor | None = None
    enc_box_logits: Tensor | None = None
    one_to_many: TransformerOutput | None = None
    denoising: TransformerOutput | None = None
    enc_features: Tensor | None = None
    enc_anchors: Tensor | None = None
    memory: Tensor | None = None
    levels: FlatLevels | None = None


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
        proposal_score: two-stage: how proposals are ranked, see :func:`proposal_indices`.
        query_content: two-stage: where the decoder's content queries come from: ``"position"``
            (the paper and transformers: the second half of ``pos_trans`` of the proposal's sine
            embedding) or ``"memory"`` (the selected proposals' encoder features, detached, as
            RT-DETR: the decoder starts from what the encoder saw at each object).
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
        query_content: str = "position",
    ) -> None:
        super().__init__()
        if proposal_score not in ("first", "max"):
            raise ValueError(f"proposal_score must be 'first' or 'max', got {proposal_score!r}")
        if query_content not in ("position", "memory"):
            raise ValueError(f"query_content must be 'position' or 'memory', got {query_content!r}")
        if d_model % 2 != 0:
            raise ValueError(f"d_model must be even, got {d_model}")
        self.d_model = d_model
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.proposal_score = proposal_score
        self.query_content = query_content
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
            ys, xs = torch.meshgrid(  # arange: linspace of a traced size exports wrong for 1-px levels
                torch.arange(h, dtype=torch.float32, device=memory.device),
                torch.arange(w, dtype=torch.float32, device=memory.device),
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
        denoising: tuple[Tensor, Tensor, Tensor] | None = None,
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
            denoising: two-stage only (training): ``(content [B, Dn, D], box_logits [B, Dn, 4],
                attn_mask bool[Dn + Q, Dn + Q])``: denoising queries (see
                :mod:`detrkit.models.denoising`) decoded in front of the ``Q`` matched queries,
                with the mask on the query self-attention, into ``output.denoising``.
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
        enc_class_logits = enc_box_logits = features = anchors = None
        if self.two_stage:
            if proposal_heads is None:
                raise ValueError("a two-stage transformer needs proposal_heads=(class_head, box_head)")
            features, proposal_logits = self.encoder_proposals(memory, levels)
            enc_class_logits = proposal_heads[0](features)
            enc_box_logits = proposal_heads[1](features) + proposal_logits
            anchors = proposal_logits.sigmoid()
            topk = proposal_indices(enc_class_logits, self.num_queries, score=self.proposal_score)
            topk_box_logits = gather_queries(enc_box_logits, topk, self.num_queries, float("inf"))
            reference = topk_box_logits.sigmoid()
            query_pos, tgt = self.pos_trans_norm(
                self.pos_trans(self.proposal_pos_embed(topk_box_logits, memory.dtype))
            ).split(self.d_model, dim=2)
            if self.query_content == "memory":
                tgt = gather_queries(features, topk, self.num_queries, 0.0)
        else:
            query_pos, tgt = self.query_embed.weight.split(self.d_model, dim=1)
            query_pos = query_pos[None].expand(b, -1, -1)
            tgt = tgt[None].expand(b, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()

        dn_out = None
        if denoising is not None:
            if not self.two_stage:
                raise ValueError("denoising queries need two_stage=True (box-derived query positions)")
            dn_tgt, dn_box_logits, attn_mask = denoising
            dn_pos = self.pos_trans_norm(self.pos_trans(self.proposal_pos_embed(dn_box_logits, memory.dtype)))
            n_dn = dn_tgt.shape[1]
            hidden, references = self._decode(
                torch.cat([dn_tgt.to(tgt.dtype), tgt], 1),
                torch.cat([dn_pos[..., : self.d_model], query_pos], 1),
                torch.cat([dn_box_logits.sigmoid(), reference], 1),
                memory,
                levels,
                bbox_heads,
                attn_mask,
            )
            dn_out = TransformerOutput(hidden[:, :, :n_dn], dn_box_logits.sigmoid(), references[:, :, :n_dn])
            hidden, references = hidden[:, :, n_dn:], references[:, :, n_dn:]
        else:
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
            hidden,
            reference,
            references,
            enc_class_logits,
            enc_box_logits,
            one_to_many=o2m,
            denoising=dn_out,
            enc_features=features,
            enc_anchors=anchors,
            memory=memory,
            levels=levels,
        )

    def decode(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        levels: FlatLevels,
        bbox_heads: Sequence[nn.Module] | None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode extra queries against an encoded ``memory`` (e.g. Co-DETR's positive queries);
        the arguments and outputs of :meth:`_decode`."""
        return self._decode(tgt, query_pos, reference, memory, levels, bbox_heads, attn_mask)

    def _decode(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        levels: FlatLevels,
        bbox_heads: Sequence[nn.Module] | None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the decoder: ``tgt, query_pos [B, Q, D]``, ``reference [B, Q, 2 or 4]``, optional
        ``attn_mask bool[Q, Q]`` (or ``[B, 1, Q, Q]``, per image; True where query ``i`` may attend
        to ``j``) -> ``(hidden [N, B, Q, D], references [N, B, Q, 2 or 4])``."""
        ratios = levels.valid_ratios
        hidden, references = [], []
        for i, layer in enumerate(self.decoder_layers):
            scale = torch.cat([ratios, ratios], -1) if reference.shape[-1] == 4 else ratios
            tgt = layer(tgt, query_pos, reference[:, :, None] * scale[:, None], memory, levels, attn_mask)
            if bbox_heads is not None:
                reference = refine_reference(reference, bbox_heads[i](tgt)).detach()
            hidden.append(tgt)
            references.append(reference)
        return torch.stack(hidden), torch.stack(references)
