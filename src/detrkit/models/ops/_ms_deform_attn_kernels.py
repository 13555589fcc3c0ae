"""Triton kernels of :mod:`detrkit.models.ops.ms_deform_attn_triton` (imported on first use only).

Triton decides at ``@triton.jit`` time, i.e. when this module is imported, whether the kernels are
compiled for the GPU or run by its interpreter (``TRITON_INTERPRET=1``, host execution on CPU
tensors). Layouts (all contiguous): value ``[B, S, nH, Dh]``, locations ``[B, Q, nH, L, P, 2]``,
weights ``[B, Q, nH, L, P]``, output ``[B, Q, nH, Dh]``; ``shapes`` ``int64[L, 2]`` ``(H_l, W_l)``,
``starts`` ``int64[L]``. ``COMPUTE`` is the arithmetic dtype (float32 or float64).
"""

import triton
import triton.language as tl


@triton.jit
def _corner(value_ptr, v_row0, start, xi, yi, w_l, h_l, row_stride, d, q_mask, d_mask, COMPUTE: tl.constexpr):
    """One bilinear neighbour: its ``[BLOCK_Q, BLOCK_D]`` value tile (zeros outside), offsets, mask."""
    inside = q_mask & (xi >= 0) & (xi < w_l) & (yi >= 0) & (yi < h_l)
    rows = v_row0 + (start + yi * w_l + xi).to(tl.int64) * row_stride
    offs = rows[:, None] + d[None, :]
    mask = inside[:, None] & d_mask[None, :]
    v = tl.load(value_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    return v, offs, mask


@triton.jit
def ms_deform_attn_fwd(
    value_ptr, shapes_ptr, start_ptr, loc_ptr, attn_ptr, out_ptr,
    S, Q,
    NH: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr,
):  # fmt: skip
    pid_q = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // NH).to(tl.int64)
    h = bh % NH
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_mask = q < Q
    d_mask = d < DH
    qh = (b * Q + q) * NH + h  # [BLOCK_Q] int64: index of (b, q, h)
    v_row0 = (b * S * NH + h) * DH  # value[b, 0, h, 0]
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=COMPUTE)
    for lvl in range(L):
        h_l = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
        w_l = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(start_ptr + lvl).to(tl.int32)
        for pt in range(P):
            idx = (qh * L + lvl) * P + pt
            x = tl.load(loc_ptr + 2 * idx, mask=q_mask, other=0.0).to(COMPUTE)
            y = tl.load(loc_ptr + 2 * idx + 1, mask=q_mask, other=0.0).to(COMPUTE)
            a = tl.load(attn_ptr + idx, mask=q_mask, other=0.0).to(COMPUTE)
            px = x * w_l.to(COMPUTE) - 0.5
            py = y * h_l.to(COMPUTE) - 0.5
            x0f = tl.floor(px)
            y0f = tl.floor(py)
            fx = px - x0f
            fy = py - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            v, _, _ = _corner(value_ptr, v_row0, start, x0, y0, w_l, h_l, NH * DH, d, q_mask, d_mask, COMPUTE)
            acc += (a * (1 - fx) * (1 - fy))[:, None] * v
            v, _, _ = _corner(
                value_ptr, v_row0, start, x0 + 1, y0, w_l, h_l, NH * DH, d, q_mask, d_mask, COMPUTE
            )
            acc += (a * fx * (1 - fy))[:, None] * v
            v, _, _ = _corner(
                value_ptr, v_row0, start, x0, y0 + 1, w_l, h_l, NH * DH, d, q_mask, d_mask, COMPUTE
            )
            acc += (a * (1 - fx) * fy)[:, None] * v
            v, _, _ = _corner(
                value_ptr, v_row0, start, x0 + 1, y0 + 1, w_l, h_l, NH * DH, d, q_mask, d_mask, COMPUTE
            )
            acc += (a * fx * fy)[:, None] * v
    out_offs = qh[:, None] * DH + d[None, :]
    tl.store(out_ptr + out_offs, acc, mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _bwd_corner(
    value_ptr, grad_value_ptr, v_row0, start, xi, yi, w_l, h_l, row_stride, d, q_mask, d_mask, go, a, cw,
    COMPUTE: tl.constexpr,
):  # fmt: skip
    """Scatter ``a * cw * grad_out`` into the value's gradient; return ``<grad_out, value>`` per query."""
    v, offs, mask = _corner(
        value_ptr, v_row0, start, xi, yi, w_l, h_l, row_stride, d, q_mask, d_mask, COMPUTE
    )
    tl.atomic_add(grad_value_ptr + offs, (a * cw)[:, None] * go, mask=mask)
    return tl.sum(go * v, axis=1)


@triton.jit
def ms_deform_attn_bwd(
    value_ptr, shapes_ptr, start_ptr, loc_ptr, attn_ptr, grad_out_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
    S, Q,
    NH: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr,
):  # fmt: skip
    pid_q = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // NH).to(tl.int64)
    h = bh % NH
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_mask = q < Q
    d_mask = d < DH
    qh = (b * Q + q) * NH + h
    v_row0 = (b * S * NH + h) * DH
    go_offs = qh[:, None] * DH + d[None, :]
    go = tl.load(grad_out_ptr + go_offs, mask=q_mask[:, None] & d_mask[None, :], other=0.0).to(COMPUTE)
    for lvl in range(L):
        h_l = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
        w_l = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(start_ptr + lvl).to(tl.int32)
        for pt in range(P):
            idx = (qh * L + lvl) * P + pt
            x = tl.load(loc_ptr + 2 * idx, mask=q_mask, other=0.0).to(COMPUTE)
            y = tl.load(loc_ptr + 2 * idx + 1, mask=q_mask, other=0.0).to(COMPUTE)
            a = tl.load(attn_ptr + idx, mask=q_mask, other=0.0).to(COMPUTE)
            px = x * w_l.to(COMPUTE) - 0.5
            py = y * h_l.to(COMPUTE) - 0.5
            x0f = tl.floor(px)
            y0f = tl.floor(py)
            fx = px - x0f
            fy = py - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            # <grad_out, v> at the four neighbours (nw, ne, sw, se), scattering as we go
            g_nw = _bwd_corner(
                value_ptr, grad_value_ptr, v_row0, start, x0, y0, w_l, h_l, NH * DH, d, q_mask, d_mask,
                go, a, (1 - fx) * (1 - fy), COMPUTE,
            )  # fmt: skip
            g_ne = _bwd_corner(
                value_ptr, grad_value_ptr, v_row0, start, x0 + 1, y0, w_l, h_l, NH * DH, d, q_mask, d_mask,
                go, a, fx * (1 - fy), COMPUTE,
            )  # fmt: skip
            g_sw = _bwd_corner(
                value_ptr, grad_value_ptr, v_row0, start, x0, y0 + 1, w_l, h_l, NH * DH, d, q_mask, d_mask,
                go, a, (1 - fx) * fy, COMPUTE,
            )  # fmt: skip
            g_se = _bwd_corner(
                value_ptr, grad_value_ptr, v_row0, start, x0 + 1, y0 + 1, w_l, h_l, NH * DH, d, q_mask,
                d_mask, go, a, fx * fy, COMPUTE,
            )  # fmt: skip
            g_attn = (1 - fx) * (1 - fy) * g_nw + fx * (1 - fy) * g_ne + (1 - fx) * fy * g_sw + fx * fy * g_se
            # d/dfx and d/dfy of the bilinear weights; d px / dx = W_l, d py / dy = H_l
            g_fx = (1 - fy) * (g_ne - g_nw) + fy * (g_se - g_sw)
            g_fy = (1 - fx) * (g_sw - g_nw) + fx * (g_se - g_ne)
            tl.store(grad_attn_ptr + idx, g_attn, mask=q_mask)
            tl.store(grad_loc_ptr + 2 * idx, a * g_fx * w_l.to(COMPUTE), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * idx + 1, a * g_fy * h_l.to(COMPUTE), mask=q_mask)


# whether TRITON_INTERPRET was on at import: the kernels then run on the host, on CPU tensors
INTERPRETED = not isinstance(ms_deform_attn_fwd, triton.runtime.JITFunction)
