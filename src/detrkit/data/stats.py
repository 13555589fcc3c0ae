"""Dataset statistics: per-class counts, boxes per image, COCO size buckets, rare classes.

Size buckets use COCO evaluation's area ranges on the annotation's ``area`` field (what
``COCOeval`` uses; for files without ``area`` the loader fills in ``w * h``): small ``< 32²``,
medium ``32²..96²``, large ``>= 96²``. Crowd annotations are counted separately, not in the
per-class numbers.

A class is *rare* when the number of images showing it is below ``rare_fraction`` times that of
the most frequent class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detrkit.data.coco import CocoIndex

SMALL_MAX_AREA = 32.0**2
MEDIUM_MAX_AREA = 96.0**2


@dataclass
class ClassStats:
    """Counts for one class (non-crowd annotations)."""

    category_id: int
    name: str
    instances: int
    images: int
    small: int
    medium: int
    large: int
    rare: bool


@dataclass
class DatasetStats:
    """What :func:`compute_stats` returns; ``to_dict()`` is the ``--json`` output."""

    num_images: int
    num_annotations: int
    num_crowd: int
    num_empty_images: int
    boxes_per_image_mean: float
    boxes_per_image_median: float
    boxes_per_image_max: int
    small: int
    medium: int
    large: int
    rare_fraction: float
    classes: list[ClassStats]
    boxes_per_image: list[int]

    @property
    def rare_classes(self) -> list[str]:
        return [c.name for c in self.classes if c.rare]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("boxes_per_image")
        d["rare_classes"] = self.rare_classes
        d["boxes_per_image_histogram"] = np.bincount(self.boxes_per_image or [0]).tolist()
        return d


def _buckets(area: np.ndarray) -> tuple[int, int, int]:
    small = int((area < SMALL_MAX_AREA).sum())
    large = int((area >= MEDIUM_MAX_AREA).sum())
    return small, len(area) - small - large, large


def compute_stats(index: CocoIndex, *, rare_fraction: float = 0.05) -> DatasetStats:
    """Count instances, images and size buckets per class (contiguous label order).

    Annotations whose image or category is not in the file are ignored (``data check`` reports them).
    """
    arr = index.ann_arrays()
    image_ids = np.array([im.id for im in index.images], dtype=np.int64)
    cat_ids = np.array(index.category_ids, dtype=np.int64)
    valid = np.isin(arr["image_id"], image_ids) & np.isin(arr["category_id"], cat_ids)
    crowd = valid & (arr["iscrowd"] != 0)
    sel = valid & ~crowd
    img, cat, area = arr["image_id"][sel], arr["category_id"][sel], arr["area"][sel]
    order = np.argsort(image_ids, kind="stable")
    pos = order[np.searchsorted(image_ids[order], img)] if len(img) else np.zeros(0, np.int64)
    per_image = np.bincount(pos, minlength=len(image_ids)) if len(image_ids) else np.zeros(0, np.int64)
    per_class_images = {int(c): len(np.unique(img[cat == c])) for c in cat_ids}
    top = max(per_class_images.values(), default=0)
    names = dict(zip(index.category_ids, index.class_names, strict=True))
    classes = []
    for c in cat_ids.tolist():
        mask = cat == c
        s, m, lg = _buckets(area[mask])
        n_img = per_class_images[c]
        classes.append(
            ClassStats(c, names[c], int(mask.sum()), n_img, s, m, lg, rare=n_img < rare_fraction * top)
        )
    s, m, lg = _buckets(area)
    return DatasetStats(
        num_images=len(image_ids),
        num_annotations=int(sel.sum()),
        num_crowd=int(crowd.sum()),
        num_empty_images=int((per_image == 0).sum()),
        boxes_per_image_mean=float(per_image.mean()) if len(per_image) else 0.0,
        boxes_per_image_median=float(np.median(per_image)) if len(per_image) else 0.0,
        boxes_per_image_max=int(per_image.max(initial=0)),
        small=s,
        medium=m,
        large=lg,
        rare_fraction=rare_fraction,
        classes=classes,
        boxes_per_image=per_image.tolist(),
    )


def save_plots(stats: DatasetStats, index: CocoIndex, out_dir: str | Path) -> list[Path]:
    """Write ``class_counts.png``, ``boxes_per_image.png``, ``box_sizes.png`` (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    names = [c.name for c in stats.classes]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(names) + 2), 4.5))
    colors = ["tab:red" if c.rare else "tab:blue" for c in stats.classes]
    ax.bar(range(len(names)), [c.instances for c in stats.classes], color=colors)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("instances")
    ax.set_title("Instances per class (red: rare)")
    paths.append(_save(fig, out_dir / "class_counts.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    counts = np.bincount(stats.boxes_per_image or [0])
    ax.bar(range(len(counts)), counts)
    ax.set_xlabel("boxes per image")
    ax.set_ylabel("images")
    ax.set_title(f"Boxes per image (mean {stats.boxes_per_image_mean:.2f})")
    paths.append(_save(fig, out_dir / "boxes_per_image.png"))

    arr = index.ann_arrays()
    wh = arr["bbox_xywh"][(arr["iscrowd"] == 0)][:, 2:]
    side = np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(side, bins=50, color="tab:green")
    for x in (32, 96):
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("sqrt(box area) [px]  (dashed: COCO small/medium/large limits)")
    ax.set_ylabel("boxes")
    ax.set_title("Box sizes")
    paths.append(_save(fig, out_dir / "box_sizes.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
