"""Which classes are rare: named by the user, or found from instance counts.

``find_rare_classes(index, fraction=0.05)`` returns the classes holding less than 5% of the
(non-crowd) instances; ``find_rare_classes(index, k=2)`` the two least frequent. ``detrkit data
stats`` marks the classes this returns, and ``detrkit synth --rare-k/--rare-fraction`` uses it.
"""

from __future__ import annotations

from collections import Counter
from difflib import get_close_matches

from detrkit.data.coco import CocoIndex
from detrkit.errors import DetrkitError


class SynthError(DetrkitError):
    """A synthesis request cannot be carried out (unknown class, no instances, missing extra)."""


def instance_counts(index: CocoIndex) -> dict[str, int]:
    """Non-crowd instances per class name, in contiguous label order (classes with none count 0)."""
    counts = Counter(a.category_id for a in index.annotations if not a.iscrowd)
    names = {c.id: c.name for c in index.categories}
    return {names[cid]: counts.get(cid, 0) for cid in index.category_ids}


def find_rare_classes(index: CocoIndex, *, fraction: float | None = None, k: int | None = None) -> list[str]:
    """Rare class names, least frequent first (ties broken by contiguous label order).

    Args:
        index: the training annotations.
        fraction: classes with fewer than ``fraction`` of all non-crowd instances are rare.
        k: the ``k`` least frequent classes are rare. With both, a class must satisfy both.
    Returns:
        names of the rare classes (classes with zero instances included).
    Raises:
        ValueError: neither or an out-of-range ``fraction``/``k`` given.
    """
    if fraction is None and k is None:
        raise ValueError("give fraction (e.g. 0.05) or k (e.g. 2) to find rare classes")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    counts = instance_counts(index)
    items = list(counts.items())
    ranked = [items[i][0] for i in sorted(range(len(items)), key=lambda i: (items[i][1], i))]
    if k is not None:
        ranked = ranked[:k]
    if fraction is not None:
        total = sum(counts.values())
        ranked = [n for n in ranked if counts[n] < fraction * total]
    return ranked


def resolve_classes(index: CocoIndex, names: list[str]) -> list[int]:
    """Class names -> COCO category ids; an unknown name raises :class:`SynthError` with a hint."""
    by_name = {c.name: c.id for c in index.categories}
    ids = []
    for name in names:
        if name not in by_name:
            close = get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (classes: {', '.join(by_name)})"
            raise SynthError(f"{index.source or '<annotations>'}: no class named '{name}'{hint}")
        ids.append(by_name[name])
    return ids
