"""Sine position embedding of DETR (normalised, as in facebookresearch/detr and Hugging Face)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """2D sine/cosine position embedding computed from the valid-pixel mask.

    Positions count real pixels only (cumulative sums of the mask), so padding does not shift the
    embedding of the image content; with ``normalize=True`` they are scaled to ``(0, scale]``.

    Args:
        num_pos_feats: features per axis; the output has ``2 * num_pos_feats`` channels (``d_model``).
        temperature: wavelength base.
        normalize: divide positions by the image extent (DETR uses True).
        scale: multiplier after normalising (default ``2 * pi``).
        offset: added to the 1-based positions before normalising (``normalize=True`` only):
            DETR uses 0, Deformable DETR -0.5 (pixel centres).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        *,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True; pass normalize=True or drop scale")
        if num_pos_feats < 2 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even and >= 2 (d_model // 2), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        self.register_buffer("dim_t", dim_t, persistent=False)  # wavelengths, computed once

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}"
        )

    def forward(self, mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Embed the positions of a feature map.

        Args:
            mask: ``bool[B, H, W]``, True on real (non-padding) positions.
            dtype: output dtype (computed in float32 first).
        Returns:
            ``[B, 2 * num_pos_feats, H, W]``: y features then x features, each interleaving
            ``sin`` and ``cos``.
        """
        valid = mask.to(torch.float32)
        y_embed = valid.cumsum(1)
        x_embed = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_last, x_last = y_embed[:, -1:, :], x_embed[:, :, -1:]
            if self.offset:
                y_embed, x_embed = y_embed + self.offset, x_embed + self.offset
            y_embed = y_embed / (y_last + eps) * self.scale
            x_embed = x_embed / (x_last + eps) * self.scale
        # both axes at once: [B, H, W, 2 (y, x), F] -> sin of the even, cos of the odd features
        pos = torch.stack((y_embed, x_embed), -1)[..., None] / self.dim_t.to(mask.device)
        pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1)  # [B, H, W, 2, F/2, 2]
        return pos.flatten(3).permute(0, 3, 1, 2).to(dtype)
