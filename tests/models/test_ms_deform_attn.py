"""Multi-scale deformable attention: against a hand-written bilinear sampler, against Hugging Face
transformers' pure-PyTorch implementation, gradcheck, and the module's paper init."""

from __future__ import annotations

import math

import pytest
import torch

from detrkit.models.ops import MSDeformAttn, ms_deform_attn
from detrkit.models.ops.ms_deform_attn import ms_deform_attn_reference, ms_deform_attn_torch

SHAPES = [(6, 8), (3, 4), (2, 2)]


def _inputs(dtype=torch.float32, b=2, q=5, n_heads=2, head_dim=4, n_points=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(SHAPES, dtype=torch.int64)
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    s = int(shapes.prod(1).sum())
    value = torch.randn(b, s, n_heads, head_dim, generator=g, dtype=dtype)
    # Some locations outside [0, 1] exercise the zero padding.
    loc = torch.rand(b, q, n_heads, len(SHAPES), n_points, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    attn = torch.rand(b, q, n_heads, len(SHAPES) * n_points, generator=g, dtype=dtype).softmax(-1)
    attn = attn.view(b, q, n_heads, len(SHAPES), n_points)
    return value, shapes, start, loc, attn


def _bilinear_by_hand(img, x, y):
    """img [C, H, W]; (x, y) in [0, 1] of the map -> [C], zeros outside (align_corners=False)."""
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(c, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wx * wy * img[:, yy, xx]
    return out


def test_matches_hand_computation():
    value, shapes, start, loc, attn = _inputs(torch.float64, b=1, q=3, n_points=2)
    out = ms_deform_attn(value, shapes, start, loc, attn)
    b, q, n_heads, n_levels, n_points, _ = loc.shape
    head_dim = value.shape[-1]
    expected = torch.zeros(b, q, n_heads, head_dim, dtype=torch.float64)
    for bi in range(b):
        for qi in range(q):
            for hi in range(n_heads):
                for li, (h, w) in enumerate(SHAPES):
                    s0 = int(start[li])
                    img = value[bi, s0 : s0 + h * w, hi].T.reshape(head_dim, h, w)
                    for pi in range(n_points):
                        x, y = loc[bi, qi, hi, li, pi].tolist()
                        expected[bi, qi, hi] += attn[bi, qi, hi, li, pi] * _bilinear_by_hand(img, x, y)
    torch.testing.assert_close(out, expected.flatten(2), rtol=1e-10, atol=1e-10)


def test_matches_transformers_pytorch_implementation():
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    value, shapes, start, loc, attn = _inputs()
    ours = ms_deform_attn(value, shapes, start, loc, attn, spatial_shapes_list=SHAPES)
    ref = MultiScaleDeformableAttention()(value, shapes, SHAPES, start, loc, attn, 64)
    assert ours.shape == (2, 5, 2 * 4)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # The shapes may also come from the tensor alone (one host read).
    torch.testing.assert_close(ms_deform_attn(value, shapes, start, loc, attn), ours)


def test_gradcheck_float64():
    value, shapes, start, loc, attn = _inputs(torch.float64, b=1, q=2, n_heads=2, head_dim=2, n_points=2)
    # Keep locations away from pixel centres' kinks: bilinear sampling is piecewise linear.
    loc = (loc.clamp(0.05, 0.95) + 0.013).detach()
    value.requires_grad_(True)
    loc.requires_grad_(True)
    attn.requires_grad_(True)

    def fn(v, sl, aw):
        return ms_deform_attn(v, shapes, start, sl, aw, spatial_shapes_list=SHAPES)

    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-5)


def test_rejects_mismatched_shapes():
    value, shapes, start, loc, attn = _inputs()
    with pytest.raises(ValueError, match="spatial shapes"):
        ms_deform_attn(value, shapes, start, loc, attn, spatial_shapes_list=[(6, 8), (3, 4), (2, 3)])


def test_bf16_value_keeps_float32_locations():
    value, shapes, start, loc, attn = _inputs()
    out = ms_deform_attn(value.bfloat16(), shapes, start, loc, attn, spatial_shapes_list=SHAPES)
    assert out.dtype == torch.bfloat16
    ref = ms_deform_attn(value.bfloat16().float(), shapes, start, loc, attn, spatial_shapes_list=SHAPES)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_module_init_as_paper():
    m = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    bias = m.sampling_offsets.bias.view(4, 3, 2, 2)
    # Head h points along angle 2*pi*h/4, scaled to the unit square; point p at distance p + 1.
    torch.testing.assert_close(bias[0, :, 0], torch.tensor([[1.0, 0.0]] * 3))
    torch.testing.assert_close(bias[1, :, 1], torch.tensor([[0.0, 2.0]] * 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[2, 1, 1], torch.tensor([-2.0, 0.0]), atol=1e-6, rtol=0)
    assert m.sampling_offsets.weight.abs().sum() == 0
    assert m.attention_weights.weight.abs().sum() == 0 and m.attention_weights.bias.abs().sum() == 0
    assert m.value_proj.bias.abs().sum() == 0 and m.output_proj.bias.abs().sum() == 0


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_matches_transformers(ref_dim):
    from transformers import DeformableDetrConfig
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrMultiscaleDeformableAttention,
    )

    torch.manual_seed(0)
    d_model, n_heads, n_points, b, q = 32, 4, 2, 2, 7
    config = DeformableDetrConfig(d_model=d_model, num_feature_levels=len(SHAPES))
    ref = DeformableDetrMultiscaleDeformableAttention(config, num_heads=n_heads, n_points=n_points).eval()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ours = MSDeformAttn(d_model=d_model, n_levels=len(SHAPES), n_heads=n_heads, n_points=n_points).eval()
    ours.load_state_dict(ref.state_dict())

    shapes = torch.tensor(SHAPES)
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    s = int(shapes.prod(1).sum())
    query, pos = torch.randn(b, q, d_model), torch.randn(b, q, d_model)
    memory = torch.randn(b, s, d_model)
    valid = torch.rand(b, s) > 0.2
    refp = torch.rand(b, q, len(SHAPES), ref_dim)
    expected, _ = ref(
        query,
        attention_mask=valid,
        encoder_hidden_states=memory,
        position_embeddings=pos,
        reference_points=refp,
        spatial_shapes=shapes,
        spatial_shapes_list=SHAPES,
        level_start_index=start,
    )
    out = ours(query + pos, refp, memory, shapes, SHAPES, start, value_valid_mask=valid)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def _level_edges_inputs(dtype):
    """Locations on and around each level's edges: pixel coordinate -1 (the last with a neighbour in
    the level), just inside/outside, W_l - 1e-3, W_l (none left), far outside; y likewise."""
    value, shapes, start, _, attn = _inputs(dtype, b=1, q=4, n_heads=2, head_dim=3, n_points=8)
    edges = []
    for h, w in SHAPES:
        px = torch.tensor([-1.0, -1.0 + 1e-3, -1.0 - 1e-3, w - 1e-3, w, w + 0.7, -5.0, w / 2], dtype=dtype)
        py = torch.tensor(
            [h / 2, -1.0 + 1e-3, h - 1e-3, -1.0 - 1e-3, h + 0.2, h / 3, h - 0.5, -1.0], dtype=dtype
        )
        edges.append(torch.stack([(px + 0.5) / w, (py + 0.5) / h], -1))  # [P, 2]
    loc = torch.stack(edges).view(1, 1, 1, len(SHAPES), 8, 2).repeat(1, 4, 2, 1, 1, 1)
    loc = loc + torch.rand(loc.shape, generator=torch.Generator().manual_seed(1), dtype=dtype) * torch.tensor(
        [0.0, 0.0, 0.0, 1.0]
    ).to(dtype).view(1, 4, 1, 1, 1, 1)  # query 3: jittered
    return value, shapes, start, loc, attn


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("edges", [False, True])
def test_stacked_matches_reference(dtype, edges):
    """ms_deform_attn_torch (one grid_sample over the levels side by side) against the per-level
    reference: outputs and all gradients, random points (a fifth outside the map) or edge cases."""
    value, shapes, start, loc, attn = _level_edges_inputs(dtype) if edges else _inputs(dtype, head_dim=5)
    if not edges:
        loc = (loc - 0.5) * 1.5 + 0.5  # [-0.25, 1.25]
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 2e-6}
    results = []
    for fn in (ms_deform_attn_torch, ms_deform_attn_reference):
        inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        out = fn(inputs[0], shapes, start, inputs[1], inputs[2], spatial_shapes_list=SHAPES)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        results.append((out, *torch.autograd.grad(out, inputs, grad_out)))
    if edges:  # points 0, 4, 7 lie exactly on a kink where the gradient jumps (x = -1, W_l; y = -1)
        for r in results:
            r[2][:, :3, :, :, [0, 4, 7]] = 0  # the jittered query 3 keeps them
    for name, a, e in zip(("out", "value", "loc", "attn"), *results, strict=True):
        assert e.abs().max() > 0, name
        torch.testing.assert_close(a, e, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_stacked_without_autograd_matches_reference():
    """No autograd (inference): the samples are weighted in place; same output as the reference,
    and the inputs are left unchanged."""
    value, shapes, start, loc, attn = _inputs(torch.float32, head_dim=5)
    copies = [t.clone() for t in (value, loc, attn)]
    with torch.inference_mode():
        out = ms_deform_attn_torch(value, shapes, start, loc, attn, spatial_shapes_list=SHAPES)
        ref = ms_deform_attn_reference(value, shapes, start, loc, attn, spatial_shapes_list=SHAPES)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
    for a, b in zip((value, loc, attn), copies, strict=True):
        assert torch.equal(a, b)


def test_stacked_gradcheck_float64():
    value, shapes, start, loc, attn = _inputs(torch.float64, b=1, q=2, n_heads=2, head_dim=2, n_points=2)
    loc = (loc * 1.3 - 0.15 + 0.013).detach().requires_grad_(True)  # some outside, away from kinks
    value.requires_grad_(True)
    attn.requires_grad_(True)

    def fn(v, sl, aw):
        return ms_deform_attn_torch(v, shapes, start, sl, aw, spatial_shapes_list=SHAPES)

    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-5)


def test_backend_selection(monkeypatch):
    from detrkit.errors import ConfigError
    from detrkit.models.ops import ms_deform_attn_triton as mdt
    from detrkit.models.ops.ms_deform_attn import BACKEND_ENV, ms_deform_attn_backend

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    # auto: PyTorch on the CPU whatever triton can do; the kernels on CUDA when they run there
    monkeypatch.setattr(mdt, "supports", lambda device: True)
    assert ms_deform_attn_backend(cpu) == "torch"
    assert ms_deform_attn_backend(cuda) == "triton"
    for forced in ("torch", "reference"):
        monkeypatch.setenv(BACKEND_ENV, forced)
        assert ms_deform_attn_backend(cuda) == forced
    monkeypatch.setenv(BACKEND_ENV, " Triton ")
    assert ms_deform_attn_backend(cpu) == "triton"  # forced (the CPU under TRITON_INTERPRET=1)
    with monkeypatch.context() as m:
        m.setattr(torch.jit, "is_tracing", lambda: True)
        assert ms_deform_attn_backend(cuda) == "reference"  # ONNX export traces the reference
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        assert ms_deform_attn_backend(cuda) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "triton")
    # triton missing: auto falls back, a forced choice says why
    monkeypatch.setattr(mdt, "supports", lambda device: False)
    monkeypatch.setattr(mdt, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"DETRKIT_MS_DEFORM_ATTN=triton: .*triton is not installed"):
        ms_deform_attn_backend(cuda)
    monkeypatch.setattr(mdt, "available", lambda: True)
    with pytest.raises(ConfigError, match="need CUDA tensors"):
        ms_deform_attn_backend(cpu)
    monkeypatch.setenv(BACKEND_ENV, "auto")
    assert ms_deform_attn_backend(cuda) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(
        ConfigError, match=r"DETRKIT_MS_DEFORM_ATTN='cuda': expected one of auto, torch, reference, triton"
    ):
        ms_deform_attn_backend(cpu)
    # the public function goes through the selection (a bad value is reported, not ignored)
    value, shapes, start, loc, attn = _inputs()
    with pytest.raises(ConfigError):
        ms_deform_attn(value, shapes, start, loc, attn)
    for forced, fn in (("torch", ms_deform_attn_torch), ("reference", ms_deform_attn_reference)):
        monkeypatch.setenv(BACKEND_ENV, forced)
        torch.testing.assert_close(
            ms_deform_attn(value, shapes, start, loc, attn),
            fn(value, shapes, start, loc, attn),
            rtol=0,
            atol=0,
        )
    assert not torch.equal(
        ms_deform_attn_torch(value, shapes, start, loc, attn),
        ms_deform_attn_reference(value, shapes, start, loc, attn),
    )
