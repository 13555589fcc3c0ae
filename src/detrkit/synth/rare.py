"""Which classes are rare: named by the user, or found from counts.

The definition is the one ``detrkit data stats`` marks (:func:`detrkit.data.stats.compute_stats`),
so the two commands always agree: a class is rare when the number of training images showing it is
below ``fraction`` times that of the most frequent class. ``k`` picks the ``k`` classes shown in the
fewest images instead (ties: fewer instances first, then label order).
"""

from __future__ import annotations

from difflib import get_close_matches

from detrkit.data.coco import CocoIndex
from detrkit.data.stats import compute_stats
from detrkit.errors import DetrkitError


class SynthError(DetrkitError):
    """A synthesis request cannot be carried out (unknown class, no instances, missing extra)."""


def find_rare_classes(index: CocoIndex, *, fraction: float | None = None, k: int | None = None) -> list[str]:
    """Rare class names, rarest first.

    Args:
        index: the training annotations (crowd annotations are not counted).
        fraction: classes shown in fewer than ``fraction`` x (images of the most frequent class)
            images are rare -- exactly the classes ``detrkit data stats`` marks.
        k: the ``k`` classes shown in the fewest images are rare. With both, both must hold.
    Returns:
        names of the rare classes (classes with no instance at all included).
    Raises:
        ValueError: neither or an out-of-range ``fraction``/``k`` given.
    """
    if fraction is None and k is None:
        raise ValueError("give fraction (e.g. 0.05) or k (e.g. 2) to find rare classes")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    stats = compute_stats(index, rare_fraction=fraction if fraction is not None else 0.05)
    ranked = sorted(enumerate(stats.classes), key=lambda t: (t[1].images, t[1].instances, t[0]))
    chosen = [c for _, c in ranked]
    if k is not None:
        chosen = chosen[:k]
    if fraction is not None:
        chosen = [c for c in chosen if c.rare]
    return [c.name for c in chosen]


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
