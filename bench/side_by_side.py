"""detrkit vs Hugging Face transformers, side by side in one run: training and inference speed,
peak memory, eager ATen ops and host reads (syncs on a GPU) per step.

Models: our ``detr-r50`` and ``deformable-detr-r50`` against ``DetrForObjectDetection`` and
``DeformableDetrForObjectDetection`` with the same architecture (ResNet-50 with frozen BatchNorm,
6+6 layers, d_model 256, 100 / 300 queries, auxiliary losses on every decoder layer, dropout 0.1
everywhere), random weights, 10 classes. A training step is forward + loss (Hungarian matching
included) + backward + gradient clipping + fused AdamW; inference is forward + each side's own
postprocessing (``postprocess`` / ``post_process_object_detection``); detrkit's inference is what
``detrkit predict`` runs, ``Predictor.run_model`` (frozen BatchNorm folded into the convolutions,
channels-last, its ``precision``; ``--no-optimize`` turns the first two off). ``infer_onnxruntime`` runs
what ``detrkit predict --backend onnxruntime`` runs: the :class:`Predictor`'s onnxruntime backend
(its ONNX export with dynamic batch/height/width, its session, the same postprocessing) on the
same batch (``Predictor.run_model``).

The machine may be shared and noisy: implementations are interleaved (both sides of a model run
back to back within each repeat), the ratio detrkit/transformers is taken per repeat, and the
median and the spread over repeats are reported. Op and host-read counts come from one step under
:class:`detrkit.models.op_count.OpCounter` (noise-free); peak memory is CUDA
``max_memory_allocated``, or on the CPU the peak resident set during a step minus the resident set
before it (sampled every 2 ms, glibc told to return freed blocks above 128 KiB at once).

    python bench/side_by_side.py                           # CPU, batch 2, 384x512, fp32
    python bench/side_by_side.py --device cuda --batch 8 --hw 800x1088 --precision bf16

Writes ``bench/results/side_by_side_<device>[_<tag>].json`` and its table into ``bench/RESULTS.md``
(section ``side_by_side <device> <tag>``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import NUM_CLASSES, synthetic_batch  # noqa: E402

from detrkit.models.op_count import OpCounter  # noqa: E402

HERE = Path(__file__).resolve().parent
MODES = ("train", "infer", "infer_onnxruntime")


def build(impl: str, arch: str, options: dict[str, Any]) -> tuple[torch.nn.Module, Callable, Callable]:
    """``(model, loss(x, mask, targets) -> scalar, infer(x, mask) -> detections)``."""
    sizes = lambda x: torch.tensor([list(x.shape[-2:])] * len(x), device=x.device)  # noqa: E731
    if impl == "detrkit":
        from detrkit.models.registry import build_model

        model = build_model(arch, num_classes=NUM_CLASSES, **options)
        return (
            model,
            lambda x, m, t: model(x, m, t)["loss"],
            lambda x, m: model.postprocess(model(x, m), sizes(x)),
        )
    import transformers

    common = {
        "backbone": "resnet50",
        "use_pretrained_backbone": False,
        "num_labels": NUM_CLASSES,
        "auxiliary_loss": True,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.1,
    }
    if arch == "detr-r50":
        model = transformers.DetrForObjectDetection(transformers.DetrConfig(**common))
        processor = transformers.DetrImageProcessor()
        post = lambda out, s: processor.post_process_object_detection(out, threshold=0.0, target_sizes=s)  # noqa: E731
    else:
        model = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**common))
        processor = transformers.DeformableDetrImageProcessor()
        post = lambda out, s: processor.post_process_object_detection(  # noqa: E731
            out, threshold=0.0, target_sizes=s, top_k=100
        )

    def loss(x: torch.Tensor, m: torch.Tensor, t: list[dict]) -> torch.Tensor:
        labels = [{"class_labels": d["labels"], "boxes": d["boxes"]} for d in t]
        return model(pixel_values=x, pixel_mask=m.long(), labels=labels).loss

    return model, loss, lambda x, m: post(model(pixel_values=x, pixel_mask=m.long()), sizes(x))


class PeakRSS:
    """Peak resident set (MiB) above the level at entry, sampled by a thread (CPU runs)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb() - self.base)
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        self.base = self.rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Case:
    """One implementation x model: its model, optimizer, batch and the step functions of each mode."""

    def __init__(self, impl: str, arch: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.impl, self.arch, self.device, self.args = impl, arch, device, args
        options = dict(args.detrkit_options) if impl == "detrkit" else {}
        self.model, self.loss, self.infer_fn = build(impl, arch, options)
        self.model.to(device)
        if args.channels_last and impl == "detrkit":
            self.model.to(memory_format=torch.channels_last)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-4, fused=True)
        self.x, self.m, self.t = synthetic_batch(args.batch, args.h, args.w, device)
        if args.channels_last and impl == "detrkit":
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.x1, self.m1 = self.x[:1], self.m[:1]
        precision = args.detrkit_precision if impl == "detrkit" else args.precision
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.predictor = None
        if impl == "detrkit":  # inference as `detrkit predict` runs it: Predictor.run_model
            from detrkit.inference.predictor import Predictor

            self.predictor = Predictor(
                model=self.model,
                class_names=[f"class{i}" for i in range(NUM_CLASSES)],
                category_ids=list(range(NUM_CLASSES)),
                device=device,
                precision=precision,
                optimize=not args.no_optimize,
            )
        self.ort = None
        self.times: dict[str, list[float]] = {}

    def autocast(self) -> Any:
        if self.dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def train_step(self) -> None:
        self.model.train()
        with self.autocast():
            loss = self.loss(self.x, self.m, self.t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 0.1)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step(self, batch1: bool = False) -> None:
        self.model.eval()
        x, m = (self.x1, self.m1) if batch1 else (self.x, self.m)
        if self.predictor is not None:  # its own precision, folded BatchNorm, channels-last
            self.predictor.run_model(x, m, torch.tensor([list(x.shape[-2:])] * len(x), device=x.device))
            return
        with self.autocast():
            self.infer_fn(x, m)

    def ort_step(self, batch1: bool = False) -> None:
        if self.ort is None:
            self.ort = self._ort_predictor()
        x, m = (self.x1, self.m1) if batch1 else (self.x, self.m)
        self.ort.run_model(x, m, torch.tensor([list(x.shape[-2:])] * len(x)))

    def _ort_predictor(self) -> Any:
        """What ``detrkit predict --backend onnxruntime`` runs: a :class:`Predictor` with the
        onnxruntime backend (its export, traced at the bench size, its session with
        ``torch.get_num_threads()`` threads, the model's postprocess), fed the bench batch."""
        from detrkit.data.transforms import build_transforms
        from detrkit.inference.predictor import Predictor

        h, w = self.args.h, self.args.w
        return Predictor(
            model=self.model.to(memory_format=torch.contiguous_format),
            class_names=[f"class{i}" for i in range(NUM_CLASSES)],
            category_ids=list(range(NUM_CLASSES)),
            transform=build_transforms("val", train=False, size=min(h, w), max_size=max(h, w)),
            backend="onnxruntime",
        )

    def step(self, mode: str, batch1: bool = False) -> None:
        if mode == "train":
            self.train_step()
        elif mode == "infer":
            self.infer_step(batch1)
        else:
            self.ort_step(batch1)

    def count(self, mode: str) -> dict[str, Any]:
        """Ops and host reads of one step (also the warm-up), and its peak memory."""
        counter = OpCounter()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.step(mode)  # warm-up: optimizer state, ONNX export and session, allocator
        with PeakRSS() as rss:
            with counter:
                self.step(mode)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else rss.peak_mb
        reads: dict[str, int] = {}
        for kind, where in counter.counts.reads:
            reads[f"{kind} {where}"] = reads.get(f"{kind} {where}", 0) + 1
        return {
            "ops_per_step": counter.counts.ops,
            "host_syncs_per_step": counter.counts.host_reads,
            "host_reads": reads,
            "peak_mb": round(peak, 1),
            "top_ops": counter.counts.top(12),
        }

    def time(self, mode: str, steps: int, batch1: bool = False) -> float:
        """Seconds per step, ``steps`` steps."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(mode, batch1)
        sync()
        return (time.perf_counter() - t0) / steps


def cuda_syncs(case: Case, mode: str) -> int:
    """Syncs of one step reported by ``torch.cuda.set_sync_debug_mode`` (CUDA only)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            case.step(mode)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """detrkit/transformers images/s ratios per repeat (median, min, max) per model and mode."""
    out = []
    for row in rows:
        if row["impl"] != "detrkit":
            continue
        mode = "infer" if row["mode"] == "infer_onnxruntime" else row["mode"]
        peer = next((r for r in rows if r["impl"] == "transformers" and r["model"] == row["model"]
                     and r["mode"] == mode), None)  # fmt: skip
        if peer is None:
            continue
        ratios = [p / q for p, q in zip(row["per_repeat_s"], peer["per_repeat_s"], strict=False)]
        ratios = [1 / r for r in ratios]  # time ratio -> speed ratio
        out.append({
            "model": row["model"], "mode": row["mode"],
            "speedup_median": round(statistics.median(ratios), 3),
            "speedup_min": round(min(ratios), 3), "speedup_max": round(max(ratios), 3),
            "ops_ratio": round(row["ops_per_step"] / max(peer["ops_per_step"], 1), 3),
        })  # fmt: skip
    return out


def table(result: dict[str, Any]) -> str:
    """The markdown table of RESULTS.md."""
    rows = {(r["impl"], r["model"], r["mode"]): r for r in result["rows"]}
    lines = [
        "| model | mode | detrkit img/s | transformers img/s | speed vs transformers (median, min-max) "
        "| batch-1 ms (detrkit / transformers) | ops per step (detrkit / transformers) | host reads per step "
        "| peak MB (detrkit / transformers) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        d = rows[("detrkit", s["model"], s["mode"])]
        peer_mode = "infer" if s["mode"] == "infer_onnxruntime" else s["mode"]
        t = rows[("transformers", s["model"], peer_mode)]
        lat = lambda r: "-" if r.get("batch1_ms") is None else f"{r['batch1_ms']:.0f}"  # noqa: E731
        lines.append(
            f"| {s['model']} | {s['mode']} | {d['images_per_s']:.3f} | {t['images_per_s']:.3f} | "
            f"**{s['speedup_median']:.2f}x** ({s['speedup_min']:.2f}-{s['speedup_max']:.2f}) | "
            f"{lat(d)} / {lat(t)} | {d['ops_per_step']:,} / {t['ops_per_step']:,} ({s['ops_ratio']:.2f}x) | "
            f"{d['host_syncs_per_step']} / {t['host_syncs_per_step']} | {d['peak_mb']:.0f} / {t['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def write_results_md(result: dict[str, Any], command: str, tag: str) -> None:
    """Replace (or append) this run's section of bench/RESULTS.md."""
    path = HERE / "RESULTS.md"
    key = f"side_by_side {result['device_type']} {tag}".strip()
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    body = (
        f"{begin}\n`{command}` on {result['device']} ({result['threads']} threads), torch "
        f"{result['torch']}, transformers {result['transformers']}, batch {result['batch']}, "
        f"{result['hw']}, {result['precision']} (detrkit {result.get('detrkit_precision', result['precision'])}"
        f"{', channels-last training' if result.get('channels_last') else ''}"
        f"{'' if result.get('inference_optimize', True) else ', inference not optimized'}), "
        f"{result['repeats']} interleaved repeats of "
        f"{result['steps']} steps, {result['wall_s']:.0f} s in all, {result['date']}:\n\n"
        f"{table(result)}\n{end}"
    )
    text = path.read_text()
    if begin in text:
        text = text[: text.index(begin)] + body + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n### Side by side: {key}\n{body}\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--hw", default="384x512", help="image height x width")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--models", default="detr-r50,deformable-detr-r50")
    p.add_argument("--impls", default="detrkit,transformers")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats (ratios per repeat)")
    p.add_argument("--steps", type=int, default=1, help="timed steps per repeat")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="detrkit training in channels-last")
    p.add_argument(
        "--detrkit-precision",
        choices=["fp32", "bf16", "auto"],
        help="detrkit's precision (default: --precision); auto: bf16 where detrkit.devices.fast_bf16",
    )
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="detrkit inference without folded BatchNorm and channels-last (Predictor(optimize=False))",
    )
    p.add_argument(
        "--option", action="append", default=[], help="detrkit model option key=value (JSON value)"
    )
    p.add_argument("--tag", default="", help="suffix of the JSON file and the RESULTS.md section")
    p.add_argument("--no-results-md", action="store_true")
    args = p.parse_args(argv)
    _return_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device")
    args.h, args.w = (int(v) for v in args.hw.lower().split("x"))
    if args.detrkit_precision is None:
        args.detrkit_precision = args.precision
    from detrkit.inference.predictor import resolve_precision

    args.detrkit_precision = resolve_precision(args.detrkit_precision, device)  # "auto" as predict has it
    args.detrkit_options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    modes = [m for m in args.modes.split(",") if m]
    if device.type == "cuda":
        modes = [m for m in modes if m != "infer_onnxruntime"]
    start = time.perf_counter()
    rows = []
    for arch in args.models.split(","):
        cases = [Case(impl, arch, args, device) for impl in args.impls.split(",")]
        for mode in modes:
            active = [c for c in cases if mode != "infer_onnxruntime" or c.impl == "detrkit"]
            counts = {c.impl: c.count(mode) for c in active}
            times: dict[str, list[float]] = {c.impl: [] for c in active}
            batch1: dict[str, float | None] = {c.impl: None for c in active}
            for rep in range(args.repeats):
                for c in active if rep % 2 == 0 else active[::-1]:
                    times[c.impl].append(c.time(mode, args.steps))
            if mode != "train":
                for c in active:
                    batch1[c.impl] = 1000 * min(c.time(mode, 1, batch1=True) for _ in range(2))
            for c in active:
                row = {
                    "impl": c.impl,
                    "model": arch,
                    "mode": mode,
                    "images_per_s": round(args.batch / statistics.median(times[c.impl]), 4),
                    "per_repeat_s": [round(v, 3) for v in times[c.impl]],
                    "batch1_ms": None if batch1[c.impl] is None else round(batch1[c.impl], 1),
                    **counts[c.impl],
                }
                if device.type == "cuda":
                    row["cuda_syncs_per_step"] = cuda_syncs(c, mode)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "top_ops"}), flush=True)
        del cases
    import transformers

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_type": device.type,
        "hw": [args.h, args.w],
        "batch": args.batch,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "steps": args.steps,
        "detrkit_precision": args.detrkit_precision,
        "channels_last": args.channels_last,
        "inference_optimize": not args.no_optimize,
        "detrkit_options": args.detrkit_options,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    result["summary"] = summarise(rows)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    out = HERE / "results" / f"side_by_side_{device.type}{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    if not args.no_results_md:
        write_results_md(result, "python bench/side_by_side.py " + " ".join(argv or sys.argv[1:]), args.tag)
    return result


def _return_freed_memory() -> None:
    """glibc: serve every allocation above 128 KiB by mmap and return it when freed (no dynamic
    threshold), so that the resident set follows the live tensors and its peak means something."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"cpu ({name}, {os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
