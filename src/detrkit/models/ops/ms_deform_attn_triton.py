"""Multi-scale deformable attention as Triton kernels (forward and backward).

Same contract and numerics as :func:`detrkit.models.ops.ms_deform_attn.ms_deform_attn_reference`, the
pure-PyTorch reference: bilinear sampling with ``align_corners=False`` and zero padding (a location
``(x, y)`` in ``[0, 1]`` is the pixel coordinate ``(x * W_l - 0.5, y * H_l - 0.5)``; each of the four
neighbours outside the map reads zero), weighted by the attention weights and summed over levels and
points. Arithmetic runs in float32 (float64 when any input is float64) whatever the storage dtype.

- forward: one program per (block of queries, batch x head); it loops over levels and points and
  gathers, per corner, a ``[BLOCK_Q, Dh]`` tile of the value (rows of ``Dh`` contiguous channels).
- backward: the same grid; the gradient of the value is scattered with atomic adds into a float32
  (float64) buffer, those of the locations and weights are written once by the program that owns
  the query.

Triton is imported lazily: importing this module never fails; :func:`available` says whether
triton can be imported and :func:`supports` whether the kernels run on a given device. Triton reads
``TRITON_INTERPRET`` when a kernel is *defined* (``@triton.jit``), so the kernels live in
:mod:`detrkit.models.ops._ms_deform_attn_kernels`, imported on first use: with ``TRITON_INTERPRET=1``
in the environment by then, they run on the host through Triton's interpreter, on CPU tensors (this
is how the tests check them without a GPU); the mode then stays for the process.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["available", "interpreting", "ms_deform_attn_triton", "supports"]

_KERNELS = "detrkit.models.ops._ms_deform_attn_kernels"


@functools.cache
def available() -> bool:
    """Whether triton can be imported (imports it once)."""
    try:
        import triton  # noqa: F401
    except Exception:  # not installed, or broken (no driver library, ...)
        return False
    return True


def interpreting() -> bool:
    """Whether the kernels run (or, not defined yet, will run) through Triton's interpreter."""
    if _KERNELS in sys.modules:
        return sys.modules[_KERNELS].INTERPRETED
    if not available():
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)


def supports(device: torch.device) -> bool:
    """Whether the kernels can run on tensors of ``device``: CUDA, or the CPU under the interpreter."""
    if not available():
        return False
    return device.type == "cuda" if not interpreting() else device.type == "cpu"


def _kernels():
    """The kernel module, imported (and so the interpreter mode decided) on first use."""
    from detrkit.models.ops import _ms_deform_attn_kernels

    return _ms_deform_attn_kernels


def _launch_config(q: int, head_dim: int, block_q: int | None) -> tuple[int, int]:
    block_d = 1 << max(head_dim - 1, 0).bit_length()  # next power of two
    if block_q is None:
        block_q = max(1, min(64, 2048 // block_d))
    block_q = min(block_q, 1 << max(q - 1, 0).bit_length())
    return block_q, block_d


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _on(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _MSDeformAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, block_q
    ):
        b, s, n_heads, head_dim = value.shape
        _, q, _, n_levels, n_points, _ = sampling_locations.shape
        compute = _compute_dtype(value.dtype, sampling_locations.dtype, attention_weights.dtype)
        k = _kernels()
        tl_compute = k.tl.float64 if compute == torch.float64 else k.tl.float32
        bq, bd = _launch_config(q, head_dim, block_q)
        out = value.new_empty(b, q, n_heads, head_dim)
        grid = (k.triton.cdiv(q, bq), b * n_heads)
        if out.numel() and s:
            with _on(value.device):
                k.ms_deform_attn_fwd[grid](
                    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out,
                    s, q, NH=n_heads, DH=head_dim, L=n_levels, P=n_points, BLOCK_Q=bq, BLOCK_D=bd,
                    COMPUTE=tl_compute,
                )  # fmt: skip
        else:
            out.zero_()
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        ctx.config = (bq, bd, compute, tl_compute)
        return out.view(b, q, n_heads * head_dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        bq, bd, compute, tl_compute = ctx.config
        b, s, n_heads, head_dim = value.shape
        _, q, _, n_levels, n_points, _ = sampling_locations.shape
        k = _kernels()
        grad_value = torch.zeros(value.shape, dtype=compute, device=value.device)  # atomics in >= fp32
        launch = bool(grad_out.numel() and s)
        # every location and weight is written by the program of its query
        grad_loc = torch.empty_like(sampling_locations) if launch else torch.zeros_like(sampling_locations)
        grad_attn = torch.empty_like(attention_weights) if launch else torch.zeros_like(attention_weights)
        grid = (k.triton.cdiv(q, bq), b * n_heads)
        if launch:
            with _on(value.device):
                k.ms_deform_attn_bwd[grid](
                    value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                    grad_out.contiguous(), grad_value, grad_loc, grad_attn,
                    s, q, NH=n_heads, DH=head_dim, L=n_levels, P=n_points, BLOCK_Q=bq, BLOCK_D=bd,
                    COMPUTE=tl_compute,
                )  # fmt: skip
        return grad_value.to(value.dtype), None, None, grad_loc, grad_attn, None


def ms_deform_attn_triton(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    spatial_shapes_list: Sequence[tuple[int, int]] | None = None,
    block_q: int | None = None,
) -> Tensor:
    """:func:`~detrkit.models.ops.ms_deform_attn.ms_deform_attn_reference` with Triton kernels.

    Same arguments, shapes and result (``[B, Q, nH * Dh]`` in ``value``'s dtype). Unlike the
    reference, ``level_start_index`` is used (read on the device, like the shapes, so no host sync).
    ``spatial_shapes_list`` only serves the shape check here; without it the shapes are read back
    once for the check, as the reference does. ``block_q`` (a power of two) overrides the number of
    queries per program (benchmarks).
    """
    if not supports(value.device):
        raise RuntimeError(
            f"ms_deform_attn_triton: the Triton kernels cannot run on {value.device} tensors "
            + (
                "(triton is not installed)"
                if not available()
                else "(CUDA, or the CPU with TRITON_INTERPRET=1)"
            )
        )
    b, s, n_heads, head_dim = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = (
        [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        if spatial_shapes_list is None
        else [(int(h), int(w)) for h, w in spatial_shapes_list]
    )
    if len(shapes) != n_levels or sum(h * w for h, w in shapes) != s:
        raise ValueError(
            f"spatial shapes {shapes} do not match value [B, S={s}, ...] and {n_levels} sampling levels"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {list(attention_weights.shape)} do not match sampling_locations "
            f"{list(sampling_locations.shape)}"
        )
    return _MSDeformAttnFunction.apply(
        value.contiguous(),
        spatial_shapes.to(value.device).contiguous(),  # no-ops when already there, as the model passes them
        level_start_index.to(value.device).contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        block_q,
    )
