"""Custom operators of detrkit models, each with a pure-PyTorch implementation.

- :class:`Dropout`: dropout in one op (``native_dropout``).
- :func:`attention`, :func:`key_padding_bias`: attention with dropout in few ops.
- :func:`ms_deform_attn` / :class:`MSDeformAttn`: multi-scale deformable attention (Deformable DETR).
"""

from detrkit.models.ops.attention import attention, key_padding_bias
from detrkit.models.ops.dropout import Dropout
from detrkit.models.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn

__all__ = ["Dropout", "MSDeformAttn", "attention", "key_padding_bias", "ms_deform_attn"]
