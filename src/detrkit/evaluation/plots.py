"""The report's figures, as PNG bytes (matplotlib, Agg backend, no files written)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from detrkit.evaluation.confusion import ConfusionMatrix
from detrkit.evaluation.curves import RECALL_POINTS, Curves
from detrkit.evaluation.errors import ERROR_TYPES, TIDE_NAMES, ErrorAnalysis

_MAX_LINES = 20  # beyond this many classes, per-class lines are drawn thin and grey


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _colors(n: int) -> list[Any]:
    cmap = _plt().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def tide_bars(errors: ErrorAnalysis) -> bytes:
    """Horizontal bars: dAP of the six main error types and of the two special ones."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 2.8), gridspec_kw={"width_ratios": [3, 2]})
    names = [TIDE_NAMES[t] for t in ERROR_TYPES]
    vals = [errors.dap[t] for t in ERROR_TYPES]
    colors = ["#e15759", "#f28e2b", "#b07aa1", "#76b7b2", "#59a14f", "#4e79a7"]
    a1.barh(names[::-1], vals[::-1], color=colors[::-1])
    a1.set_title(f"Main errors: dAP (AP{round(errors.pos_thresh * 100)} = {errors.ap:.1f})", fontsize=10)
    for y, v in enumerate(vals[::-1]):
        a1.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    a1.set_xlim(0, max(max(vals) * 1.25, 1.0))
    sp = [errors.special_dap["false_pos"], errors.special_dap["false_neg"]]
    a2.barh(["FalseNeg", "FalsePos"], sp[::-1], color=["#9c755f", "#bab0ac"])
    a2.set_title("Special: perfect precision / recall", fontsize=10)
    for y, v in enumerate(sp[::-1]):
        a2.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    a2.set_xlim(0, max(max(sp) * 1.25, 1.0))
    for a in (a1, a2):
        a.set_xlabel("dAP (points)")
        a.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def pr_curves(curves: Curves) -> bytes:
    """One panel per IoU threshold: the interpolated PR curve of each class and their mean."""
    plt = _plt()
    n_t = len(curves.iou_thresholds)
    fig, axes = plt.subplots(1, n_t, figsize=(5.2 * n_t, 4.4), squeeze=False)
    k = len(curves.class_names)
    colors = _colors(k)
    for i, t in enumerate(curves.iou_thresholds):
        ax = axes[0, i]
        prec = curves.precision[i]
        has = prec[:, 0] >= 0
        for c in np.flatnonzero(has):
            if k <= _MAX_LINES:
                ax.plot(
                    RECALL_POINTS,
                    prec[c],
                    color=colors[c],
                    lw=1.3,
                    label=f"{curves.class_names[c]} ({curves.ap[i, c]:.2f})",
                )
            else:
                ax.plot(RECALL_POINTS, prec[c], color="0.75", lw=0.6)
        if has.any():
            ax.plot(
                RECALL_POINTS,
                prec[has].mean(0),
                color="black",
                lw=2.4,
                label=f"mean ({np.nanmean(curves.ap[i]):.3f})",
            )
        ax.set_title(f"Precision-recall at IoU {t:.2f}", fontsize=10)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", ncol=1 if k <= 10 else 2)
    fig.tight_layout()
    return _png(fig)


def f1_curves(curves: Curves) -> bytes:
    """F1 versus confidence per class (IoU ``iou_thresholds[0]``), best points marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    k = len(curves.class_names)
    colors = _colors(k)
    for c in range(k):
        if np.isnan(curves.best_f1[c]):
            continue
        if k <= _MAX_LINES:
            ax.plot(
                curves.f1_grid,
                curves.f1[c],
                color=colors[c],
                lw=1.2,
                label=f"{curves.class_names[c]} (best {curves.best_f1[c]:.2f} @ {curves.best_threshold[c]:.2f})",
            )
            ax.plot([curves.best_threshold[c]], [curves.best_f1[c]], "o", color=colors[c], ms=4)
        else:
            ax.plot(curves.f1_grid, curves.f1[c], color="0.75", lw=0.6)
    ax.plot(
        curves.f1_grid,
        curves.micro_f1,
        color="black",
        lw=2.4,
        label=f"all classes (best {curves.micro_best_f1:.2f} @ {curves.micro_best_threshold:.2f})",
    )
    ax.set_title(f"F1 versus confidence at IoU {curves.iou_thresholds[0]:.2f}", fontsize=10)
    ax.set(xlabel="confidence threshold", ylabel="F1", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _png(fig)


def confusion_plot(cm: ConfusionMatrix) -> bytes:
    """Heatmap of the row-normalised matrix, counts written in the cells when it is small enough."""
    plt = _plt()
    n = len(cm.labels)
    # about 0.42 in per class up to 25 classes (counts fit in the cells), then 0.16 in with 6 pt labels
    size = 4 + 0.42 * n if n <= 25 else 2 + 0.16 * n
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    norm = cm.normalized()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(
        range(n),
        cm.labels,
        rotation=60 if n <= 25 else 90,
        ha="right" if n <= 25 else "center",
        fontsize=8 if n <= 25 else 6,
    )
    ax.set_yticks(range(n), cm.labels, fontsize=8 if n <= 25 else 6)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    if n <= 25:
        for r in range(n):
            for c in range(n):
                if cm.matrix[r, c]:
                    ax.text(
                        c,
                        r,
                        str(cm.matrix[r, c]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[r, c] > 0.55 else "black",
                    )
    ax.set_title(
        f"Confusion at IoU {cm.iou_thresh:.2f}, confidence >= {cm.score_thresh:.2f} "
        "(colour: share of the row)",
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return _png(fig)


def size_bars(size_ap: dict[str, dict[str, float | None]]) -> bytes:
    """Grouped bars: COCO AP by object size overall (and per class for up to 20 classes)."""
    plt = _plt()
    groups = list(size_ap)[: _MAX_LINES + 1]
    sizes = ["small", "medium", "large"]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(groups) + 2), 3.6))
    for j, (s, col) in enumerate(zip(sizes, ["#4e79a7", "#f28e2b", "#59a14f"], strict=True)):
        vals = [size_ap[g][s] for g in groups]
        ax.bar(x + (j - 1) * 0.27, [v if v is not None else 0 for v in vals], width=0.27, color=col, label=s)
    ax.set_xticks(
        x, groups, rotation=45 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center"
    )
    ax.set_ylabel("AP@[.50:.95]")
    ax.set_ylim(0, 1.0)
    ax.set_title("COCO AP by object size (small < 32², medium < 96², large)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _png(fig)


#: the panels of :func:`training_curves`, in drawing order.
CURVE_PANELS: tuple[str, ...] = ("loss", "loss components", "COCO AP")


def training_curves(rows: Sequence[dict[str, Any]], *, panels: Sequence[str] = CURVE_PANELS) -> bytes | None:
    """Total losses, loss components and AP per epoch from ``metrics.csv`` rows, one panel each of
    ``panels`` (names from :data:`CURVE_PANELS`) that has data (None: nothing to plot). The HTML
    report shows all three; a run folder keeps ``plots/loss.png`` and ``plots/ap.png``."""
    if not rows:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    keys = list(dict.fromkeys(k for r in rows for k in r))
    totals = [k for k in ("train/loss", "val/loss") if k in keys]
    parts = [k for k in keys if k.startswith(("train/loss_", "val/loss_")) and not k[-1].isdigit()]
    aps = [k for k in ("val/AP", "val/AP50", "val/AP75") if k in keys]
    groups = dict(zip(CURVE_PANELS, (totals, parts, aps), strict=True))
    chosen = [(groups[label], label) for label in panels if groups[label]]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.6 * len(chosen), 3.4), squeeze=False)
    for ax, (group, label) in zip(axes[0], chosen, strict=True):
        for key in group:
            pts = [(r.get("epoch"), r.get(key)) for r in rows if isinstance(r.get(key), int | float)]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    marker="o",
                    ms=3,
                    label=key,
                    ls="--" if key.startswith("val/loss") else "-",
                )
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
