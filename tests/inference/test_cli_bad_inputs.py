"""predict / analyze / val with bad inputs: one line for a missing GPU, bad images skipped by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from detrkit.cli.main import main

from .conftest import CATEGORY_IDS, CLASS_NAMES


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def mixed_folder(sample_images: list[Path], tmp_path: Path) -> tuple[Path, Path]:
    """The three good JPEGs plus ``bad.jpg``, the first half of a JPEG (truncated)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_images:
        shutil.copy(p, folder / p.name)
    data = sample_images[0].read_bytes()
    bad = folder / "bad.jpg"
    bad.write_bytes(data[: len(data) // 2])
    return folder, bad


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:1"])
def test_predict_on_a_gpu_that_is_not_there(
    fake_run: Path, sample_images: list[Path], tmp_path: Path, no_gpu: None, capsys, device: str
) -> None:
    args = [
        "predict",
        "--run",
        str(fake_run),
        "--source",
        str(sample_images[0]),
        "--out",
        str(tmp_path / "o"),
    ]
    assert _run([*args, "--device", device]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--device {device}: no CUDA GPU" in line and "devices: cpu" in line
    assert not (tmp_path / "o").exists()


def test_val_on_a_gpu_that_is_not_there(fake_run: Path, no_gpu: None, capsys) -> None:
    assert _run(["val", "--run", str(fake_run), "--device", "gpu"]) == 2
    assert "no CUDA GPU on this machine (devices: cpu)" in _one_error_line(capsys.readouterr().err)


def test_predict_skips_and_names_a_truncated_image(
    fake_run: Path, mixed_folder: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    folder, bad = mixed_folder
    out = tmp_path / "preds"
    args = ["predict", "--run", str(fake_run), "--source", str(folder), "--out", str(out), "--threshold", "0"]
    assert _run([*args, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["images"] == 3 and summary["skipped"] == 1 and summary["skipped_files"] == [str(bad)]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(bad) in warnings[0]
    assert "3 of 4 images predicted, 1 unreadable skipped" in captured.err
    ids = json.loads((out / "image_ids.json").read_text())
    assert sorted(Path(i["file_name"]).name for i in ids) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    preds = json.loads((out / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {i["id"] for i in ids}  # 20 queries, threshold 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert _run([*args, "--strict", "--out", str(tmp_path / "strict")]) == 1


def test_predict_with_no_readable_image_leaves_no_images_folder(
    fake_run: Path, mixed_folder: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, bad = mixed_folder
    out = tmp_path / "preds"
    assert _run(["predict", "--run", str(fake_run), "--source", str(bad), "--out", str(out)]) == 0
    assert json.loads((out / "predictions.json").read_text()) == []
    assert not (out / "images").exists()
    assert "0 of 1 images predicted" in capsys.readouterr().err


def test_analyze_leaves_out_an_unreadable_val_image(
    fake_run: Path, mixed_folder: tuple[Path, Path], tmp_path: Path, capsys, no_gpu: None
) -> None:
    folder, bad = mixed_folder
    images, anns = [], []
    for i, name in enumerate(["img0.jpg", "img1.jpg", "img2.jpg", "bad.jpg"]):
        w, h = Image.open(folder / ("img0.jpg" if name == "bad.jpg" else name)).size
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[i % 3], "bbox": [5, 5, 30, 20],
                     "area": 600.0, "iscrowd": 0})  # fmt: skip
    cats = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)]
    gt = tmp_path / "val.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    cfg = {"model": {"name": "detr-tiny"}, "data": {"val_ann": str(gt), "val_images": str(folder)}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert _run(["analyze", "--run", str(run), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in _one_error_line(capsys.readouterr().err)

    assert _run(["analyze", "--run", str(run), "--gallery", "0", "--json"]) == 0
    captured = capsys.readouterr()
    assert str(bad) in captured.err and "1 unreadable image(s)" in captured.err
    errors = json.loads((run / "errors.json").read_text())
    assert errors["coco"]["num_images"] == 3  # the bad image's object does not count as missed
    preds = json.loads((run / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {1, 2, 3}
    assert _run(["analyze", "--run", str(run), "--gallery", "0", "--strict"]) == 1
    capsys.readouterr()

    # one unit in the terminal output: TIDE and COCO numbers both in AP points (0-100)
    assert (
        _run(["analyze", "--run", str(run), "--gallery", "0", "--pred", str(run / "predictions.json")]) == 0
    )
    out = capsys.readouterr().out
    coco_line = next(line for line in out.splitlines() if line.startswith("COCO AP"))
    ap = float(coco_line.split()[2])
    assert "AP points" in coco_line and "AP points, 0-100" in out
    stats = json.loads((run / "errors.json").read_text())["coco"]["stats"]
    assert ap == pytest.approx(100 * stats["AP"], abs=0.051)


def test_torchscript_export_prints_no_future_warning(fake_run: Path, tmp_path: Path) -> None:
    import warnings

    from detrkit.inference.export import export_model
    from detrkit.inference.predictor import Predictor

    model = Predictor.from_run(fake_run, device="cpu").model
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # torch.jit.save/load warn on torch >= 2.9
        result = export_model(model, tmp_path / "m.ts", format="torchscript", height=64, width=64)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
