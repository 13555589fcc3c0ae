"""The Triton kernels of multi-scale deformable attention against the PyTorch reference.

On a CUDA machine the tests run the compiled kernels on the GPU. Without one, this file runs itself
again in a subprocess with ``TRITON_INTERPRET=1`` (Triton reads it when the kernels are defined, so
it must be set before that, and must not leak into the other tests of this process): the same tests
then run the kernels through Triton's interpreter on CPU tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels are not tested")

from detrkit.models.ops import ms_deform_attn_triton as mdt  # noqa: E402
from detrkit.models.ops.ms_deform_attn import (  # noqa: E402
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_backend,
    ms_deform_attn_reference,
)

if mdt.interpreting():
    DEVICE: torch.device | None = torch.device("cpu")
elif torch.cuda.is_available():
    DEVICE = torch.device("cuda")
else:
    DEVICE = None  # the kernels cannot run here: see test_kernels_in_triton_interpreter

SHAPES = [(6, 8), (3, 4)]


def _inputs(dtype=torch.float32, b=2, q=5, n_heads=2, head_dim=8, n_points=3, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    s = int(spatial.prod(1).sum())
    value = torch.randn(b, s, n_heads, head_dim, generator=g, dtype=dtype)
    # [-0.3, 1.3]: a good share of the points, and of the neighbours of the others, lie outside the map
    loc = torch.rand(b, q, n_heads, len(shapes), n_points, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    attn = torch.rand(b, q, n_heads, len(shapes), n_points, generator=g, dtype=dtype)
    return [t.to(DEVICE) for t in (value, spatial, start, loc, attn)]


if not mdt.interpreting():

    def test_kernels_compile_for_sm90(monkeypatch, tmp_path):
        """The interpreter is more lenient than the compiler: compile both kernels to a cubin for an
        H100 (sm_90, DETR-R50 sizes) on the host; no GPU needed, only triton's bundled ptxas."""
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compiled for real, not found in a cache
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, compile

        from detrkit.models.ops import _ms_deform_attn_kernels as kernels

        const = {
            "NH": 8,
            "DH": 32,
            "L": 4,
            "P": 4,
            "BLOCK_Q": 64,
            "BLOCK_D": 32,
            "COMPUTE": kernels.tl.float32,
        }
        tensors = {"value_ptr": "*fp32", "shapes_ptr": "*i64", "start_ptr": "*i64", "loc_ptr": "*fp32"}
        tensors["attn_ptr"] = "*fp32"
        ints = {"S": "i32", "Q": "i32", **dict.fromkeys(const, "constexpr")}
        fwd = {**tensors, "out_ptr": "*fp32", **ints}
        bwd = {**tensors, "grad_out_ptr": "*fp32", "grad_value_ptr": "*fp32", "grad_loc_ptr": "*fp32"}
        bwd = {**bwd, "grad_attn_ptr": "*fp32", **ints}
        for fn, signature in ((kernels.ms_deform_attn_fwd, fwd), (kernels.ms_deform_attn_bwd, bwd)):
            assert list(signature) == fn.arg_names
            compiled = compile(ASTSource(fn, signature, constexprs=const), target=GPUTarget("cuda", 90, 32))
            assert len(compiled.asm["cubin"]) > 0


if DEVICE is None:

    def test_kernels_in_triton_interpreter():
        """Run this file's kernel tests in a subprocess under TRITON_INTERPRET=1 (no GPU here)."""
        env = {
            **os.environ,
            "TRITON_INTERPRET": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        env.pop("DETRKIT_MS_DEFORM_ATTN", None)
        root = Path(__file__).resolve().parents[2]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, (
            f"kernel tests under TRITON_INTERPRET=1 failed:\n{proc.stdout}\n{proc.stderr}"
        )
        assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout

else:

    @pytest.mark.parametrize(("head_dim", "block_q"), [(8, None), (6, 2)])
    def test_forward_and_gradients_match_reference(head_dim, block_q):
        # head_dim 6 masks channels of an 8-wide tile; block_q 2 splits 5 queries into 3 programs
        value, spatial, start, loc, attn = _inputs(head_dim=head_dim)
        args = [
            t.requires_grad_(True) if t.is_floating_point() else t for t in (value, spatial, start, loc, attn)
        ]
        out = mdt.ms_deform_attn_triton(*args, spatial_shapes_list=SHAPES, block_q=block_q)
        ref = ms_deform_attn_reference(*args, spatial_shapes_list=SHAPES)
        assert out.shape == ref.shape == (2, 5, 2 * head_dim) and out.dtype == ref.dtype
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        grad_out = torch.randn_like(out)
        inputs = (args[0], args[3], args[4])
        ours = torch.autograd.grad(out, inputs, grad_out)
        expected = torch.autograd.grad(ref, inputs, grad_out)
        for name, a, e in zip(
            ("value", "sampling_locations", "attention_weights"), ours, expected, strict=True
        ):
            assert a.shape == e.shape and a.dtype == e.dtype, name
            assert e.abs().max() > 0, name  # the check below is not vacuous
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    def test_borders_and_far_outside():
        """Points on the map's edges, on pixel centres, and far outside (zeros, zero gradients)."""
        value, spatial, start, _, attn = _inputs(b=1, q=4, n_heads=1, n_points=2)
        h, w = SHAPES[0]
        # per query two points; (0.5 / w, 1.5 / h) is a pixel centre of level 0, exact in binary
        xy = [
            [0.0, 0.0],
            [1.0, 1.0],
            [-3.0, 0.5],
            [0.5, 7.0],
            [0.5 / w, 1.5 / h],
            [1.0 + 0.4 / w, 0.5],
            [0, 1],
            [1, 0],
        ]
        loc = (
            torch.tensor(xy, dtype=torch.float32, device=DEVICE)
            .view(1, 4, 1, 1, 2, 2)
            .repeat(1, 1, 1, 2, 1, 1)
        )
        loc.requires_grad_(True)
        value.requires_grad_(True)
        out = mdt.ms_deform_attn_triton(value, spatial, start, loc, attn, spatial_shapes_list=SHAPES)
        ref = ms_deform_attn_reference(value, spatial, start, loc, attn, spatial_shapes_list=SHAPES)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        (g_loc,) = torch.autograd.grad(out.sum(), loc)
        (e_loc,) = torch.autograd.grad(ref.sum(), loc)
        far = torch.tensor([False, True, False, False], device=DEVICE)  # query 1: (-3, .5) and (.5, 7)
        assert (g_loc[0, far] == 0).all() and (e_loc[0, far] == 0).all()
        # query 2's first point is on a pixel centre (a kink): both take the derivative to the right
        torch.testing.assert_close(g_loc, e_loc, rtol=1e-4, atol=1e-4)

    def test_gradcheck_float64():
        value, spatial, start, loc, attn = _inputs(torch.float64, b=1, q=3, n_heads=2, head_dim=3, n_points=2)
        # away from pixel centres and edges, where bilinear sampling has kinks
        loc = loc.clamp(-0.2, 1.2).add(0.0123).detach().requires_grad_(True)
        value.requires_grad_(True)
        attn.requires_grad_(True)

        def fn(v, sl, aw):
            return mdt.ms_deform_attn_triton(v, spatial, start, sl, aw, spatial_shapes_list=SHAPES)

        assert fn(value, loc, attn).dtype == torch.float64
        assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-6, fast_mode=True)

    def test_bfloat16_value_float32_locations():
        value, spatial, start, loc, attn = _inputs()
        value = value.bfloat16()
        out = mdt.ms_deform_attn_triton(value, spatial, start, loc, attn, spatial_shapes_list=SHAPES)
        ref = ms_deform_attn_reference(value, spatial, start, loc, attn, spatial_shapes_list=SHAPES)
        assert out.dtype == torch.bfloat16
        # both sample the same bf16 values in float32, then round once
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)

    def test_module_dispatches_to_triton(monkeypatch):
        """MSDeformAttn with DETRKIT_MS_DEFORM_ATTN=triton: same output and parameter gradients."""
        torch.manual_seed(0)
        m = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2).to(DEVICE)
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.2)
        spatial = torch.tensor(SHAPES, device=DEVICE)
        start = torch.tensor([0, 48], device=DEVICE)
        query = torch.randn(2, 4, 16, device=DEVICE)
        memory = torch.randn(2, 60, 16, device=DEVICE)
        refp = torch.rand(2, 4, 2, 2, device=DEVICE)
        results = {}
        for backend in ("torch", "triton"):
            monkeypatch.setenv("DETRKIT_MS_DEFORM_ATTN", backend)
            assert ms_deform_attn_backend(DEVICE) == backend
            m.zero_grad()
            out = m(query, refp, memory, spatial, SHAPES, start)
            out.square().sum().backward()
            results[backend] = (out.detach(), [p.grad.clone() for p in m.parameters()])
        torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
        for a, e in zip(results["triton"][1], results["torch"][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
        monkeypatch.delenv("DETRKIT_MS_DEFORM_ATTN")
        # by default the CPU keeps the reference (even under the interpreter); CUDA takes the kernels
        assert ms_deform_attn_backend(DEVICE) == ("triton" if DEVICE.type == "cuda" else "torch")
        value, spatial, start, loc, attn = _inputs()
        torch.testing.assert_close(
            ms_deform_attn(value, spatial, start, loc, attn),
            ms_deform_attn_reference(value, spatial, start, loc, attn),
            rtol=1e-5,
            atol=1e-5,
        )

    def test_rejects_mismatched_shapes():
        value, spatial, start, loc, attn = _inputs()
        with pytest.raises(ValueError, match="spatial shapes"):
            mdt.ms_deform_attn_triton(value, spatial, start, loc, attn, spatial_shapes_list=[(6, 8), (3, 3)])
        with pytest.raises(ValueError, match="attention_weights"):
            mdt.ms_deform_attn_triton(value, spatial, start, loc, attn[..., :2], spatial_shapes_list=SHAPES)

    def test_no_queries():
        value, spatial, start, loc, attn = _inputs(q=0)
        value.requires_grad_(True)
        out = mdt.ms_deform_attn_triton(value, spatial, start, loc, attn, spatial_shapes_list=SHAPES)
        assert out.shape == (2, 0, 16)
        (grad,) = torch.autograd.grad(out.sum(), value)
        assert grad.shape == value.shape and not grad.any()
