"""``detrkit benchmark`` end to end on generated shapes data: a model trained here, the same run
folder under another name, and a prediction file of "another tool" (the ground truth itself)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.mark.slow
def test_benchmark_trains_collects_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detrkit.cli.main import app
    from detrkit.data.shapes import generate_shapes
    from detrkit.models.registry import build_model

    monkeypatch.chdir(tmp_path)
    paths = generate_shapes(tmp_path / "shapes", train=4, val=3, size=64, seed=0)
    gt = json.loads(paths.val_ann.read_text())
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    (tmp_path / "perfect.json").write_text(json.dumps(perfect))
    out = tmp_path / "bench"
    args = ["benchmark", "--data", "shapes", "--models", "detr-tiny", "--pred", "perfect=perfect.json",
            "--epochs", "1", "--out", str(out), "--latency-images", "2", "train.max_steps_per_epoch=1",
            "train.batch_size=2", "output.tensorboard=false", "output.plots=false", "train.preflight=false"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = out / "runs" / "detr-tiny"
    assert (run / "checkpoints" / "best.pt").is_file()
    # the same run folder again, as a --run entry: the same numbers
    result = CliRunner().invoke(app, [*args[:5], "--run", f"again={run}", *args[5:]])
    assert result.exit_code == 0, result.output
    for name in (
        "benchmark.md",
        "benchmark.csv",
        "benchmark.json",
        "benchmark_per_class.csv",
        "index.html",
        "ap_vs_latency.png",
    ):
        assert (out / name).is_file(), name
    rows = {r["name"]: r for r in json.loads((out / "benchmark.json").read_text())["rows"]}
    assert set(rows) == {"detr-tiny", "again", "perfect"}
    # the ground truth as predictions scores 1.0 (COCO's own definition, by faster-coco-eval)
    assert rows["perfect"]["metrics"]["AP"] == pytest.approx(1.0)
    assert rows["perfect"]["latency_ms"] is None and rows["perfect"]["source"] == "predictions"
    trained, again = rows["detr-tiny"], rows["again"]
    assert trained["metrics"] == again["metrics"] and again["source"] == "run"
    # one epoch: best.pt is the last epoch, whose validation the trainer recorded
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert trained["metrics"]["AP"] == pytest.approx(final["val/AP"], abs=1e-9)
    num_classes = len(gt["categories"])
    params = sum(p.numel() for p in build_model("detr-tiny", num_classes=num_classes).parameters()) / 1e6
    assert trained["params_m"] == pytest.approx(params)
    assert trained["latency_ms"] > 0 and trained["train_images_per_s"] > 0
    assert set(trained["per_class"]) == {c["name"] for c in gt["categories"]}
    with (out / "benchmark.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table][0] == "perfect"  # sorted by AP
    assert "again" in (out / "index.html").read_text() and "| model |" in (out / "benchmark.md").read_text()


def test_benchmark_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from detrkit.cli.main import main

    for args, message in (
        ([], "give --models"),
        (["--models", "detr-tiny"], "give --data"),
        (["--pred", "x"], "NAME=PATH"),
        (["--pred", f"x={tmp_path / 'p.json'}"], "needs --val-ann"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["benchmark", "--out", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err
