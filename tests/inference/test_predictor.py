"""Predictor: same detections as a direct forward + postprocess, inputs of every kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from detrkit.data.collate import normalize_images
from detrkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detrkit.errors import CheckpointError, DataError
from detrkit.inference.predictor import Detections, Predictor
from detrkit.models.registry import build_model

from .conftest import CATEGORY_IDS, CLASS_NAMES, OVERRIDES, TRANSFORM_ARGS


def direct_predictions(run: Path, paths: list[Path], threshold: float) -> list[dict]:
    """Reference: resize shorter side to 96 (longer <= 160), normalise, pad by hand, forward."""
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    model = build_model("detr-tiny", num_classes=3, **OVERRIDES)
    model.load_state_dict(ckpt["model"])
    model.eval()
    tensors, sizes = [], []
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        short, long = min(w, h), max(w, h)
        scale = min(TRANSFORM_ARGS["size"] / short, TRANSFORM_ARGS["max_size"] / long)
        new_hw = [round(h * scale), round(w * scale)] if h != w else [96, 96]
        x = F.resize(F.pil_to_tensor(im), new_hw, antialias=True).float() / 255
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        tensors.append(x)
        sizes.append([h, w])
    hmax, wmax = max(t.shape[1] for t in tensors), max(t.shape[2] for t in tensors)
    images = torch.zeros(len(tensors), 3, hmax, wmax)
    mask = torch.zeros(len(tensors), hmax, wmax, dtype=torch.bool)
    for i, t in enumerate(tensors):
        images[i, :, : t.shape[1], : t.shape[2]] = t
        mask[i, : t.shape[1], : t.shape[2]] = True
    with torch.no_grad():
        results = model.postprocess(model(images, mask), torch.tensor(sizes))
    return [{k: v[r["scores"] >= threshold] for k, v in r.items()} for r in results]


def test_predictions_equal_direct_forward(fake_run: Path, sample_images: list[Path]) -> None:
    predictor = Predictor.from_run(fake_run, device="cpu")
    assert predictor.class_names == CLASS_NAMES and predictor.category_ids == CATEGORY_IDS
    threshold = 0.3
    dets = predictor.predict(sample_images, threshold=threshold, batch_size=3)
    ref = direct_predictions(fake_run, sample_images, threshold)
    assert len(dets) == 3
    total = 0
    for d, r, path in zip(dets, ref, sample_images, strict=True):
        assert isinstance(d, Detections) and d.source == path
        w, h = Image.open(path).size
        assert d.image_size == (h, w)
        np.testing.assert_allclose(d.boxes_xyxy, r["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(d.scores, r["scores"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(d.labels, r["labels"].numpy())
        assert (d.scores >= threshold).all() and (np.diff(d.scores) <= 0).all()
        assert (d.boxes_xyxy[:, [0, 2]] <= w + 1e-3).all() and (d.boxes_xyxy[:, [1, 3]] <= h + 1e-3).all()
        total += len(d)
    assert total > 0  # the comparison is not vacuous


def test_input_kinds_and_batching_agree(fake_run: Path, sample_images: list[Path]) -> None:
    predictor = Predictor.from_checkpoint(fake_run / "checkpoints" / "last.pt", device="cpu")
    folder = sample_images[0].parent
    by_folder = predictor.predict(folder, threshold=0.0, batch_size=1)
    by_glob = predictor.predict(str(folder / "*.jpg"), threshold=0.0, batch_size=1)
    by_pil = predictor.predict(Image.open(sample_images[2]), threshold=0.0)
    assert [d.source for d in by_folder] == sorted(sample_images)
    assert [d.source for d in by_glob] == sorted(sample_images)
    assert by_pil[0].source is None
    np.testing.assert_allclose(by_pil[0].boxes_xyxy, by_folder[2].boxes_xyxy, atol=1e-4)
    assert len(by_folder[0]) == OVERRIDES["num_queries"]  # threshold 0 keeps every query


def test_to_coco_results_maps_labels_to_category_ids() -> None:
    d = Detections(
        boxes_xyxy=np.array([[10, 20, 30, 60], [0, 0, 5, 5]], dtype=np.float32),
        scores=np.array([0.9, 0.4], dtype=np.float32),
        labels=np.array([2, 0]),
        class_names=CLASS_NAMES,
        image_size=(100, 100),
    )
    res = d.to_coco_results(7, CATEGORY_IDS)
    assert res[0] == {
        "image_id": 7,
        "category_id": 9,
        "bbox": [10.0, 20.0, 20.0, 40.0],
        "score": pytest.approx(0.9),
    }
    assert res[1]["category_id"] == 2 and res[1]["bbox"] == [0.0, 0.0, 5.0, 5.0]
    assert d.names == ["star", "circle"] and len(d) == 2


def test_errors_name_the_path(tmp_path: Path, fake_run: Path) -> None:
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        Predictor.from_run(tmp_path / "nope")
    predictor = Predictor.from_run(fake_run, device="cpu")
    with pytest.raises(DataError, match="no such image"):
        predictor.predict(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="no image files"):
        predictor.predict(tmp_path)
    with pytest.raises(DataError, match="matches no image"):
        predictor.predict(str(tmp_path / "*.png"))
    bad = dict(torch.load(fake_run / "checkpoints" / "best.pt", weights_only=False))
    bad["model"] = {k: v for k, v in bad["model"].items() if "class_embed" not in k}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        Predictor.from_checkpoint(tmp_path / "bad.pt")


def test_from_pretrained_matches_transformers(tmp_path: Path, sample_images: list[Path]) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("timm")
    cfg = transformers.DetrConfig(
        backbone="resnet18", use_pretrained_backbone=False, d_model=64, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        num_queries=12, id2label={0: "N/A", 1: "person", 2: "bicycle"},
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.DetrForObjectDetection(cfg).eval()
    hf.save_pretrained(tmp_path)
    predictor = Predictor.from_pretrained(tmp_path, device="cpu", size=96)
    assert predictor.class_names == ["N/A", "person", "bicycle"] and predictor.category_ids == [0, 1, 2]
    image = Image.open(sample_images[0]).convert("RGB")
    det = predictor.predict(image, threshold=0.0)[0]
    pixels, _ = predictor.preprocess(image)
    assert pixels.dtype == torch.uint8
    pixels = normalize_images(pixels[None])[0]  # the model input, as Batch.normalized() makes it
    with torch.no_grad():
        out = hf(pixel_values=pixels[None], pixel_mask=torch.ones(1, *pixels.shape[1:], dtype=torch.long))
    prob = out.logits.softmax(-1)[0, :, :-1]
    scores, labels = prob.max(-1)
    order = scores.argsort(descending=True)
    cx, cy, w, h = out.pred_boxes[0, order].unbind(-1)
    width, height = image.size
    boxes = torch.stack(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1
    )
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height], dtype=boxes.dtype))
    np.testing.assert_allclose(det.scores, scores[order].numpy(), atol=1e-4)
    np.testing.assert_array_equal(det.labels, labels[order].numpy())
    np.testing.assert_allclose(det.boxes_xyxy, boxes.numpy(), atol=1e-2)


def _raw(predictor: Predictor, paths: list[Path]) -> list[dict]:
    """Unthresholded outputs of ``run_model`` for ``paths`` (same batch for every predictor)."""
    from detrkit.data.collate import collate_detection

    pils = [Image.open(p).convert("RGB") for p in paths]
    batch = collate_detection([predictor.preprocess(im) for im in pils])
    sizes = torch.tensor([[im.height, im.width] for im in pils])
    return predictor.run_model(batch.normalized(), batch.pixel_mask, sizes)


def test_optimized_and_bf16_inference_agree_with_plain(fake_run: Path, sample_images: list[Path]) -> None:
    """Folded BatchNorm + channels-last: the plain model's outputs to float rounding; bf16: close."""
    from detrkit.models.backbone import FrozenBatchNorm2d

    plain = Predictor.from_run(fake_run, device="cpu", optimize=False)
    with torch.no_grad():  # non-trivial frozen statistics, so that the fold changes the weights
        for m in plain.model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.mul_(1.3)
                m.running_var.mul_(0.7)
    opt = Predictor(model=plain.model, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS,
                    transform=plain.transform, optimize=True)  # fmt: skip
    bf16 = Predictor(model=plain.model, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS,
                     transform=plain.transform, precision="bf16")  # fmt: skip
    assert bf16.precision == "bf16" and opt.precision == "fp32"
    assert any(isinstance(m, FrozenBatchNorm2d) for m in plain.model.modules())  # model unchanged
    ref, got, low = _raw(plain, sample_images), _raw(opt, sample_images), _raw(bf16, sample_images)
    for r, g, b in zip(ref, got, low, strict=True):
        torch.testing.assert_close(g["scores"], r["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g["boxes"], r["boxes"], rtol=1e-4, atol=1e-3)
        assert b["scores"].dtype == torch.float32
        torch.testing.assert_close(b["scores"].sort().values, r["scores"].sort().values, rtol=0, atol=0.05)


def test_precision_values_are_checked(fake_run: Path) -> None:
    from detrkit.errors import ConfigError
    from detrkit.inference.predictor import resolve_precision

    with pytest.raises(ConfigError, match="precision must be one of"):
        Predictor.from_run(fake_run, device="cpu", precision="fp8")
    with pytest.raises(ConfigError, match="torch backend only"):
        resolve_precision("bf16", None)
    assert resolve_precision("auto", None) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
