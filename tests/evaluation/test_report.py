"""``detrkit analyze`` end to end: report.html is self-contained, every section and image is there."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from detrkit.cli.main import main
from detrkit.data.shapes import generate_shapes
from detrkit.evaluation.coco import make_noisy_predictions
from detrkit.evaluation.report import SECTIONS


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.links: list[str] = []
        self.figures = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a)
        if tag == "figure":
            self.figures += 1
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("shapes")
    paths = generate_shapes(root, train=0, val=16, size=96, seed=3)
    ann = root / "annotations" / "val.json"
    preds = make_noisy_predictions(ann, seed=1, jitter=0.08, drop=0.2, false_positives=0.5, score_noise=0.6)
    pred_path = root / "preds.json"
    pred_path.write_text(json.dumps(preds))
    assert paths is not None
    return ann, root / "val", pred_path


def _run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


def _check_report(path: Path) -> _Collect:
    text = path.read_text(encoding="utf-8")
    parser = _Collect()
    parser.feed(text)
    parser.close()
    for sid, _ in SECTIONS:
        assert sid in parser.ids, sid
    assert parser.imgs, "no images"
    for img in parser.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        im.verify()
        assert img.get("alt")
    # self-contained: no external resources, only in-page anchors
    assert all(link.startswith("#") for link in parser.links), parser.links
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    return parser


def test_analyze_from_files(shapes: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ann, images, pred = shapes
    out = tmp_path / "out"
    _run(
        [
            "analyze",
            "--data",
            str(ann),
            "--images",
            str(images),
            "--pred",
            str(pred),
            "--out",
            str(out),
            "--gallery",
            "2",
        ]
    )
    parser = _check_report(out / "report.html")
    assert parser.figures > 0  # gallery tiles
    errors = json.loads((out / "errors.json").read_text())
    assert set(errors["tide"]["dap"]) == {"cls", "loc", "both", "dupe", "bkg", "miss"}
    assert errors["coco"]["stats"]["AP50"] * 100 == pytest.approx(
        sum(v for v in errors["curves"]["ap"]["0.50"].values() if v is not None)
        * 100
        / sum(v is not None for v in errors["curves"]["ap"]["0.50"].values()),
        abs=1e-3,
    )
    # confusion rows cover every GT once
    n_gt = errors["num_gt"]
    assert sum(map(sum, errors["confusion"]["matrix"][:-1])) == n_gt


def test_analyze_run_folder(shapes: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ann, images, pred = shapes
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"model:\n  name: detr-tiny\ndata:\n  val_ann: {ann}\n  val_images: {images}\ntrain:\n  seed: 1\n"
    )
    rows = [
        "epoch,train/loss,val/loss,val/AP,val/AP50",
        "1,3.0,3.2,0.05,0.11",
        "2,2.1,2.4,0.12,0.25",
        "3,1.7,2.0,0.18,0.33",
    ]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "env.json").write_text(json.dumps({"python": "3.11", "git_sha": "abc123"}))
    _run(["analyze", "--run", str(run), "--pred", str(pred), "--gallery", "0"])
    text = (run / "report.html").read_text()
    parser = _check_report(run / "report.html")
    assert any(i["alt"] == "training curves" for i in parser.imgs)
    assert "detr-tiny" in text and "abc123" in text
    assert "Galleries disabled" in text
    assert (run / "errors.json").is_file()


def test_analyze_user_errors(shapes: tuple[Path, Path, Path], tmp_path: Path, capsys: Any) -> None:
    ann, _, pred = shapes
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 10**9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    for argv in (
        ["analyze", "--data", str(ann), "--pred", str(bad)],
        ["analyze", "--data", str(tmp_path / "missing.json"), "--pred", str(pred)],
        ["analyze", "--pred", str(pred)],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err


@pytest.mark.slow
def test_analyze_run_predicts_with_best_checkpoint(tmp_path: Path) -> None:
    """A one-step demo run, then ``analyze --run`` without ``--pred``: predictions come from best.pt."""
    _run(
        [
            "train",
            "-c",
            "demo",
            f"data.shapes.out={tmp_path / 'shapes'}",
            "data.shapes.train=8",
            "data.shapes.val=6",
            "train.epochs=1",
            "train.max_steps_per_epoch=1",
            "train.batch_size=2",
            "eval.every=1",
            f"output.dir={tmp_path / 'run'}",
            "train.preflight=false",
            "output.tensorboard=false",
            "output.plots=false",
        ]
    )
    run = tmp_path / "run"
    _run(["analyze", "--run", str(run), "--gallery", "1"])
    preds = json.loads((run / "predictions.json").read_text())
    gt = json.loads((tmp_path / "shapes" / "annotations" / "val.json").read_text())
    assert {p["image_id"] for p in preds} <= {im["id"] for im in gt["images"]}
    assert len(preds) > 0
    parser = _check_report(run / "report.html")
    assert parser.figures > 0
    errors = json.loads((run / "errors.json").read_text())
    assert errors["num_predictions"] == len(preds)
