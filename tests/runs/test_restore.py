"""``detrkit.runs``: the one restore path, metrics files, checkpoint reading."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from detrkit.errors import CheckpointError
from detrkit.runs import restore
from detrkit.runs.metrics import read_metrics_csv, write_metrics_csv

NAMES = ["circle", "square"]


def _fake_run(root: Path, *, ema: bool = False) -> tuple[Path, dict[str, torch.Tensor]]:
    from detrkit.models.registry import build_model

    torch.manual_seed(1)
    model = build_model("detr-tiny", num_classes=2, num_queries=10)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = {
        "model": {k: torch.zeros_like(v) for k, v in weights.items()} if ema else weights,
        "ema": {"module": weights} if ema else None,
        "epoch": 3,
        "config": {
            "model": {"name": "detr-tiny", "overrides": {"num_queries": 10}},
            "data": {"transform_args": {"size": 64, "max_size": 96}, "size_divisibility": 32},
        },
        "classes": {"names": NAMES, "category_ids": [4, 7]},
        "model_name": "detr-tiny",
    }
    (root / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, root / "checkpoints" / "last.pt")
    return root, weights


@pytest.mark.parametrize("ema", [False, True])
def test_restore_rebuilds_the_saved_weights(tmp_path: Path, ema: bool) -> None:
    run, weights = _fake_run(tmp_path / "run", ema=ema)
    restored = restore(run)  # best falls back to last
    model, classes, transform, config = restored
    assert restored.path == run / "checkpoints" / "last.pt" and restored.checkpoint["epoch"] == 3
    assert not model.training
    got = model.state_dict()
    assert set(got) == set(weights) and all(torch.equal(got[k], weights[k]) for k in weights)
    assert classes["names"] == NAMES and classes["category_ids"] == [4, 7]
    assert config.model.overrides == {"num_queries": 10} and config.data.size_divisibility == 32
    # the eval transform is the run's val preset at the run's size: shorter side 64 unless the
    # longer side would pass 96; 120x200 -> scale min(64/120, 96/200) = 0.48 -> 57.6 x 96
    from torchvision import tv_tensors

    from detrkit.data.transforms import make_target

    image = tv_tensors.Image(torch.zeros(3, 120, 200, dtype=torch.uint8))
    out, _ = transform(image, make_target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (120, 200)))
    assert tuple(out.shape[-2:]) == (57, 96)


def test_restore_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such run folder"):
        restore(tmp_path / "missing")
    run, _ = _fake_run(tmp_path / "run")
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    torch.save({**ckpt, "kind": "aerial-segmentation"}, tmp_path / "aerial.pt")
    with pytest.raises(CheckpointError, match=r"aerial\.pt: not a detector checkpoint"):
        restore(tmp_path / "aerial.pt")
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if "bbox_embed" not in k}
    torch.save(ckpt, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"cut\.pt: weights do not fit"):
        restore(tmp_path / "cut.pt")
    from detrkit.aerial.model import AERIAL

    with pytest.raises(CheckpointError, match="not an aerial segmentation checkpoint"):
        restore(run, kind=AERIAL)


def test_metrics_csv_round_trip_with_a_new_column(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    rows = [{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "train/loss": 0.25, "val/AP": 0.125}]
    write_metrics_csv(path, rows)
    with path.open(newline="") as fh:  # the csv module reads what we wrote: a widened header
        raw = list(csv.reader(fh))
    assert raw == [["epoch", "train/loss", "val/AP"], ["1", "0.5", ""], ["2", "0.25", "0.125"]]
    assert read_metrics_csv(path) == rows
    write_metrics_csv(path, [])
    assert not path.exists() and read_metrics_csv(path) == []
