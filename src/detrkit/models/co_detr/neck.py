"""The encoder memory back as feature maps (Co-DETR's neck) and anchors at fixed strides.

Co-DETR's auxiliary heads are ordinary convolutional detectors; they read the *encoder output*, not
the backbone, so that their dense one-to-many supervision trains the encoder. Deformable DETR's
encoder is multi-scale already: its memory ``[B, S, D]`` splits back into the ``L`` levels
``[B, D, H_l, W_l]``; a 3x3 stride-2 convolution + GroupNorm per extra level adds coarser maps (one
in the paper: strides 8-128 for the heads' anchors).

Shapes: ``B`` images, ``S = sum_l H_l * W_l`` encoder positions, ``D = d_model``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detrkit.models.deformable_layers import FlatLevels

__all__ = ["EncoderNeck", "FixedStrideAnchors", "memory_to_maps"]


def memory_to_maps(memory: Tensor, levels: FlatLevels) -> list[Tensor]:
    """Split the flattened encoder memory into its levels.

    Args:
        memory: ``[B, S, D]`` encoder output, levels concatenated finest first.
        levels: the geometry of ``memory`` (``shapes_list``, ``start_index_list``).
    Returns:
        ``L`` maps ``[B, D, H_l, W_l]`` (views of ``memory``, made contiguous).
    """
    b, _, d = memory.shape
    maps = []
    for (h, w), start in zip(levels.shapes_list, levels.start_index_list, strict=True):
        maps.append(memory[:, start : start + h * w].transpose(1, 2).reshape(b, d, h, w).contiguous())
    return maps


class EncoderNeck(nn.Module):
    """Encoder memory -> ``L + extra_levels`` feature maps for the auxiliary heads.

    Args:
        d_model: channels ``D``.
        extra_levels: coarser maps added by 3x3 stride-2 convolutions + GroupNorm (Co-DETR: 1).
        norm_groups: GroupNorm groups (a divisor of ``d_model``).
    """

    def __init__(self, *, d_model: int, extra_levels: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        if extra_levels < 0:
            raise ValueError(f"extra_levels must be >= 0, got {extra_levels}")
        self.downsample = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d_model, d_model, 3, 2, 1), nn.GroupNorm(norm_groups, d_model))
            for _ in range(extra_levels)
        )
        for block in self.downsample:
            nn.init.xavier_uniform_(block[0].weight)
            nn.init.zeros_(block[0].bias)

    def forward(self, memory: Tensor, levels: FlatLevels) -> list[Tensor]:
        """``memory [B, S, D]`` -> ``L + extra_levels`` maps ``[B, D, H_l, W_l]``, finest first."""
        maps = memory_to_maps(memory, levels)
        for block in self.downsample:
            maps.append(block(maps[-1]))
        return maps


class FixedStrideAnchors(AnchorGenerator):
    """torchvision's :class:`AnchorGenerator` with the levels' strides given, not inferred.

    torchvision infers a level's stride as ``padded_size // map_size``, which is wrong once the
    padded size is not a multiple of the coarsest stride (a 100 px side with a 13-cell stride-8
    map gives 7); here level ``l`` has stride ``strides[l]``. Anchor ``(y, x, a)`` of a level is
    centred on pixel ``(x * stride, y * stride)`` (torchvision's and mmdetection's convention).

    Args:
        sizes: per level, the anchor sizes in pixels.
        aspect_ratios: per level, the ratios height / width.
        strides: per level, the stride in pixels.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
    ) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        if len(strides) != len(sizes):
            raise ValueError(f"need one stride per level: {len(strides)} strides for {len(sizes)} levels")
        self.strides = tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """One ``[sum_l H_l * W_l * A_l, 4]`` xyxy pixel anchor tensor per image (the same for all)."""
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"got {len(feature_maps)} feature maps for {len(self.strides)} anchor levels")
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.full((), s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]
