"""Multi-scale deformable attention: its share of a training step, and the Triton kernels' speed.

Two modes:

- ``--share`` (CPU or CUDA): one training step (forward + loss + backward + AdamW) of each ``--models``
  (default ``deformable-detr-tiny`` and ``deformable-detr-r50``, random weights, 10 classes) on
  synthetic images of ``--hw``; ``torch.profiler`` over the step gives the top ops; every call of
  :func:`ms_deform_attn` in the step is captured and replayed alone (forward + backward with a random
  output gradient) to time the attention's own share of the step. Each is repeated ``--repeats``
  times (one step, then the replays, per repeat), median and spread reported; ``--backends``
  compares implementations (``DETRKIT_MS_DEFORM_ATTN`` values) in the same run, interleaved.
- ``--kernels`` (CUDA): forward and forward+backward time of the Triton kernels, the default
  PyTorch path (``ms_deform_attn_torch``) and the per-level reference, and the kernels' parity with
  the reference, at Deformable-DETR-R50 sizes: batch 8, 800x1088 images (levels
  /8, /16, /32, /64), 8 heads, head dim 32, 4 levels, 4 points; the decoder's 300 queries and the
  encoder's queries (one per position of all levels), fp32 and bf16 values.

    OMP_NUM_THREADS=1 python bench/ms_deform_attn_bench.py --share --device cpu --hw 192x256 \\
        --backends reference torch
    python bench/ms_deform_attn_bench.py --kernels --out results.json

Writes JSON to ``--out`` (default ``bench/results/ms_deform_attn_<mode>_<device>.json``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from detrkit.models.ops import ms_deform_attn_triton as mdt

# the module (the package's ``ms_deform_attn`` attribute is the function of the same name)
mda = importlib.import_module("detrkit.models.ops.ms_deform_attn")

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs}


def _batch(batch: int, h: int, w: int, device: torch.device, num_classes: int = 10):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, h, w, generator=g)
    mask = torch.ones(batch, h, w, dtype=torch.bool)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(2, 13, (1,), generator=g))
        boxes = torch.cat(
            [torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1
        )
        targets.append(
            {"boxes": boxes.to(device), "labels": torch.randint(0, num_classes, (n,), generator=g).to(device)}
        )
    return images.to(device), mask.to(device), targets


def share(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per model: step time, replayed attention time (fwd+bwd of every call), profiler top ops."""
    return {name: _share_one(name, args, device) for name in args.models}


def _capture_calls(step) -> list[tuple[tuple, dict]]:
    """Run ``step()`` once, recording the (detached) arguments of every :func:`ms_deform_attn` call."""
    calls: list[tuple] = []
    original = mda.ms_deform_attn

    def recording(*a, **k):
        calls.append((tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in a), k))
        return original(*a, **k)

    mda.ms_deform_attn = recording  # MSDeformAttn.forward looks the function up in its module
    try:
        step()
    finally:
        mda.ms_deform_attn = original
    return calls


def _replay(captured: list[tuple[tuple, dict]], grads: list[torch.Tensor]) -> None:
    for (a, k), g in zip(captured, grads, strict=True):
        value, shapes, start, loc, attn = a
        inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        out = mda.ms_deform_attn(inputs[0], shapes, start, inputs[1], inputs[2], **k)
        torch.autograd.grad(out, inputs, g)


def _profile_step(step, device: torch.device) -> tuple[list[dict[str, Any]], float]:
    """Top ops by self time over one step, and the share of the ``grid_sampler`` ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    top = [
        {"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
        for e in events[:12]
    ]
    return top, sum(getattr(e, key) for e in events if "grid_sampler" in e.key) / total


def _share_one(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from detrkit.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=10).to(device).train()
    images, mask, targets = _batch(args.batch, *args.hw, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    def step() -> None:
        model(images, mask, targets)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    backends = args.backends or [os.environ.get(mda.BACKEND_ENV, "auto")]
    saved_env = os.environ.get(mda.BACKEND_ENV)
    step()  # warm-up
    captured = _capture_calls(step)
    grads = [torch.randn_like(mda.ms_deform_attn(*a, **k)) for a, k in captured]
    times: dict[str, tuple[list[float], list[float]]] = {backend: ([], []) for backend in backends}
    try:
        for backend in backends:  # warm up each (first Triton calls compile)
            os.environ[mda.BACKEND_ENV] = backend
            step()
        for _ in range(args.repeats):  # interleaved, so that drifts in machine load hit all alike
            for backend in backends:
                os.environ[mda.BACKEND_ENV] = backend
                times[backend][0].extend(_timed(step, device, 1))
                times[backend][1].extend(_timed(lambda: _replay(captured, grads), device, 1))
        result: dict[str, Any] = {
            "calls_per_step": len(captured),
            "value_shapes": sorted({str(list(a[0].shape)) for a, _ in captured}),
            "query_counts": sorted({a[3].shape[1] for a, _ in captured}),
        }
        for backend in backends:
            os.environ[mda.BACKEND_ENV] = backend
            step_s, attn_s = times[backend]
            top, grid = _profile_step(step, device)
            result[backend] = {
                "resolved": mda.ms_deform_attn_backend(device),
                "step_s": _summary(step_s),
                "ms_deform_attn_fwd_bwd_s": _summary(attn_s),
                "share_of_step": statistics.median(attn_s) / statistics.median(step_s),
                "profiler_grid_sampler_share": grid,
                "profiler_top_self": top,
            }
            print(
                f"{name} [{backend}]: step {statistics.median(step_s):.3f}s [{min(step_s):.3f}, {max(step_s):.3f}], "
                f"ms_deform_attn fwd+bwd {statistics.median(attn_s):.3f}s [{min(attn_s):.3f}, {max(attn_s):.3f}] "
                f"({len(captured)} calls) = {result[backend]['share_of_step']:.1%} of the step; "
                f"grid_sampler ops {grid:.1%} of profiled self time",
                flush=True,
            )
    finally:
        if saved_env is None:
            os.environ.pop(mda.BACKEND_ENV, None)
        else:
            os.environ[mda.BACKEND_ENV] = saved_env
    return result


def _attn_inputs(b, q, shapes, n_heads, head_dim, n_points, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.int64, device=device)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    s = int(spatial.prod(1).sum())
    value = torch.randn(b, s, n_heads, head_dim, generator=g, device=device).to(dtype)
    loc = torch.rand(b, q, n_heads, len(shapes), n_points, 2, generator=g, device=device) * 1.1 - 0.05
    attn = torch.rand(b, q, n_heads, len(shapes), n_points, generator=g, device=device)
    attn = (attn / attn.sum((-1, -2), keepdim=True)).contiguous()
    return value, spatial, start, loc, attn


def _time_backend(fn, args_, shapes, device: torch.device, iters: int) -> tuple[dict[str, Any], list]:
    """Times of ``fn`` (forward alone, forward+backward) on ``args_``; its output and the gradients
    of the value, locations and weights (float32)."""
    value, spatial, start, loc, attn = args_
    inputs = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]

    def fwd() -> None:
        with torch.no_grad():
            fn(inputs[0], spatial, start, inputs[1], inputs[2], spatial_shapes_list=shapes)

    def fwd_bwd() -> tuple:
        out = fn(inputs[0], spatial, start, inputs[1], inputs[2], spatial_shapes_list=shapes)
        return out, torch.autograd.grad(out, inputs, torch.ones_like(out))

    fwd_bwd()  # compile / warm up
    fwd()
    timing: dict[str, Any] = {
        "fwd_ms": _summary([t * 1e3 for t in _timed(fwd, device, iters)]),
        "fwd_bwd_ms": _summary([t * 1e3 for t in _timed(fwd_bwd, device, iters)]),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out, grads = fwd_bwd()
    if device.type == "cuda":
        timing["fwd_bwd_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return timing, [out.float(), *(g.float() for g in grads)]


def kernels(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Triton vs reference at Deformable-DETR-R50 sizes: time (fwd, fwd+bwd), max errors."""
    h, w = args.hw
    shapes = [(-(-h // s), -(-w // s)) for s in (8, 16, 32, 64)]  # ResNet strides, ceil
    s_total = sum(a * b for a, b in shapes)
    results: dict[str, Any] = {"levels": shapes, "batch": args.batch, "heads": 8, "head_dim": 32, "points": 4}
    cases = results["cases"] = []
    for where, q in (("decoder", args.queries), ("encoder", s_total)):
        for dtype in (torch.float32, torch.bfloat16):
            inputs = _attn_inputs(args.batch, q, shapes, 8, 32, 4, dtype, device)
            case: dict[str, Any] = {
                "where": where,
                "queries": q,
                "value_dtype": str(dtype).removeprefix("torch."),
            }
            outs = {}
            backends = (
                ("reference", mda.ms_deform_attn_reference),
                ("torch", mda.ms_deform_attn_torch),
                ("triton", mdt.ms_deform_attn_triton),
            )
            for backend, fn in backends:
                timing, outs[backend] = _time_backend(fn, inputs, shapes, device, args.iters)
                case.update({f"{backend}_{k}": v for k, v in timing.items()})
            if dtype == torch.float32:
                for bq in args.sweep_block_q:  # queries per program, against the default (64 for Dh 32)
                    fn = functools.partial(mdt.ms_deform_attn_triton, block_q=bq)
                    timing, _ = _time_backend(fn, inputs, shapes, device, args.iters)
                    case[f"triton_block_q{bq}_fwd_bwd_ms"] = timing["fwd_bwd_ms"]["median"]
            for impl in ("triton", "torch"):  # each against the per-level reference
                errs = {}
                for name, a, e in zip(
                    ("out", "value", "loc", "attn"), outs[impl], outs["reference"], strict=True
                ):
                    errs[name] = (a - e).abs().max().item()
                case[f"max_abs_err_{impl}"] = errs
            errors = case["max_abs_err_triton"]
            case["speedup_fwd"] = case["reference_fwd_ms"]["median"] / case["triton_fwd_ms"]["median"]
            case["speedup_fwd_bwd"] = (
                case["reference_fwd_bwd_ms"]["median"] / case["triton_fwd_bwd_ms"]["median"]
            )
            cases.append(case)
            print(
                f"{where} q={q} {case['value_dtype']}: fwd reference/torch/triton "
                + "/".join(f"{case[f'{k}_fwd_ms']['median']:.2f}" for k, _ in backends)
                + " ms, fwd+bwd "
                + "/".join(f"{case[f'{k}_fwd_bwd_ms']['median']:.2f}" for k, _ in backends)
                + f" ms (triton x{case['speedup_fwd_bwd']:.2f} the reference); max errors {errors}",
                flush=True,
            )
            del inputs, outs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--share", action="store_true", help="the attention's share of a training step")
    mode.add_argument("--kernels", action="store_true", help="Triton vs reference at DETR-R50 sizes (CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["deformable-detr-tiny", "deformable-detr-r50"])
    parser.add_argument("--hw", type=lambda s: tuple(int(x) for x in s.split("x")), default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="--share: steps and replays timed")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=mda.BACKENDS,
        default=None,
        help="--share: DETRKIT_MS_DEFORM_ATTN values to compare, interleaved (default: the current one)",
    )
    parser.add_argument("--iters", type=int, default=10, help="--kernels: timed calls per case")
    parser.add_argument("--queries", type=int, default=300, help="--kernels: the decoder's queries")
    parser.add_argument(
        "--sweep-block-q", type=int, nargs="*", default=[], help="--kernels: also time these block_q (fp32)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.share:
        args.hw = args.hw or (192, 256)
        args.batch = args.batch or 2
        results = share(args, device)
    else:
        args.hw = args.hw or (800, 1088)
        args.batch = args.batch or 8
        results = kernels(args, device)
    name = "share" if args.share else "kernels"
    out = args.out or RESULTS / f"ms_deform_attn_{name}_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "mode": name,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "hw": list(args.hw),
        "batch": args.batch,
        "backend_auto": mda.ms_deform_attn_backend(device),
    }
    out.write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
