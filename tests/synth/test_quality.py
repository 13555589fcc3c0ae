"""Quality filter: an image is kept only when a detector finds the class in each new box."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.ops import box_iou

from detrkit.data.coco import CocoIndex
from detrkit.inference.predictor import Detections
from detrkit.synth.generate import SynthOptions, synthesize
from detrkit.synth.quality import DetectorFilter, FilterParams, box_iou_xyxy
from detrkit.synth.rare import SynthError

from .conftest import RED

NAMES = ["box", "disc", "empty"]


class _RedOracle:
    """Detects each connected blob of (near-)red pixels as a 'disc' with a fixed score."""

    class_names = NAMES

    def __init__(self, score: float = 0.9) -> None:
        self.score = score

    def predict(self, image, threshold: float = 0.5):
        arr = np.asarray(image).astype(int)
        red = (np.abs(arr - np.array(RED)).sum(-1) < 90) if self.score > 0 else np.zeros(arr.shape[:2], bool)
        labels, n = ndimage.label(red)
        boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)]
        return [
            Detections(
                boxes_xyxy=np.array(boxes, np.float32).reshape(-1, 4),
                scores=np.full(n, self.score, np.float32),
                labels=np.full(n, 1, np.int64),
                class_names=NAMES,
                image_size=arr.shape[:2],
            )
        ]


def test_box_iou_matches_torchvision() -> None:
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 50, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.uniform(0, 50, (4, 2, 2)), axis=1).transpose(0, 2, 1).reshape(4, 4)[:, [0, 2, 1, 3]]
    np.testing.assert_allclose(
        box_iou_xyxy(a, b), box_iou(torch.tensor(a), torch.tensor(b)).numpy(), atol=1e-9
    )


def _run(solid_dataset, out, detector, score: float = 0.3, per_class: int = 4):
    ann, images = solid_dataset
    index = CocoIndex.load(ann)
    quality = DetectorFilter(detector, FilterParams(model="oracle", score=score, max_tries=3))
    opts = SynthOptions(method="copy-paste", per_class=per_class, seed=1, image_format="png")
    summary = synthesize(index, images, out, classes=["disc"], options=opts, quality=quality)
    return summary, json.loads((out / "metadata.json").read_text())


def test_kept_images_have_every_new_instance_found(solid_dataset, tmp_path) -> None:
    summary, meta = _run(solid_dataset, tmp_path / "a", _RedOracle())
    f = meta["filter"]
    assert f["model"] == "oracle" and f["score"] == 0.3 and f["kept_images"] == summary["images"] == 4
    assert f["kept_images"] + f["rejected_images"] <= 4 * 3
    assert f["per_class"]["disc"]["kept_images"] == 4
    for m in meta["images"]:  # every new instance of a kept image was found, at the oracle's score
        assert 1 <= len(m["filter_scores"]) <= len(m["pastes"])
        assert all(v == pytest.approx(0.9) for v in m["filter_scores"])
    assert f["kept_instances"] == sum(len(m["filter_scores"]) for m in meta["images"])


def test_a_blind_or_unsure_detector_rejects(solid_dataset, tmp_path) -> None:
    summary, meta = _run(solid_dataset, tmp_path / "blind", _RedOracle(score=0.0))
    f = meta["filter"]
    assert summary["images"] == 0 and f["kept_images"] == 0 and f["rejected_images"] == 4 * 3
    assert f["rejected_instances"] >= 4 * 3 and f["kept_instances"] == 0
    low, meta_low = _run(solid_dataset, tmp_path / "low", _RedOracle(score=0.2), score=0.3)
    assert low["images"] == 0 and meta_low["filter"]["rejected_images"] == 12
    ok, meta_ok = _run(solid_dataset, tmp_path / "ok", _RedOracle(score=0.2), score=0.1)
    assert ok["images"] == 4 and meta_ok["filter"]["rejected_images"] <= 8


def test_filter_with_a_real_detector_run_matches_its_predictions(solid_dataset, synth_cmd, tmp_path) -> None:
    from detrkit.inference.predictor import Predictor
    from detrkit.models.registry import build_model

    torch.manual_seed(0)
    overrides = {"num_queries": 20, "d_model": 32}
    model = build_model("detr-tiny", num_classes=3, **overrides)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {
        "model": model.state_dict(),
        "epoch": 1,
        "step": 1,
        "config": {"model": {"name": "detr-tiny", "overrides": overrides}, "data": {"val_preset": "val"}},
        "classes": {"names": NAMES, "category_ids": [1, 2, 3]},
        "model_name": "detr-tiny",
        "metrics": {},
    }
    for name in ("best", "last"):
        torch.save(ckpt, run / "checkpoints" / f"{name}.pt")
    quality = DetectorFilter.from_model(FilterParams(model=str(run), score=0.0, iou=0.1), device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    from PIL import Image

    # the reference: the run's own predictions, matched with torchvision's IoU
    (det,) = Predictor.from_run(run, device="cpu").predict(Image.fromarray(image), threshold=0.0)
    name = det.names[0]  # a random model: whichever class it predicts
    disc = torch.tensor([n == name for n in det.names])
    x0, y0, x1, y1 = det.boxes_xyxy[0].tolist()
    boxes = [[x0, y0, x1 - x0, y1 - y0], [5.0, 5.0, 30.0, 20.0], [40.0, 10.0, 20.0, 40.0]]
    got = quality.scores(image, [(name, b) for b in boxes] + [("nothing", boxes[0])])
    ious = box_iou(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]), torch.tensor(det.boxes_xyxy))
    scores = torch.tensor(det.scores)
    want = [float(scores[disc & (row >= 0.1)].max()) if (disc & (row >= 0.1)).any() else 0.0 for row in ious]
    assert want[0] > 0
    want.append(0.0)  # a class the model does not know
    assert got == pytest.approx(want, abs=1e-6)

    from typer.testing import CliRunner

    from detrkit.cli.main import app

    args = synth_cmd(tmp_path / "o", "--classes", "disc", "--per-class", "2", "--filter-model", str(run))
    result = CliRunner().invoke(app, [*args, "--filter-score", "0.0", "--json"])
    assert result.exit_code == 0, result.output
    f = json.loads((tmp_path / "o" / "metadata.json").read_text())["filter"]
    assert f["model"] == str(run) and f["score"] == 0.0
    assert f["kept_images"] + f["rejected_images"] >= 2 and json.loads(result.output)["filter"] == f
    with pytest.raises(SynthError, match="filter model not found"):
        DetectorFilter.from_model(FilterParams(model=str(tmp_path / "nope")))
