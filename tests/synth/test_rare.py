"""Rare classes: by fraction (the `data stats` definition), by k, and class-name resolution."""

from __future__ import annotations

import pytest

from detrkit.data.coco import CocoIndex
from detrkit.data.stats import compute_stats
from detrkit.synth.rare import SynthError, find_rare_classes, resolve_classes


def _index() -> CocoIndex:
    # images showing each class: a=40, b=10, c=3 (with 6 instances), d=3 (3 instances), e=0; one crowd 'e'.
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(40)]
    anns = []

    def add(img: int, cat: int, crowd: int = 0) -> None:
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": img,
                "category_id": cat,
                "bbox": [1, 1, 2, 2],
                "area": 4,
                "iscrowd": crowd,
            }
        )

    for i in range(40):
        add(i, 1)
    for i in range(10):
        add(i, 2)
    for i in range(3):
        add(i, 3)
        add(i, 3)
        add(i + 10, 4)
    add(5, 5, crowd=1)
    cats = [{"id": k, "name": n} for k, n in zip(range(1, 6), "abcde", strict=True)]
    return CocoIndex.from_dict({"images": images, "annotations": anns, "categories": cats}, source="t.json")


def test_by_k_rarest_first_with_ties_by_instances() -> None:
    assert find_rare_classes(_index(), k=1) == ["e"]
    assert find_rare_classes(_index(), k=3) == ["e", "d", "c"]
    assert find_rare_classes(_index(), k=10) == ["e", "d", "c", "b", "a"]


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.3, 0.9])
def test_by_fraction_matches_data_stats(fraction: float) -> None:
    index = _index()
    expected = {"e"} | ({"c", "d"} if fraction * 40 > 3 else set()) | ({"b"} if fraction * 40 > 10 else set())
    got = find_rare_classes(index, fraction=fraction)
    assert set(got) == expected == set(compute_stats(index, rare_fraction=fraction).rare_classes)


def test_both_and_bad_arguments() -> None:
    assert find_rare_classes(_index(), fraction=0.1, k=2) == ["e", "d"]
    for kwargs in ({}, {"fraction": 0.0}, {"fraction": 1.5}, {"k": 0}):
        with pytest.raises(ValueError):
            find_rare_classes(_index(), **kwargs)


def test_resolve_classes() -> None:
    assert resolve_classes(_index(), ["c", "a"]) == [3, 1]
    with pytest.raises(SynthError, match=r"t\.json: no class named 'z'"):
        resolve_classes(_index(), ["z"])
