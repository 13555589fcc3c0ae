"""torch.compile on and off for detrkit inference and training steps, in one run.

Inference: ``Predictor.run_model`` (folded BatchNorm, channels-last, its precision) with the
network eager and compiled (``torch.compile(net)``, inductor, fixed input size). Training: forward
+ loss + backward + AdamW of the model, eager and with ``torch.compile(model)`` (``--train``).
Reports compile time (first call) and the median of ``--repeats`` timed calls after it.

    python bench/compile_check.py --models detr-r50 --hw 384x512 --batch 2 --threads 1 \
        --precisions fp32,bf16 [--train]

Writes ``bench/results/compile_check_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import NUM_CLASSES, synthetic_batch  # noqa: E402

from detrkit.inference.predictor import Predictor  # noqa: E402
from detrkit.models.registry import build_model  # noqa: E402

HERE = Path(__file__).resolve().parent


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times


def infer_case(arch: str, precision: str, compiled: bool, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=NUM_CLASSES)
    pred = Predictor(model=model, class_names=[f"c{i}" for i in range(NUM_CLASSES)],
                     category_ids=list(range(NUM_CLASSES)), precision=precision)  # fmt: skip
    if compiled:
        pred._net = torch.compile(pred._net, dynamic=False)
    x, m, _ = synthetic_batch(args.batch, args.h, args.w, torch.device("cpu"))
    sizes = torch.tensor([[args.h, args.w]] * args.batch)
    first, times = _timed(lambda: pred.run_model(x, m, sizes), args.repeats)
    return {"model": arch, "mode": "infer", "precision": precision, "compiled": compiled,
            "first_call_s": round(first, 2), "per_call_s": [round(t, 4) for t in times],
            "images_per_s": round(args.batch / statistics.median(times), 3)}  # fmt: skip


def train_case(arch: str, precision: str, compiled: bool, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=NUM_CLASSES).train().to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    x, m, t = synthetic_batch(args.batch, args.h, args.w, torch.device("cpu"))
    x = x.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model, dynamic=False) if compiled else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = fwd(x, m, t)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    first, times = _timed(step, args.repeats)
    return {"model": arch, "mode": "train", "precision": precision, "compiled": compiled,
            "first_call_s": round(first, 2), "per_call_s": [round(t, 4) for t in times],
            "images_per_s": round(args.batch / statistics.median(times), 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="detr-r50")
    p.add_argument("--hw", default="384x512")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train", action="store_true", help="also the training step")
    p.add_argument("--tag", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.h, args.w = (int(v) for v in args.hw.lower().split("x"))
    rows = []
    for arch in args.models.split(","):
        for precision in args.precisions.split(","):
            cases = [infer_case] + ([train_case] if args.train else [])
            for case in cases:
                for compiled in (False, True):
                    row = case(arch, precision, compiled, args)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    result = {"hw": [args.h, args.w], "batch": args.batch, "threads": args.threads, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}  # fmt: skip
    out = HERE / "results" / f"compile_check_{args.tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
