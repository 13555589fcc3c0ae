"""Dataset surgery on :class:`~detrkit.data.coco.CocoIndex`: subset, merge, split.

All three are deterministic for a given ``seed`` and return new indexes (inputs are not modified).

- :func:`subset` keeps the listed class names, renumbered ``1..K`` in the order given, and the
  images with at least one kept non-crowd box, plus optionally a fraction of negative images.
- :func:`merge` unifies the class lists of several files through a name mapping, renumbers image
  and annotation ids, and prefixes every ``file_name`` with a per-source tag (``tag/file_name``)
  so that images from different roots stay apart (see :func:`link_image_roots`).
- :func:`split` splits by image, stratified so that classes with at least two images appear in
  both parts (iterative stratification, Sechidis et al., 2011).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from detrkit.data.coco import Category, CocoIndex
from detrkit.errors import DataError

DROP = "drop"


def _names_error(index: CocoIndex, missing: Sequence[str]) -> DataError:
    known = ", ".join(index.class_names[:20]) + (" ..." if len(index.categories) > 20 else "")
    return DataError(
        f"{index.source}: unknown class name(s) {', '.join(missing)}; known: {known}", path=index.source
    )


def subset(
    index: CocoIndex,
    classes: Sequence[str],
    *,
    max_images: int | None = None,
    negatives: float = 0.0,
    seed: int = 0,
) -> CocoIndex:
    """Keep ``classes`` (by name) and the images that show them.

    Args:
        classes: names to keep; new category ids are ``1..K`` in this order.
        max_images: cap on the number of images (positives and negatives together), drawn at random.
        negatives: fraction of the *output* images that have no kept box (0 <= f < 1), drawn from
            the images without any kept annotation, as far as there are enough.
        seed: seed of the random draws.
    Returns:
        a new index; images keep their ids and file order, annotations keep their ids.
    """
    if not 0.0 <= negatives < 1.0:
        raise DataError(f"negatives must be in [0, 1), got {negatives}")
    if len(set(classes)) != len(classes):
        raise DataError(f"class names must be unique, got {list(classes)}")
    by_name: dict[str, Category] = {}
    for c in index.categories:
        by_name.setdefault(c.name, c)
    missing = [n for n in classes if n not in by_name]
    if missing:
        raise _names_error(index, missing)
    new_id = {by_name[n].id: k + 1 for k, n in enumerate(classes)}
    anns = [
        replace(a, category_id=new_id[a.category_id]) for a in index.annotations if a.category_id in new_id
    ]
    positive = {a.image_id for a in anns if not a.iscrowd}
    pos_ids = [im.id for im in index.images if im.id in positive]
    neg_ids = [im.id for im in index.images if im.id not in positive]
    rng = np.random.default_rng(seed)
    n_pos = len(pos_ids)
    if max_images is not None:
        n_pos = min(n_pos, max(0, round(max_images * (1.0 - negatives))))
    n_neg = min(len(neg_ids), round(n_pos * negatives / (1.0 - negatives)))
    if max_images is not None:
        n_neg = min(n_neg, max_images - n_pos)
    chosen = set(_draw(pos_ids, n_pos, rng)) | set(_draw(neg_ids, n_neg, rng))
    return CocoIndex(
        images=[im for im in index.images if im.id in chosen],
        annotations=[a for a in anns if a.image_id in chosen],
        categories=[replace(by_name[n], id=k + 1) for k, n in enumerate(classes)],
        source=None,
        extra={k: v for k, v in index.extra.items() if k in ("info", "licenses")},
    )


def _draw(ids: list[int], k: int, rng: np.random.Generator) -> list[int]:
    if k >= len(ids):
        return ids
    return [ids[i] for i in sorted(rng.choice(len(ids), size=k, replace=False).tolist())]


def source_tags(paths: Sequence[str | Path]) -> list[str]:
    """Default merge tags: the file stems, made unique with ``_2``, ``_3``..."""
    tags: list[str] = []
    for p in paths:
        base = Path(p).stem or "source"
        tag, n = base, 1
        while tag in tags:
            n += 1
            tag = f"{base}_{n}"
        tags.append(tag)
    return tags


def merge(
    sources: Sequence[CocoIndex], *, mapping: Mapping[str, str | None] | None = None, tags: Sequence[str]
) -> CocoIndex:
    """Merge several indexes into one with a unified class list.

    Args:
        sources: the indexes, in order.
        mapping: source class name -> unified name, or ``None``/``"drop"`` to drop the class.
            Names not in the mapping keep their own name. Unified classes get ids ``1..K`` in order
            of first appearance among the mapping's values, then of the sources' categories.
        tags: one tag per source; each ``file_name`` becomes ``"{tag}/{file_name}"``.
    Returns:
        a new index with image ids ``1..N`` and annotation ids ``1..M`` in source order.
    """
    if len(tags) != len(sources):
        raise DataError(f"merge needs one tag per source, got {len(tags)} tags for {len(sources)} sources")
    if len(set(tags)) != len(tags):
        raise DataError(f"merge tags must be unique, got {list(tags)}")
    mapping = dict(mapping or {})

    def target(name: str) -> str | None:
        out = mapping.get(name, name)
        return None if out is None or out == DROP else out

    order: list[str] = []
    for v in mapping.values():
        if v is not None and v != DROP and v not in order:
            order.append(v)
    for src in sources:
        for c in src.categories:
            t = target(c.name)
            if t is not None and t not in order:
                order.append(t)
    unified = {n: k + 1 for k, n in enumerate(order)}
    supercat: dict[str, str] = {}
    images, anns = [], []
    for src, tag in zip(sources, tags, strict=True):
        cat_map = {c.id: unified[t] for c in src.categories if (t := target(c.name)) is not None}
        for c in src.categories:
            if (t := target(c.name)) is not None:
                supercat.setdefault(t, c.supercategory)
        img_map: dict[int, int] = {}
        for im in src.images:
            if im.id in img_map:
                raise DataError(
                    f"{src.source}: duplicate image id {im.id}; run `detrkit data check`", path=src.source
                )
            img_map[im.id] = len(images) + 1
            images.append(replace(im, id=len(images) + 1, file_name=f"{tag}/{im.file_name}"))
        for a in src.annotations:
            if a.category_id in cat_map and a.image_id in img_map:
                anns.append(
                    replace(
                        a, id=len(anns) + 1, image_id=img_map[a.image_id], category_id=cat_map[a.category_id]
                    )
                )
    categories = [Category(k, n, supercat.get(n, "")) for n, k in unified.items()]
    return CocoIndex(images=images, annotations=anns, categories=categories, source=None)


def link_image_roots(link_dir: str | Path, tags: Sequence[str], image_dirs: Sequence[str | Path]) -> Path:
    """Create ``link_dir/<tag>`` symlinks to each source's image folder; returns ``link_dir``.

    With these links, a merged file is used as ``--images link_dir``.
    """
    link_dir = Path(link_dir)
    link_dir.mkdir(parents=True, exist_ok=True)
    for tag, src in zip(tags, image_dirs, strict=True):
        src = Path(src).resolve()
        if not src.is_dir():
            raise DataError(f"{src}: images folder not found", path=src)
        link = link_dir / tag
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == src:
                continue
            raise DataError(f"{link}: already exists; choose another --images-out folder", path=link)
        link.symlink_to(src, target_is_directory=True)
    return link_dir


def split(index: CocoIndex, *, val_fraction: float, seed: int = 0) -> tuple[CocoIndex, CocoIndex]:
    """Split by image into ``(train, val)``, stratified over classes.

    Iterative stratification: classes are visited from the rarest; each of its still unassigned
    images goes to the part whose remaining demand for that class is larger (demand: the class's
    images times the part's fraction, at least one for classes with two or more images). Images
    without annotations fill the parts up to ``round(val_fraction * N)`` validation images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    classes_of: dict[int, set[int]] = {im.id: set() for im in index.images}
    for a in index.annotations:
        if a.image_id in classes_of:
            classes_of[a.image_id].add(a.category_id)
    images_of: dict[int, list[int]] = {}
    for iid, cats in classes_of.items():
        for c in cats:
            images_of.setdefault(c, []).append(iid)
    n_val_target = round(val_fraction * len(index.images))
    fractions = (1.0 - val_fraction, val_fraction)
    need = [{}, {}]  # part -> class -> remaining demand
    for c, ims in images_of.items():
        for p in (0, 1):
            need[p][c] = max(fractions[p] * len(ims), 1.0 if len(ims) >= 2 else 0.0)
    total_need = [len(index.images) - n_val_target, n_val_target]
    part: dict[int, int] = {}
    remaining = {c: set(ims) for c, ims in images_of.items()}
    while any(remaining.values()):
        c = min((c for c, ims in remaining.items() if ims), key=lambda c: (len(remaining[c]), c))
        ims = sorted(remaining[c])
        for iid in (ims[i] for i in rng.permutation(len(ims))):
            p = 1 if (need[1][c], total_need[1]) > (need[0][c], total_need[0]) else 0
            part[iid] = p
            total_need[p] -= 1
            for c2 in classes_of[iid]:
                need[p][c2] -= 1
                remaining[c2].discard(iid)
    empty = [im.id for im in index.images if im.id not in part]
    for iid in (empty[i] for i in rng.permutation(len(empty))):
        p = 1 if total_need[1] > total_need[0] else 0
        part[iid] = p
        total_need[p] -= 1
    out = []
    for p in (0, 1):
        keep = {iid for iid, q in part.items() if q == p}
        out.append(
            CocoIndex(
                images=[im for im in index.images if im.id in keep],
                annotations=[a for a in index.annotations if a.image_id in keep],
                categories=list(index.categories),
                source=None,
                extra=dict(index.extra),
            )
        )
    return out[0], out[1]


def class_image_counts(index: CocoIndex) -> dict[str, int]:
    """``{class name: number of images with at least one box of it}`` (helper for summaries)."""
    names = {c.id: c.name for c in index.categories}
    seen: dict[str, set[int]] = {n: set() for n in names.values()}
    for a in index.annotations:
        if a.category_id in names:
            seen[names[a.category_id]].add(a.image_id)
    return {n: len(s) for n, s in seen.items()}
