"""Training and inference throughput (images/s) and peak memory: detrkit vs Hugging Face transformers.

Models: our ``detr-r50`` and ``deformable-detr-r50`` against ``DetrForObjectDetection`` and
``DeformableDetrForObjectDetection`` (random weights, the same shapes: ResNet-50, 6+6 layers,
d_model 256, 100 / 300 queries, 10 classes), at batch 8 and 800x1088 images, in fp32 and bf16
(autocast, fp32 master weights), one after the other on the same device in one run. A training step
is forward + loss (Hungarian matching included) + backward + fused AdamW step, as in
``detrkit train``. Synthetic batches: random images, 2-12 random boxes per image.

    python bench/train_throughput.py                      # GPU, the full setting
    python bench/train_throughput.py --device cpu --tiny  # smoke run: 2 images of 128x160, 2 steps

Writes ``bench/results/train_throughput_<device>[_tiny].json``. Peak memory is CUDA
``max_memory_allocated`` (on CPU: the process's peak RSS, cumulative over the run).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10


def synthetic_batch(
    batch: int, h: int, w: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """``images [B,3,H,W]``, ``pixel_mask bool [B,H,W]`` (all real) and targets (cxcywh normalised)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, h, w, generator=g)
    mask = torch.ones(batch, h, w, dtype=torch.bool)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(2, 13, (1,), generator=g))
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append(
            {
                "boxes": torch.cat([cxcy, wh], 1).to(device),
                "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device),
            }
        )
    return images.to(device), mask.to(device), targets


def build(
    impl: str, arch: str, tiny: bool
) -> tuple[torch.nn.Module, Callable[..., torch.Tensor], Callable[..., Any]]:
    """``(model, train_loss(images, mask, targets), infer(images, mask))`` for one implementation."""
    if impl == "detrkit":
        from detrkit.models.registry import build_model

        model = build_model(arch, num_classes=NUM_CLASSES)
        return (
            model,
            lambda x, m, t: model(x, m, t)["loss"],
            lambda x, m: model.postprocess(
                model(x, m), torch.tensor([[x.shape[-2], x.shape[-1]]] * len(x), device=x.device)
            ),
        )
    import transformers

    common = {"backbone": "resnet50", "use_pretrained_backbone": False, "num_labels": NUM_CLASSES}
    if arch == "detr-r50":
        model = transformers.DetrForObjectDetection(transformers.DetrConfig(**common))
    else:
        model = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**common))

    def loss(x: torch.Tensor, m: torch.Tensor, t: list[dict]) -> torch.Tensor:
        labels = [{"class_labels": d["labels"], "boxes": d["boxes"]} for d in t]
        return model(pixel_values=x, pixel_mask=m.long(), labels=labels).loss

    return model, loss, lambda x, m: model(pixel_values=x, pixel_mask=m.long())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def measure(
    impl: str, arch: str, precision: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Warm up, then time ``args.steps`` training steps and inference batches."""
    torch.manual_seed(0)
    model, train_loss, infer = build(impl, arch, args.tiny)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=1e-5, **({"fused": True} if device.type == "cuda" else {"foreach": True})
    )
    x, m, t = synthetic_batch(args.batch, args.height, args.width, device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    autocast = (
        (lambda: torch.autocast(device.type, dtype=dtype))
        if dtype
        else (lambda: torch.autocast(device.type, enabled=False))
    )

    def train_step() -> None:
        with autocast():
            loss = train_loss(x, m, t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        train_step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    _sync(device)
    train_s = (time.perf_counter() - t0) / args.steps
    train_peak = _peak_mb(device)

    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        for _ in range(args.warmup):
            with autocast():
                infer(x, m)
        _sync(device)
        t1 = time.perf_counter()
        for _ in range(args.steps):
            with autocast():
                infer(x, m)
        _sync(device)
    infer_s = (time.perf_counter() - t1) / args.steps
    row = {
        "impl": impl,
        "model": arch,
        "precision": precision,
        "train_images_per_s": round(args.batch / train_s, 2),
        "train_step_ms": round(train_s * 1000, 1),
        "train_peak_mb": round(train_peak, 1),
        "infer_images_per_s": round(args.batch / infer_s, 2),
        "infer_peak_mb": round(_peak_mb(device), 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }
    model = opt = None  # free device memory before the next model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: batch 2, 128x160, 2 steps, fp32 only on CPU"
    )
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--precisions", default=None, help="comma list of fp32,bf16")
    parser.add_argument("--models", default="detr-r50,deformable-detr-r50")
    parser.add_argument("--impls", default="detrkit,transformers")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device; use --device cpu --tiny")
    args.batch = args.batch or (2 if args.tiny else 8)
    args.height, args.width = (128, 160) if args.tiny else (800, 1088)
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = 1 if args.tiny else 3
    precisions = (args.precisions or ("fp32" if device.type == "cpu" else "fp32,bf16")).split(",")
    rows = []
    for arch in args.models.split(","):
        for precision in precisions:
            for impl in args.impls.split(","):
                try:
                    row = measure(impl, arch, precision, args, device)
                except torch.OutOfMemoryError:
                    row = {"impl": impl, "model": arch, "precision": precision, "error": "out of memory"}
                    torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "batch": args.batch,
        "image_hw": [args.height, args.width],
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"train_throughput_{device.type}{'_tiny' if args.tiny else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
