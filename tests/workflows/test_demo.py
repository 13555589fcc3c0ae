"""``python -m detrkit.demo`` end to end on a tiny budget: dataset, training, evaluation, analysis, drawings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = [
    "data.shapes.train=8",
    "data.shapes.val=4",
    "data.shapes.size=64",
    "data.transform_args.size=64",
    "train.epochs=1",
    "train.batch_size=4",
    "eval.batch_size=4",
    "optim.warmup_steps=1",
    "train.preflight=false",
    "output.tensorboard=false",
    "output.plots=false",
]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    from detrkit.workflows.demo import run_demo

    result = run_demo(str(tmp_path / "runs"), str(tmp_path / "shapes"), TINY)
    run = Path(result["run_dir"])
    # the evaluation of best.pt is the run's own end-of-epoch validation (same weights, same data)
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert result["eval"]["metrics"]["AP50"] == pytest.approx(final["val/AP50"], abs=1e-9)
    # the analysis ran on the run's predictions and the drawings use its best-F1 confidence
    errors = json.loads((run / "errors.json").read_text())
    assert (run / "report.html").is_file() and errors["num_images"] == 4
    drawn = [Path(p) for p in result["drawn"]]
    assert len(drawn) == 4 and all(p.is_file() and p.suffix == ".png" for p in drawn)
    assert (tmp_path / "shapes" / "annotations" / "val.json").is_file()
