"""COCO files as users have them: plain COCO and Roboflow's COCO export.

Roboflow writes ``<split>/_annotations.coco.json`` with the images beside it, numbers images and
annotations from 0 and adds a placeholder category (id 0, named after the project, the
``supercategory`` of every other category, with no annotations). :func:`read_coco_split` leaves
such a placeholder out (it is not a class) and says so in one line; ids from 0 need nothing here,
:func:`detrkit.evaluation.coco.evaluate_coco` renumbers them internally.
"""

from __future__ import annotations

from pathlib import Path

from detrkit.data.coco import CocoIndex
from detrkit.data.formats.report import ReadReport


def placeholder_categories(index: CocoIndex) -> list[int]:
    """Ids of Roboflow-style placeholder categories: no annotations, and the name is the
    ``supercategory`` of every other category (there must be at least one other)."""
    used = {a.category_id for a in index.annotations}
    out = []
    for c in index.categories:
        others = [o for o in index.categories if o.id != c.id]
        if c.id not in used and others and all(o.supercategory == c.name for o in others):
            out.append(c.id)
    return out


def read_coco_split(ann: str | Path, images: str | Path | None = None) -> tuple[CocoIndex, Path, ReadReport]:
    """Read one COCO file; ``images`` defaults to the file's folder (Roboflow: images beside it).

    Returns ``(index, images_dir, report)``; the index has no placeholder category.
    """
    ann = Path(ann)
    index = CocoIndex.load(ann)
    report = ReadReport(str(ann))
    for cid in placeholder_categories(index):
        cat = next(c for c in index.categories if c.id == cid)
        index.categories = [c for c in index.categories if c.id != cid]
        report.note(
            f"{ann}: left out category {cid} {cat.name!r} (Roboflow's placeholder: no annotations, "
            f"the supercategory of every class)"
        )
    return index, Path(images) if images is not None else ann.parent, report


def load_coco(ann: str | Path) -> CocoIndex:
    """A COCO file without its Roboflow placeholder category (the classes a model trained on it has)."""
    return read_coco_split(ann)[0]
