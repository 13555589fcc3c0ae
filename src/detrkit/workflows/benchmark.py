"""``detrkit benchmark``: several detectors on one validation set, one comparison table.

Each entry is one of: a registered model trained here on ``data`` (``detrkit train --data ...
--model NAME`` with its packaged recipe, into ``OUT/runs/NAME``), an existing run folder, or a COCO
results file written by another tool (``name=preds.json``: ``[{"image_id", "category_id", "bbox":
[x, y, w, h], "score"}]`` with the val set's ids). All are scored on the same validation set by
faster-coco-eval; for models (trained or run folders) also: parameters (of the inference model:
Co-DETR's auxiliary heads left out), training images/s (the mean over the run's epochs), inference
latency (median of ``latency_images`` single-image forward + postprocess passes after 2 warm-up
ones, on ``device``) and peak memory (of the trainer's preflight step: CUDA ``max_memory_allocated``
or, on the CPU, the process's peak RSS; only for models trained here). A prediction file has only
the accuracy columns.

Writes into ``OUT``: ``benchmark.md``, ``benchmark.csv``, ``benchmark.json`` (everything, per class
too), ``ap_vs_latency.png`` and ``index.html`` (the table and the plot).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detrkit.devices import resolve_device
from detrkit.errors import ConfigError, DataError
from detrkit.workflows.benchmark_report import write_report

__all__ = ["BenchmarkRow", "measure_latency", "run_benchmark"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class BenchmarkRow:
    """One entry of the table (``None``: not measured for this kind of entry)."""

    name: str
    source: str  # "trained", "run" or "predictions"
    metrics: dict[str, float]
    per_class: dict[str, float] = field(default_factory=dict)  # class name -> AP
    params_m: float | None = None
    train_images_per_s: float | None = None
    latency_ms: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    path: str | None = None


def measure_latency(
    run: str | Path, ann: Path, images: Path, *, num_images: int = 10, device: str | None = None
) -> tuple[float, float]:
    """``(median ms per image, parameters in millions)`` of ``run``'s best checkpoint at batch 1."""
    from detrkit.data.collate import collate_detection
    from detrkit.data.dataset import CocoDetection
    from detrkit.runs.restore import restore

    model, _, transform, _ = restore(run)
    if hasattr(model, "inference_model"):
        model = model.inference_model()
    dev = resolve_device(device)
    model = model.to(dev).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    ds = CocoDetection(ann, images, transforms=transform)
    count = min(num_images, len(ds))
    if count == 0:
        raise DataError(f"{ann}: no validation images to time")
    times = []
    with torch.no_grad():
        for i in range(count + 2):
            batch = collate_detection([ds[i % len(ds)]]).to(dev)
            images_t = batch.normalized()
            sizes = torch.tensor([[batch.pixel_mask.shape[1], batch.pixel_mask.shape[2]]], device=dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            model.postprocess(model(images_t, batch.pixel_mask), sizes)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), params


def _val_set_of(run: Path) -> tuple[Path, Path]:
    from detrkit.runs.folder import resolve_run_path, run_train_cwd
    from detrkit.runs.restore import restore

    cfg = restore(run).config
    cwd = run_train_cwd(run)
    return Path(resolve_run_path(cfg.data.val_ann, cwd)), Path(resolve_run_path(cfg.data.val_images, cwd))


def _train_rate(run: Path) -> float | None:
    from detrkit.runs.metrics import read_metrics_csv

    path = run / "metrics.csv"
    rates = (
        [float(r["train/images_per_s"]) for r in read_metrics_csv(path) if "train/images_per_s" in r]
        if path.is_file()
        else []
    )
    return statistics.fmean(rates) if rates else None


def _metrics_row(name: str, source: str, metrics: Mapping[str, Any], path: Path) -> BenchmarkRow:
    per_class = {str(c["name"]): float(c["AP"]) for c in metrics.get("per_class") or []}
    return BenchmarkRow(name, source, {k: float(metrics[k]) for k in METRICS}, per_class, path=str(path))


def run_benchmark(
    *,
    out: str | Path,
    models: Sequence[str] = (),
    data: str | Path | None = None,
    images: str | Path | None = None,
    epochs: int | None = None,
    runs: Mapping[str, str | Path] | None = None,
    predictions: Mapping[str, str | Path] | None = None,
    val_ann: str | Path | None = None,
    val_images: str | Path | None = None,
    overrides: Sequence[str] = (),
    latency_images: int = 10,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> list[BenchmarkRow]:
    """Train / collect every entry, evaluate all on one val set, write the report into ``out``.

    A model whose run folder ``OUT/runs/NAME`` holds a finished run is not trained again (an
    interrupted benchmark continues where it stopped). The val set: ``val_ann``/``val_images`` when given, else the validation split of ``data`` (as
    ``detrkit train --data`` prepares it), else that of the first run folder.

    Raises:
        ConfigError: nothing to compare, models without ``data``, a prediction file without a val set.
    """
    from detrkit.engine.evaluate_run import evaluate_run
    from detrkit.engine.quickstart import quick_config
    from detrkit.engine.trainer import Trainer
    from detrkit.engine.validate import metrics_from_coco

    runs, predictions = dict(runs or {}), dict(predictions or {})
    if not (models or runs or predictions):
        raise ConfigError("detrkit benchmark: give --models, --run NAME=DIR or --pred NAME=FILE")
    if models and data is None:
        raise ConfigError("detrkit benchmark --models: give --data (the dataset to train them on)")
    names = [*models, *runs, *predictions]
    if len(set(names)) != len(names):
        raise ConfigError(f"detrkit benchmark: entry names must be unique, got {names}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trained: dict[str, tuple[Path, dict[str, Any]]] = {}
    for name in models:
        qs = quick_config(
            config=None, data=Path(data), images=None if images is None else Path(images), model=name,
            epochs=epochs, device=device,
            overrides=[f"output.root={out}", f"output.dir={out / 'runs' / name}", *overrides],
        )  # fmt: skip
        run_dir = out / "runs" / name
        record = run_dir / "benchmark_preflight.json"
        if (run_dir / "metrics.json").is_file():  # finished by an earlier benchmark: reuse it
            log(f"[benchmark] {name}: reusing the finished run {run_dir}")
            preflight = json.loads(record.read_text()) if record.is_file() else {}
        else:
            log(f"[benchmark] training {name} ({qs.config.train.epochs} epochs) into {run_dir}")
            preflight = Trainer(qs.config).fit().get("preflight") or {}
            record.write_text(json.dumps(preflight, default=str))
        trained[name] = (run_dir, preflight)
        if val_ann is None:
            val_ann, val_images = qs.config.data.val_ann, qs.config.data.val_images
    all_runs = {**{n: p for n, (p, _) in trained.items()}, **{n: Path(p) for n, p in runs.items()}}
    if val_ann is None and all_runs:
        val_ann, val_images = _val_set_of(next(iter(all_runs.values())))
    if val_ann is None or val_images is None:
        raise ConfigError("detrkit benchmark: a prediction file alone needs --val-ann and --val-images")
    val_ann, val_images = Path(val_ann), Path(val_images)
    rows = []
    for name, run in all_runs.items():
        log(f"[benchmark] evaluating {name} on {val_ann}")
        result = evaluate_run(run, ann=val_ann, images=val_images, device=device)
        row = _metrics_row(name, "trained" if name in trained else "run", result["metrics"], run)
        row.latency_ms, row.params_m = measure_latency(
            run, val_ann, val_images, num_images=latency_images, device=device
        )
        row.train_images_per_s = _train_rate(run)
        if name in trained:
            row.peak_memory_mb = trained[name][1].get("peak_memory_mb")
            row.peak_memory_kind = trained[name][1].get("peak_memory_kind")
        rows.append(row)
    for name, path in predictions.items():
        log(f"[benchmark] scoring {name} ({path}) on {val_ann}")
        results = json.loads(Path(path).read_text())
        if not isinstance(results, list):
            raise DataError(f"{path}: a COCO results file is a JSON list of detections")
        rows.append(_metrics_row(name, "predictions", metrics_from_coco(val_ann, results), Path(path)))
    write_report(rows, out, val_ann=val_ann)
    return rows
