"""Multi-scale deformable attention (Zhu et al., 2021, "Deformable DETR", eq. 3).

Two pieces:

- :func:`ms_deform_attn`, the sampling core. Its positional arguments are those of the fused CUDA
  kernel of fundamentalvision/Deformable-DETR (``MSDeformAttnFunction``). It dispatches to one of
  three implementations of the same function (bilinear sampling, ``align_corners=False``, zero
  padding outside each level), chosen by ``DETRKIT_MS_DEFORM_ATTN``:

  - ``triton``: the Triton kernels of
    :func:`~detrkit.models.ops.ms_deform_attn_triton.ms_deform_attn_triton` (CUDA tensors; CPU
    ones under ``TRITON_INTERPRET=1``; an error where they cannot run);
  - ``torch``: :func:`ms_deform_attn_torch`, pure PyTorch, one ``F.grid_sample`` over the levels
    laid side by side (about 1.5x faster than one call per level on the CPU);
  - ``reference``: :func:`ms_deform_attn_reference`, pure PyTorch, one ``F.grid_sample`` per level
    like ``ms_deform_attn_core_pytorch`` of that repository: the numerical reference of the other
    two, and what tracing (ONNX export) records;
  - ``auto`` (the default): ``triton`` on CUDA tensors when triton is installed, else ``torch``.
- :class:`MSDeformAttn`, the module: sampling offsets, attention weights, value and output
  projections, initialised as in the paper.

Shapes use ``B`` batch, ``Q`` queries, ``S = sum_l H_l * W_l`` flattened multi-scale keys, ``L``
levels, ``P`` points per level and head, ``nH`` heads, ``Dh = d_model / nH``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detrkit.errors import ConfigError
from detrkit.models.ops import ms_deform_attn_triton as _triton

__all__ = [
    "MSDeformAttn",
    "ms_deform_attn",
    "ms_deform_attn_backend",
    "ms_deform_attn_reference",
    "ms_deform_attn_torch",
    "offset_normalizer",
]

BACKEND_ENV = "DETRKIT_MS_DEFORM_ATTN"
BACKENDS = ("auto", "torch", "reference", "triton")


def ms_deform_attn_backend(device: torch.device) -> str:
    """``"triton"``, ``"torch"`` or ``"reference"``: what :func:`ms_deform_attn` runs on ``device``.

    Reads ``DETRKIT_MS_DEFORM_ATTN`` (``auto``, ``torch``, ``reference`` or ``triton``) at each
    call. Tracing (ONNX export) always gets the reference, ``torch.compile`` never the kernels.
    """
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ConfigError(f"{BACKEND_ENV}={choice!r}: expected one of {', '.join(BACKENDS)}")
    if torch.jit.is_tracing():
        return "reference"  # its sizes may be traced tensors; the others need Python ints
    if choice in ("torch", "reference"):
        return choice
    if torch.compiler.is_compiling() or (choice == "auto" and device.type != "cuda"):
        return "torch"  # torch.compile sees ATen ops, not opaque kernels
    if _triton.supports(device):
        return "triton"
    if choice == "auto":
        return "torch"  # CUDA without triton
    if not _triton.available():
        why = "triton is not installed"
    elif device.type == "cuda":
        why = "TRITON_INTERPRET=1 runs them on the CPU only"
    else:
        why = "they need CUDA tensors, or TRITON_INTERPRET=1 for CPU ones"
    raise ConfigError(f"{BACKEND_ENV}=triton: the Triton kernels cannot run on {device} ({why})")


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    spatial_shapes_list: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Multi-scale deformable attention by the implementation :func:`ms_deform_attn_backend` picks
    (see the module docstring); arguments and result as in :func:`ms_deform_attn_reference`."""
    backend = ms_deform_attn_backend(value.device)
    fn = {
        "triton": _triton.ms_deform_attn_triton,
        "torch": ms_deform_attn_torch,
        "reference": ms_deform_attn_reference,
    }[backend]
    return fn(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        spatial_shapes_list=spatial_shapes_list,
    )


def _level_shapes(
    spatial_shapes: Tensor, spatial_shapes_list: Sequence | None, s: int, n_levels: int
) -> list[tuple[int, int]]:
    """The ``(H_l, W_l)`` as Python ints (the tensor is read back only without the list), checked."""
    shapes = (
        [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        if spatial_shapes_list is None
        else [(h, w) if torch.jit.is_tracing() else (int(h), int(w)) for h, w in spatial_shapes_list]
    )  # traced (ONNX export) sizes are 0-dim tensors: int() would freeze them
    if len(shapes) != n_levels or sum(h * w for h, w in shapes) != s:
        raise ValueError(
            f"spatial shapes {shapes} do not match value [B, S={s}, ...] and {n_levels} sampling levels"
        )
    return shapes


def ms_deform_attn_torch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    spatial_shapes_list: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """:func:`ms_deform_attn_reference` with one ``F.grid_sample`` for all levels (same arguments).

    The levels are laid side by side on one canvas ``[B*nH, Dh, max H_l, sum W_l + L - 1]``: one zero
    column between two levels, zero rows under the shorter ones, so that a neighbour just outside a
    level reads zero as with a per-level zero padding. A point none of whose four neighbours is in
    its level (pixel coordinate ``< -1`` or ``>= W_l``, likewise in ``y``) would read another level
    there: it is moved off the canvas (zero output, zero gradient, as in the reference). Equal to
    the reference up to the rounding of the coordinates (about ``1e-12`` in float64). The canvas
    (about ``1.5 S`` positions) is small next to the sampled ``[B*nH, Dh, Q, L*P]``, which the
    reference also holds.
    """
    del level_start_index
    b, s, n_heads, head_dim = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = _level_shapes(spatial_shapes, spatial_shapes_list, s, n_levels)
    out_dtype = value.dtype
    dtype = _promote(value.dtype, sampling_locations.dtype)
    values = value.to(dtype).permute(0, 2, 3, 1).reshape(b * n_heads, head_dim, s)
    h_max = max(h for h, _ in shapes)
    parts, start = [], 0
    for level, (h, w) in enumerate(shapes):
        gap = 0 if level == n_levels - 1 else 1
        level_values = values[:, :, start : start + h * w].view(b * n_heads, head_dim, h, w)
        parts.append(F.pad(level_values, (0, gap, 0, h_max - h)))
        start += h * w
    canvas = torch.cat(parts, -1)  # [B*nH, Dh, h_max, w_total]
    w_total = sum(w for _, w in shapes) + n_levels - 1
    # per level, from the shapes on the device (torch.tensor(..., device=cuda) would be a host sync):
    # (x, y) in [0, 1] of the level -> grid in [-1, 1] of the canvas
    size = spatial_shapes.to(device=value.device, dtype=dtype).flip(-1).view(n_levels, 1, 2)  # (W_l, H_l)
    gap_w = size[..., :1] + 1
    x_offset = gap_w.cumsum(0) - gap_w  # sum of (W_k + 1) over the levels before
    scale = torch.cat([size[..., :1] * (2 / w_total), size[..., 1:] * (2 / h_max)], -1)
    shift = torch.cat([x_offset * (2 / w_total) - 1, torch.full_like(x_offset, -1.0)], -1)
    loc = sampling_locations.to(dtype).transpose(1, 2).flatten(0, 1)  # [B*nH, Q, L, P, 2]
    # no neighbour in the level: pixel coordinate loc * size - 0.5 < -1 or >= size
    pixels = loc * size
    outside = ((pixels < -0.5) | (pixels >= size + 0.5)).any(-1, keepdim=True)
    grid = (loc * scale + shift).masked_fill(outside, -3.0)  # -3: off the canvas, reads zeros
    sampled = F.grid_sample(
        canvas,
        grid.view(b * n_heads, q, n_levels * n_points, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [B*nH, Dh, Q, L*P]
    weights = attention_weights.to(dtype).transpose(1, 2).reshape(b * n_heads, 1, q, n_levels * n_points)
    if sampled.requires_grad or weights.requires_grad:
        output = (sampled * weights).sum(-1)  # [B*nH, Dh, Q]
    else:  # no autograd: weight the samples in place (no second [B*nH, Dh, Q, L*P] buffer)
        output = sampled.mul_(weights).sum(-1)
    return output.view(b, n_heads * head_dim, q).transpose(1, 2).to(out_dtype)


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    spatial_shapes_list: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Bilinearly sample each level at the given locations and sum with the attention weights.

    Args:
        value: ``[B, S, nH, Dh]``, the flattened levels one after the other (row-major ``H_l x W_l``).
        spatial_shapes: ``int64[L, 2]`` ``(H_l, W_l)`` of each level.
        level_start_index: ``int64[L]`` offset of each level in ``S`` (unused by this fallback, which
            derives it from the shapes; kept for the kernel's signature).
        sampling_locations: ``[B, Q, nH, L, P, 2]`` ``(x, y)`` in ``[0, 1]`` of the (padded) feature
            map, ``(0, 0)`` the top-left corner of the top-left pixel; outside points read zeros.
        attention_weights: ``[B, Q, nH, L, P]``, normalised over ``L * P`` by the caller.
        spatial_shapes_list: the same shapes as Python ints. Give it to avoid reading
            ``spatial_shapes`` back from the device (a host sync).
    Returns:
        ``[B, Q, nH * Dh]`` in ``value``'s dtype. Sampling runs in the promoted dtype of ``value``
        and ``sampling_locations`` (float32 locations keep bf16 values precise).
    """
    del level_start_index  # the sizes below give the same split without a device read
    b, s, n_heads, head_dim = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = _level_shapes(spatial_shapes, spatial_shapes_list, s, n_levels)
    out_dtype = value.dtype
    dtype = _promote(value.dtype, sampling_locations.dtype)
    # one layout change for all levels: [B, S, nH, Dh] -> [B*nH, Dh, S]; each level is then a view
    values = value.to(dtype).permute(0, 2, 3, 1).reshape(b * n_heads, head_dim, s)
    # grid_sample's grid spans [-1, 1] over the input; align_corners=False matches [0, 1] locations.
    grids = (2 * sampling_locations.to(dtype) - 1).transpose(1, 2).flatten(0, 1)  # [B*nH, Q, L, P, 2]
    sampled = []
    start = 0
    for level, (h, w) in enumerate(shapes):
        value_l = values[:, :, start : start + h * w].view(b * n_heads, head_dim, h, w)
        start += h * w
        sampled.append(
            F.grid_sample(
                value_l, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # [B*nH, Dh, Q, P]
    weights = attention_weights.to(dtype).transpose(1, 2).reshape(b * n_heads, 1, q, n_levels * n_points)
    output = (torch.cat(sampled, -1) * weights).sum(-1)  # [B*nH, Dh, Q]
    # [B*nH, Dh, Q] -> [B, Q, nH*Dh]
    return output.view(b, n_heads * head_dim, q).transpose(1, 2).to(out_dtype)


def _promote(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types`` for float dtypes, decided in Python (the torch call is an ATen op)."""
    if a == b:
        return a
    order = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    if torch.float16 in (a, b) and torch.bfloat16 in (a, b):
        return torch.float32
    return max(a, b, key=order.index) if a in order and b in order else torch.promote_types(a, b)


def offset_normalizer(spatial_shapes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``int64[L, 2]`` ``(H_l, W_l)`` -> ``[1, 1, 1, L, 1, 2]`` ``(W_l, H_l)``: what pixel offsets are
    divided by (computed once per forward by :class:`~detrkit.models.deformable_layers.FlatLevels`)."""
    return spatial_shapes.flip(-1).to(dtype).view(1, 1, 1, -1, 1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module.

    Each query predicts, from its feature (position embedding included), ``P`` sampling offsets and
    attention weights per head and level around its reference point, and attends to the bilinearly
    sampled values of those ``L * P`` points only.

    Args:
        d_model: feature size, a multiple of ``n_heads``.
        n_levels: number of feature levels ``L``.
        n_heads: number of heads ``nH``.
        n_points: sampling points ``P`` per head and level.
    """

    def __init__(self, *, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, n_points={self.n_points}"

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's init: offsets start on a ring per head (point ``p`` at distance ``p + 1``),
        uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value_input: Tensor,
        spatial_shapes: Tensor,
        spatial_shapes_list: Sequence[tuple[int, int]],
        level_start_index: Tensor,
        value_valid_mask: Tensor | None = None,
        *,
        value_padding: Tensor | None = None,
        normalizer: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to ``L * P`` sampled points per head.

        Args:
            query: ``[B, Q, d_model]`` query features (position embedding already added).
            reference_points: ``[B, Q, L, 2]`` ``(x, y)`` in ``[0, 1]`` of the padded map (offsets are
                in pixels of each level), or ``[B, Q, L, 4]`` boxes ``(cx, cy, w, h)`` in ``[0, 1]``
                (offsets are fractions of half the box size, divided by ``P``).
            value_input: ``[B, S, d_model]`` flattened multi-scale features.
            spatial_shapes: ``int64[L, 2]`` ``(H_l, W_l)``.
            spatial_shapes_list: the same shapes as Python ints.
            level_start_index: ``int64[L]`` offset of each level in ``S``.
            value_valid_mask: optional ``bool[B, S]``, True on real (unpadded) positions; padded
                values are zeroed.
            value_padding: instead of ``value_valid_mask``, ``bool[B, S, 1]`` True on padding
                (computed once for all layers).
            normalizer: :func:`offset_normalizer` of ``spatial_shapes`` (computed once).
        Returns:
            ``[B, Q, d_model]``.
        """
        b, q, _ = query.shape
        s = value_input.shape[1]
        value = self.value_proj(value_input)
        if value_padding is None and value_valid_mask is not None:
            value_padding = ~value_valid_mask[..., None]
        if value_padding is not None:
            value = value.masked_fill(value_padding, 0.0)
        value = value.view(b, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        # Locations in float32 at least: in bf16 a [0, 1] coordinate is only good to 1/256.
        loc_dtype = _promote(reference_points.dtype, torch.float32)
        ref = reference_points.to(loc_dtype)
        offsets = offsets.to(loc_dtype)
        if ref.shape[-1] == 2:
            if normalizer is None:
                normalizer = offset_normalizer(spatial_shapes, loc_dtype)  # (W_l, H_l)
            locations = ref[:, :, None, :, None, :] + offsets / normalizer.to(loc_dtype)
        elif ref.shape[-1] == 4:
            locations = (
                ref[:, :, None, :, None, :2] + offsets / self.n_points * ref[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 (points) or 4 (boxes), got {list(ref.shape)}")
        output = ms_deform_attn(
            value,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            spatial_shapes_list=spatial_shapes_list,
        )
        return self.output_proj(output)
