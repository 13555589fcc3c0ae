"""Validation: losses and COCO metrics of a model over a loader, across processes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detrkit.evaluation.coco import STAT_NAMES
from detrkit.evaluation.results import coco_results


def detections_to_coco(
    detections: list[dict[str, torch.Tensor]],
    image_ids: list[int],
    label_to_cat_id: list[int],
    *,
    score_threshold: float = 0.0,
) -> list[tuple[int, list[dict[str, Any]]]]:
    """Postprocessed detections (per image ``boxes [N, 4]`` xyxy pixels, ``scores [N]``,
    ``labels [N]`` contiguous) -> one ``(image_id, COCO results entries)`` per image
    (:func:`detrkit.evaluation.results.coco_results`)."""
    return [
        (
            int(image_id),
            coco_results(
                image_id,
                det["boxes"],
                det["scores"],
                det["labels"],
                label_to_cat_id,
                score_threshold=score_threshold,
            ),
        )
        for det, image_id in zip(detections, image_ids, strict=False)
    ]


def metrics_from_coco(gt: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    """``evaluate_coco`` -> ``{"AP": ..., ..., "per_class": [{"name", "AP", "AP50", ...}]}``."""
    from detrkit.evaluation.coco import evaluate_coco

    metrics = evaluate_coco(gt, results)
    out: dict[str, Any] = {name: float(metrics.stats[name]) for name in STAT_NAMES}
    out["per_class"] = [c.to_dict() for c in metrics.per_class]
    return out


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    device: torch.device,
    label_to_cat_id: list[int],
    gt: str | Path | Any,
    score_threshold: float = 0.0,
    gather: Callable[[list[Any]], list[Any]] | None = None,
    is_main: bool = True,
    broadcast: Callable[[Any], Any] | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run ``model`` over validation batches: mean losses and COCO metrics.

    Args:
        model: an unwrapped :class:`~detrkit.models.base.Detector` (put in eval mode here).
        batches: collated :class:`~detrkit.data.collate.Batch` objects (this process's share).
        device: where to run.
        label_to_cat_id: COCO category id of each contiguous label.
        gt: the ground truth for ``evaluate_coco`` (annotation path, dict or ``CocoIndex``).
        gather: merges per-process lists (``accelerate.utils.gather_object``); ``None`` in one process.
        is_main: this process computes the metric.
        broadcast: sends the main process's metrics to all (``None`` in one process).
        max_batches: stop after this many batches (preflight).
    Returns:
        ``(metrics, losses)``: ``metrics`` holds :data:`STAT_NAMES` (and ``per_class`` when the
        evaluator gives it); ``losses`` the mean of every ``loss*`` output over batches.
    """
    was_training = model.training
    model.eval()
    per_image: list[tuple[int, list[dict[str, Any]]]] = []
    loss_sums: dict[str, torch.Tensor] = {}
    n_batches = 0
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = batch.to(device)
            outputs = model(batch.normalized(), batch.pixel_mask, batch.targets)
            for key, value in outputs.items():
                if key.startswith("loss") and isinstance(value, torch.Tensor) and value.ndim == 0:
                    loss_sums[key] = loss_sums.get(key, 0.0) + value.detach().float()
            n_batches += 1
            sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in batch.targets]).to(device)
            detections = model.postprocess(outputs, sizes)
            ids = [int(t["image_id"]) for t in batch.targets]
            per_image += detections_to_coco(detections, ids, label_to_cat_id, score_threshold=score_threshold)
            if on_batch is not None:
                on_batch()
    finally:
        model.train(was_training)
    losses = {k: float(v) / max(n_batches, 1) for k, v in loss_sums.items()}
    if gather is not None:
        per_image = gather(per_image)
    metrics: dict[str, Any] = {}
    if is_main:
        seen: set[int] = set()
        results: list[dict[str, Any]] = []
        for image_id, dets in per_image:
            if image_id not in seen:  # padded repeats on multi-process validation
                seen.add(image_id)
                results += dets
        metrics = metrics_from_coco(gt, results)
    if broadcast is not None:
        metrics = broadcast(metrics)
    return metrics, losses
