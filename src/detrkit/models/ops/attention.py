"""Scaled dot-product attention with an additive key-padding mask, in as few ATen ops as the
maths needs (shared by DETR's and Deformable DETR's transformers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention", "key_padding_bias"]


def key_padding_bias(key_valid: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``bool[B, Lk]`` (True on real keys) -> additive mask ``[B, 1, 1, Lk]``: 0 there, ``-inf`` elsewhere."""
    bias = torch.zeros(key_valid.shape, dtype=dtype, device=key_valid.device)
    return bias.masked_fill_(~key_valid, float("-inf"))[:, None, None, :]


def attention(q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None, dropout_p: float) -> Tensor:
    """Scaled dot-product attention of ``q [B, H, Lq, Dh]`` on ``k, v [B, H, Lk, Dh]`` with an
    optional additive mask ``key_bias`` broadcastable to ``[B, H, Lq, Lk]`` (e.g. ``[B, 1, 1, Lk]``
    from :func:`key_padding_bias`, 0 where allowed, ``-inf`` elsewhere) -> ``[B, H, Lq, Dh]``.

    Without dropout: ``F.scaled_dot_product_attention`` (a fused kernel). With dropout on the
    attention weights, where PyTorch's CPU path falls back to a decomposition of ~40 ops
    (forward), the same maths in fewer: two ``bmm``, a softmax and ``native_dropout``.
    """
    if key_bias is not None:
        key_bias = key_bias.to(q.dtype)
    if dropout_p == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
    b, h, lq, dh = q.shape
    lk = k.shape[2]
    scores = torch.bmm(q.reshape(b * h, lq, dh), k.reshape(b * h, lk, dh).transpose(1, 2)).view(b, h, lq, lk)
    scores = scores * dh**-0.5
    if key_bias is not None:
        scores = scores + key_bias
    weights = torch.native_dropout(scores.softmax(-1), dropout_p, True)[0]
    return torch.bmm(weights.view(b * h, lq, lk), v.reshape(b * h, lk, dh)).view(b, h, lq, dh)
