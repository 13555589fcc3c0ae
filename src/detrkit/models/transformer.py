"""DETR's encoder-decoder transformer (post-norm), batch-first, on ``scaled_dot_product_attention``.

Position embeddings are added to queries and keys, never to values (facebookresearch/detr). The
decoder returns the layer-normalised output of every layer for the auxiliary losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detrkit.models.ops.attention import attention, key_padding_bias
from detrkit.models.ops.dropout import Dropout

__all__ = ["Attention", "DecoderLayer", "EncoderLayer", "Transformer"]


class Attention(nn.Module):
    """Multi-head attention with separate ``q/k/v/out`` projections.

    Args:
        d_model: embedding size (divisible by ``num_heads``).
        num_heads: number of heads.
        dropout: dropout on the attention weights (training only).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_valid: Tensor | None = None,
        *,
        key_bias: Tensor | None = None,
    ) -> Tensor:
        """Attend.

        Args:
            query: ``[B, Lq, D]`` (position already added).
            key: ``[B, Lk, D]`` (position already added).
            value: ``[B, Lk, D]``.
            key_valid: ``bool[B, Lk]``, True for keys that may be attended (real pixels); ``None``: all.
            key_bias: instead of ``key_valid``, its additive form ``float[B, 1, 1, Lk]`` (0 on real
                keys, ``-inf`` on padding; see :func:`key_padding_bias`), built once per forward.
        Returns:
            ``[B, Lq, D]``.
        """
        b, lq, d = query.shape
        lk = key.shape[1]
        h = self.num_heads
        q = self.q_proj(query).view(b, lq, h, d // h).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, h, d // h).transpose(1, 2)
        v = self.v_proj(value).view(b, lk, h, d // h).transpose(1, 2)
        if key_bias is None and key_valid is not None:
            key_bias = key_padding_bias(key_valid, q.dtype)
        out = attention(q, k, v, key_bias, self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, d))


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: self-attention and a ReLU feed-forward block."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, num_heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, valid: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """``src``, ``pos``: ``[B, S, D]``; ``valid``: ``bool[B, S]`` (or its ``key_bias``, see
        :func:`key_padding_bias`) -> ``[B, S, D]``."""
        qk = src + pos
        if key_bias is None:
            key_bias = key_padding_bias(valid, src.dtype)
        src = self.norm1(src + self.dropout(self.self_attn(qk, qk, src, key_bias=key_bias)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, cross-attention to the memory, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, num_heads, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = Attention(d_model, num_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        valid: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        memory_key: Tensor | None = None,
        key_bias: Tensor | None = None,
    ) -> Tensor:
        """Refine the queries.

        Args:
            tgt: ``[B, Q, D]`` query content.
            memory: ``[B, S, D]`` encoder output.
            valid: ``bool[B, S]`` real positions of the memory.
            pos: ``[B, S, D]`` position embedding of the memory.
            query_pos: ``[B, Q, D]`` learned query embedding.
            memory_key: ``memory + pos`` when the caller has it (computed once for all layers).
            key_bias: ``valid`` as an additive mask (:func:`key_padding_bias`), likewise.
        Returns:
            ``[B, Q, D]``.
        """
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(qk, qk, tgt)))
        key = memory + pos if memory_key is None else memory_key
        if key_bias is None:
            key_bias = key_padding_bias(valid, memory.dtype)
        cross = self.cross_attn(tgt + query_pos, key, memory, key_bias=key_bias)
        tgt = self.norm2(tgt + self.dropout(cross))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class Transformer(nn.Module):
    """DETR transformer: ``enc_layers`` encoder and ``dec_layers`` decoder layers, post-norm.

    Args:
        d_model: embedding size.
        num_heads: attention heads.
        enc_layers, dec_layers: number of layers (DETR: 6 and 6; ``enc_layers`` may be 0).
        dim_feedforward: hidden size of the feed-forward blocks.
        dropout: dropout on residual branches, feed-forward activations and attention weights.
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        num_heads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if enc_layers < 0 or dec_layers < 1:
            raise ValueError(f"need enc_layers >= 0 and dec_layers >= 1, got {enc_layers} and {dec_layers}")
        self.d_model = d_model
        self.encoder = nn.ModuleList(
            EncoderLayer(d_model, num_heads, dim_feedforward, dropout) for _ in range(enc_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(d_model, num_heads, dim_feedforward, dropout) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        src: Tensor,
        valid: Tensor,
        pos: Tensor,
        query_embed: Tensor,
        *,
        return_intermediate: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Encode the image tokens and decode the queries.

        Args:
            src: ``[B, S, D]`` projected backbone features, flattened row-major (``S = h * w``).
            valid: ``bool[B, S]``, True on real (non-padding) positions.
            pos: ``[B, S, D]`` position embedding.
            query_embed: ``[Q, D]`` learned query embedding (the decoder input content is zero).
            return_intermediate: return every decoder layer (for auxiliary losses) or only the last.
        Returns:
            ``(hs [L, B, Q, D], memory [B, S, D])``: layer-normalised decoder outputs (``L`` =
            ``dec_layers`` or 1) and the encoder output.
        """
        memory = src
        key_bias = key_padding_bias(valid, src.dtype)
        for layer in self.encoder:
            memory = layer(memory, pos, valid, key_bias)
        return self.decode(memory, valid, pos, query_embed, return_intermediate=return_intermediate), memory

    def decode(
        self,
        memory: Tensor,
        valid: Tensor,
        pos: Tensor,
        query_embed: Tensor,
        *,
        return_intermediate: bool = True,
    ) -> Tensor:
        """Decode queries against an encoded image: ``memory [B, S, D]`` (the encoder output), the
        other arguments as in :meth:`forward`. Returns ``hs [L, B, Q, D]`` (``L`` = ``dec_layers`` or 1).
        """
        query_pos = query_embed[None].expand(memory.shape[0], -1, -1)
        tgt = query_pos.new_zeros(query_pos.shape)
        outputs = []
        memory_key = memory + pos
        key_bias = key_padding_bias(valid, memory.dtype)
        for i, layer in enumerate(self.decoder):
            tgt = layer(tgt, memory, valid, pos, query_pos, memory_key, key_bias)
            if return_intermediate or i == len(self.decoder) - 1:
                outputs.append(self.decoder_norm(tgt))
        return torch.stack(outputs)
