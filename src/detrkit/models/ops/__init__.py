"""Custom operators of detrkit models, each with a pure-PyTorch implementation.

- :func:`ms_deform_attn` / :class:`MSDeformAttn`: multi-scale deformable attention (Deformable DETR).
"""

from detrkit.models.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn

__all__ = ["MSDeformAttn", "ms_deform_attn"]
