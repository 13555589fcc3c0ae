"""``detrkit predict --backend onnxruntime`` against ``--backend torch``, and its one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detrkit.cli.main import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

NAMES, CAT_IDS = ["a", "b"], [3, 7]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A randomly initialised detr-tiny run (``val`` preset, shorter side 64) and two images."""
    from detrkit.models.registry import build_model

    root = tmp_path_factory.mktemp("onnx_cli")
    torch.manual_seed(1)
    model = build_model("detr-tiny", num_classes=2, num_queries=10)
    ckpt = {
        "model": model.state_dict(),
        "epoch": 1,
        "config": {
            "model": {"name": "detr-tiny", "overrides": {"num_queries": 10}},
            "data": {"val_preset": "val", "transform_args": {"size": 64, "max_size": 112}},
        },
        "classes": {"names": NAMES, "category_ids": CAT_IDS},
        "model_name": "detr-tiny",
    }
    (root / "run" / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, root / "run" / "checkpoints" / "best.pt")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(100, 70), (60, 90)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    return root / "run", images


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def test_predict_backend_onnxruntime_equals_torch(
    tiny_run: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    run, images = tiny_run
    summaries, preds = {}, {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        args = ["predict", "--run", str(run), "--source", str(images), "--out", str(out), "--threshold", "0",
                "--device", "cpu", "--backend", backend, "--no-draw", "--json"]  # fmt: skip
        assert _run(args) == 0
        summaries[backend] = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
        preds[backend] = json.loads((out / "predictions.json").read_text())
    assert (run / "export" / "best.onnx").is_file()
    assert summaries["onnxruntime"]["backend"] == "onnxruntime"
    assert summaries["torch"]["detections"] == summaries["onnxruntime"]["detections"] == 2 * 10
    got, want = preds["onnxruntime"], preds["torch"]
    assert [(p["image_id"], p["category_id"]) for p in got] == [
        (p["image_id"], p["category_id"]) for p in want
    ]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-4)
    np.testing.assert_allclose(
        [p["bbox"] for p in got], [p["bbox"] for p in want], atol=1.5e-3
    )  # rounded to 3 decimals


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_predict_backend_errors_exit_2(
    tiny_run: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, images = tiny_run
    args = ["predict", "--run", str(run), "--source", str(images), "--out", str(tmp_path / "o")]
    assert _run([*args, "--backend", "tensorrt"]) == 2
    assert "--backend must be one of torch, onnxruntime" in _one_error_line(capsys.readouterr().err)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    assert _run([*args, "--backend", "onnxruntime"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "needs the 'onnxruntime' package" in line and "pip install" in line
    assert not (tmp_path / "o").exists()
