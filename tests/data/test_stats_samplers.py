"""Dataset statistics and repeat-factor sampling against hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detrkit.cli.main import app
from detrkit.data.coco import CocoIndex
from detrkit.data.samplers import RepeatFactorSampler, repeat_factors
from detrkit.data.stats import compute_stats


def test_stats_by_hand(tiny_coco: dict) -> None:
    tiny_coco["annotations"].append(
        {"id": 14, "image_id": 5, "category_id": 7, "bbox": [0, 0, 63, 79], "area": 96.0**2, "iscrowd": 0}
    )
    s = compute_stats(CocoIndex.from_dict(tiny_coco), rare_fraction=0.6)
    cat, dog = s.classes  # contiguous order: cat (id 3), dog (id 7)
    # cat: ann 11 (area 900 < 32^2: small); the crowd ann 12 is not counted
    assert (cat.name, cat.instances, cat.images, cat.small, cat.medium, cat.large) == ("cat", 1, 1, 1, 0, 0)
    # dog: ann 10 (320 small), 13 (1440 medium), 14 (96^2: large, the range is [96^2, inf))
    assert (dog.instances, dog.images, dog.small, dog.medium, dog.large) == (3, 2, 1, 1, 1)
    # boxes per image: image 1 -> 2, image 2 -> 0 (crowd only), image 5 -> 2
    assert s.boxes_per_image == [2, 0, 2]
    assert (s.boxes_per_image_mean, s.boxes_per_image_median, s.boxes_per_image_max) == (4 / 3, 2.0, 2)
    assert s.num_empty_images == 1 and s.num_crowd == 1 and s.num_annotations == 4
    assert (s.small, s.medium, s.large) == (2, 1, 1)
    assert s.rare_classes == ["cat"]  # 1 image < 0.6 * 2
    assert s.to_dict()["boxes_per_image_histogram"] == [1, 0, 2]


def test_stats_cli_json_and_plots(tmp_path: Path, tiny_coco: dict) -> None:
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(tiny_coco))
    result = runner().invoke(
        app, ["data", "stats", "--ann", str(ann), "--plots", str(tmp_path / "p"), "--json"]
    )
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert [c["instances"] for c in d["classes"]] == [1, 2]
    assert sorted(Path(p).name for p in d["plots"]) == [
        "box_sizes.png",
        "boxes_per_image.png",
        "class_counts.png",
    ]
    assert all(Path(p).stat().st_size > 1000 for p in d["plots"])
    table = runner().invoke(app, ["data", "stats", "--ann", str(ann)])
    assert table.exit_code == 0 and "dog" in table.output and "boxes per image" in table.output


def runner() -> CliRunner:
    return CliRunner()


LABELS = [[0], [0, 1, 1], [2], [], [0]]  # f_0 = 3/5, f_1 = 1/5, f_2 = 1/5


def test_repeat_factors_by_hand() -> None:
    r = repeat_factors(LABELS, threshold=0.5)
    # r_0 = max(1, sqrt(0.5 / 0.6)) = 1; r_1 = r_2 = sqrt(0.5 / 0.2) = 1.5811; image = max over classes
    np.testing.assert_allclose(r, [1.0, math.sqrt(2.5), math.sqrt(2.5), 1.0, 1.0])
    np.testing.assert_allclose(repeat_factors(LABELS, threshold=0.1), np.ones(5))
    with pytest.raises(ValueError):
        repeat_factors(LABELS, threshold=0)


def test_stochastic_rounding_per_epoch() -> None:
    sampler = RepeatFactorSampler.from_labels(LABELS, threshold=0.5, seed=7)
    totals = np.zeros(5)
    epochs = 4000
    lists = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        idx = list(sampler)
        assert len(idx) == len(sampler)
        counts = np.bincount(idx, minlength=5)
        assert counts[[0, 3, 4]].tolist() == [1, 1, 1]  # factor 1: exactly once
        assert set(counts[[1, 2]].tolist()) <= {1, 2}  # floor or ceil of 1.58
        totals += counts
        if epoch < 3:
            lists.append(idx)
    # the expected count is the factor: 1.5811 (binomial std over 4000 epochs ~ 0.008)
    np.testing.assert_allclose(totals / epochs, [1, math.sqrt(2.5), math.sqrt(2.5), 1, 1], atol=0.03)
    sampler.set_epoch(1)
    assert list(sampler) == lists[1]  # reproducible per (seed, epoch)
    assert lists[0] != lists[1] or lists[1] != lists[2]
