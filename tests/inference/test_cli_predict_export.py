"""`detrkit predict` and `detrkit export` end to end on the fake run; export parity."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from detrkit.cli.main import main
from detrkit.data.visualize import GT_COLOR, PRED_COLOR
from detrkit.errors import ConfigError
from detrkit.evaluation.coco import evaluate_coco
from detrkit.inference.export import example_inputs, export_model
from detrkit.inference.predictor import Predictor

from .conftest import CATEGORY_IDS, CLASS_NAMES


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


@pytest.fixture(scope="module")
def gt_file(sample_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, anns = [], []
    for i, p in enumerate(sample_images):
        w, h = Image.open(p).size
        images.append({"id": 100 + i, "file_name": p.name, "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": 100 + i, "category_id": CATEGORY_IDS[i], "bbox": [10, 10, 40, 30],
                     "area": 1200.0, "iscrowd": 0})  # fmt: skip
    cats = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)]
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 60) -> np.ndarray:
    return np.abs(pixels.astype(int) - np.array(colour)).max(axis=-1) <= tol


def test_predict_with_annotations(
    fake_run: Path, sample_images: list[Path], gt_file: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "preds"
    folder = str(sample_images[0].parent)
    args = ["predict", "--run", str(fake_run), "--source", folder, "--out", str(out), "--threshold", "0.0",
            "--ann", str(gt_file), "--batch-size", "2", "--json"]  # fmt: skip
    assert _run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    preds = json.loads((out / "predictions.json").read_text())
    assert summary["images"] == 3 and summary["detections"] == len(preds) == 3 * 20
    assert {p["image_id"] for p in preds} == {100, 101, 102}
    assert {p["category_id"] for p in preds} <= set(CATEGORY_IDS)
    # valid COCO results: loadable by pycocotools and accepted by our validator
    coco = COCO(str(gt_file))
    assert len(coco.loadRes(str(out / "predictions.json")).getAnnIds()) == len(preds)
    assert evaluate_coco(gt_file, out / "predictions.json").num_predictions == len(preds)
    # the same numbers as the library with the same batching (padding changes DETR's outputs)
    direct = Predictor.from_run(fake_run, device="cpu").predict(
        sorted(sample_images), threshold=0.0, batch_size=2
    )
    for i, det in enumerate(direct):
        mine = [p for p in preds if p["image_id"] == 100 + i]
        np.testing.assert_allclose([p["score"] for p in mine], det.scores, atol=1e-5)
        np.testing.assert_allclose([p["bbox"][0] for p in mine], det.boxes_xyxy[:, 0], atol=2e-3)
    # drawn: GT box (10,10)-(50,40) green on its left edge, red pixels somewhere
    drawn = np.asarray(Image.open(out / "images" / "img0.jpg").convert("RGB"))
    assert drawn.shape[:2] == (90, 120)
    red_with = _near(drawn, PRED_COLOR, 50).sum()
    # with no prediction above the threshold only the GT is drawn
    assert _run([*args[:7], "--threshold", "0.99", *args[9:]]) == 0
    capsys.readouterr()
    drawn = np.asarray(Image.open(out / "images" / "img0.jpg").convert("RGB"))
    assert _near(drawn[15:30, 10], GT_COLOR).mean() > 0.6  # left edge of the box (10,10)-(50,40)
    assert red_with > _near(drawn, PRED_COLOR, 50).sum() + 100  # 20 red boxes were drawn before
    assert not (out / "image_ids.json").exists()


def test_predict_without_annotations_writes_id_map(
    fake_run: Path, sample_images: list[Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "p2"
    source = str(sample_images[0].parent / "img*.jpg")
    assert (
        _run(["predict", "--run", str(fake_run), "--source", source, "--out", str(out), "--threshold", "0.3"])
        == 0
    )
    assert "detections" in capsys.readouterr().out
    id_map = json.loads((out / "image_ids.json").read_text())
    assert [m["id"] for m in id_map] == [1, 2, 3]
    assert [Path(m["file_name"]).name for m in id_map] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    preds = json.loads((out / "predictions.json").read_text())
    assert all(p["score"] >= 0.3 for p in preds) and {p["image_id"] for p in preds} <= {1, 2, 3}
    assert len(list((out / "images").glob("*.jpg"))) == 3


def test_predict_bad_source_exits_2(fake_run: Path, tmp_path: Path, capsys) -> None:
    code = _run(
        ["predict", "--run", str(fake_run), "--source", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "no such image file or folder" in capsys.readouterr().err


def test_predict_precision_flag(fake_run: Path, sample_images: list[Path], tmp_path: Path, capsys) -> None:
    """--precision bf16 predicts (summary names it); a bad value and bf16 with onnxruntime exit 2."""
    args = ["predict", "--run", str(fake_run), "--source", str(sample_images[0]), "--no-draw", "--json"]
    assert _run([*args, "--out", str(tmp_path / "b"), "--precision", "bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bf16"
    assert _run([*args, "--out", str(tmp_path / "c"), "--precision", "fp8"]) == 2
    assert "precision must be one of fp32, bf16, auto" in capsys.readouterr().err
    if importlib.util.find_spec("onnxruntime") is not None:
        code = _run([*args, "--out", str(tmp_path / "d"), "--precision", "bf16", "--backend", "onnxruntime"])
        assert code == 2 and "torch backend only" in capsys.readouterr().err
        assert not (fake_run / "export").exists()  # refused before anything was exported


def test_predict_compile_flag_reaches_the_predictor(
    fake_run: Path, sample_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`predict --compile` hands the network to torch.compile (recorded here, not compiled)."""
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(net) or net)
    args = ["predict", "--run", str(fake_run), "--source", str(sample_images[0]), "--no-draw"]
    assert _run([*args, "--out", str(tmp_path / "a")]) == 0 and compiled == []
    assert _run([*args, "--out", str(tmp_path / "b"), "--compile"]) == 0 and len(compiled) == 1


def test_compile_flag_wraps_the_network(fake_run: Path) -> None:
    """compile=True hands the (folded) network to torch.compile; compiling waits for the first call."""
    pred = Predictor.from_run(fake_run, device="cpu", compile=True)
    assert isinstance(pred._net, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(
        Predictor.from_run(fake_run, device="cpu")._net, torch._dynamo.eval_frame.OptimizedModule
    )


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity(fake_run: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed")
    model = Predictor.from_run(fake_run, device="cpu").model
    result = export_model(model, tmp_path / f"m.{fmt}", format=fmt, height=96, width=128)
    assert result.path.is_file() and result.checked_with is not None
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    # independent check on a fresh input through the saved file
    images, mask = example_inputs(2, 96, 128, seed=5)
    with torch.no_grad():
        ref = model(images, mask)
    if fmt == "torchscript":
        logits, boxes = torch.jit.load(str(result.path))(images, mask)
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        logits, boxes = (
            torch.from_numpy(a)
            for a in sess.run(None, {"images": images.numpy(), "pixel_mask": mask.numpy()})
        )
    assert logits.shape == ref["pred_logits"].shape == (2, 20, len(CLASS_NAMES) + 1)
    torch.testing.assert_close(logits, ref["pred_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, ref["pred_boxes"], atol=1e-4, rtol=1e-4)


def test_export_cli_and_missing_onnx(
    fake_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model.ts"
    args = [
        "export",
        "--run",
        str(fake_run),
        "--format",
        "torchscript",
        "--out",
        str(out),
        "--height",
        "64",
        "--width",
        "96",
        "--json",
    ]
    assert _run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert out.is_file() and summary["max_abs_diff_logits"] < 1e-4 and summary["classes"] == CLASS_NAMES
    assert json.loads((tmp_path / "model.classes.json").read_text())["category_ids"] == CATEGORY_IDS

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    model = Predictor.from_run(fake_run, device="cpu").model
    with pytest.raises(ConfigError, match="pip install") as info:
        export_model(model, tmp_path / "m.onnx", format="onnx")
    assert "\n" not in str(info.value)
