"""``detrkit train --data PATH --model NAME``: detection, precedence, and category ids end to end.

Category ids are the classic off-by-one trap: datasets with ids from 0 plus a Roboflow placeholder,
and ids from COCO's 91-id space, are trained a couple of steps, predicted, and evaluated; the
predictions must carry the dataset's own ids and the tables its class names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detrkit.cli.main import app
from detrkit.engine.quickstart import quick_config, recipe_for_model
from detrkit.errors import ConfigError

runner = CliRunner()
TINY = [
    "model.overrides.num_queries=10", "data.transform_args.size=64", "train.batch_size=2",
    "eval.batch_size=2", "data.num_workers=0", "train.max_steps_per_epoch=2", "train.preflight=false",
]  # fmt: skip


def write_split(
    folder: Path, ann_path: Path, cats: list[dict], used: list[int], *, n: int, start: int
) -> None:
    """``n`` 64x64 images, ids from ``start``, two boxes each of the ``used`` category ids."""
    rng = np.random.default_rng(n + start)
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        name = f"im{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / name)
        images.append({"id": start + i, "file_name": name, "width": 64, "height": 64})
        for j, cid in enumerate(used[:2] if i % 2 else used[-2:]):
            anns.append({"id": start + len(anns), "image_id": start + i, "category_id": cid,
                         "bbox": [4 + 30 * j, 6, 24, 20], "area": 480, "iscrowd": 0})  # fmt: skip
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def roboflow(root: Path) -> Path:
    cats = [{"id": 0, "name": "car-parts", "supercategory": "none"},
            {"id": 1, "name": "dent", "supercategory": "car-parts"},
            {"id": 2, "name": "scratch", "supercategory": "car-parts"}]  # fmt: skip
    for split, n in (("train", 4), ("valid", 2)):
        write_split(root / split, root / split / "_annotations.coco.json", cats, [1, 2], n=n, start=0)
    return root


def coco91(root: Path) -> Path:
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]
    for split, n in (("train", 4), ("val", 2)):
        write_split(
            root / split, root / "annotations" / f"instances_{split}.json", cats, [1, 18, 90], n=n, start=1
        )
    return root


def test_precedence_file_then_options_then_key_values(tmp_path: Path) -> None:
    assert recipe_for_model("deformable-detr-r50") == "deformable_detr_r50"
    assert recipe_for_model("deformable-detr-tiny") == "demo"
    assert recipe_for_model("detr-tiny") is None
    qs = quick_config(config="demo", overrides=["train.epochs=5"], model="detr-tiny", epochs=3)
    assert qs.config.train.epochs == 5 and qs.config.model.name == "detr-tiny"
    assert qs.config.model.overrides == {}  # the demo's builder options belong to its own model
    assert quick_config(config="demo", overrides=[], epochs=3).config.train.epochs == 3
    with pytest.raises(ConfigError, match="--model nope: unknown model"):
        quick_config(config=None, overrides=[], model="nope")
    with pytest.raises(ConfigError, match="give --model NAME"):
        quick_config(config=None, overrides=[], data=tmp_path)


def test_data_option_detects_and_reports(tmp_path: Path) -> None:
    root = roboflow(tmp_path / "car parts")
    qs = quick_config(
        config=None, overrides=[f"output.root={tmp_path / 'runs'}"], data=root, model="detr-tiny"
    )
    d = qs.config.data
    assert d.shapes is None and Path(d.train_ann).parent == tmp_path / "runs" / "datasets" / "car-parts"
    assert d.train_images == str(root / "train") and d.val_images == str(root / "valid")
    assert qs.config.output.name == "car-parts"
    text = "\n".join(qs.lines)
    assert f"data: roboflow layout at {root}" in text
    assert "train: 4 images (0 without boxes), 8 boxes" in text and "val: 2 images" in text
    assert "left out category 0 'car-parts'" in text and "classes (2): dent (id 1), scratch (id 2)" in text
    res = runner.invoke(app, ["train", "--data", str(root), "--model", "detr-tiny", "--device", "cuda:7"])
    assert isinstance(res.exception, ConfigError) and "--device cuda:7" in str(res.exception)


@pytest.mark.slow
@pytest.mark.parametrize("make, val_ann", [(roboflow, "valid/_annotations.coco.json"), (coco91, "annotations/instances_val.json")])  # fmt: skip
def test_category_ids_end_to_end(tmp_path: Path, make, val_ann: str) -> None:
    root = make(tmp_path / "ds")
    gt = json.loads((root / val_ann).read_text())
    real = [c for c in gt["categories"] if c["name"] != "car-parts"]
    runs = tmp_path / "runs"
    res = runner.invoke(
        app,
        ["train", "--data", str(root), "--model", "detr-tiny", "--epochs", "1", "--device", "cpu",
         f"output.root={runs}", *TINY],
    )  # fmt: skip
    assert res.exit_code == 0, res.output[-3000:]
    first = res.output.splitlines()[:2]
    assert first[0] == "model: detr-tiny, default settings" and first[1].startswith("device: cpu")
    assert f"layout at {root}" in res.output and f"classes ({len(real)}): " in res.output
    run = runs / "ds"
    classes = json.loads((run / "classes.json").read_text())
    assert classes["names"] == [c["name"] for c in real] and classes["category_ids"] == [
        c["id"] for c in real
    ]
    images = root / Path(val_ann).parent if "valid" in val_ann else root / "val"
    res = runner.invoke(
        app,
        ["predict", "--run", str(run), "--source", str(images), "--out", str(tmp_path / "p"),
         "--ann", str(root / val_ann), "--threshold", "0", "--no-draw", "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output[-3000:]
    preds = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= {c["id"] for c in real}
    assert {p["image_id"] for p in preds} == {im["id"] for im in gt["images"]}
    res = runner.invoke(app, ["eval", "--gt", str(root / val_ann), "--pred", str(tmp_path / "p" / "predictions.json"), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    per_class = json.loads(res.stdout)["per_class"]
    assert [(c["category_id"], c["name"]) for c in per_class] == [(c["id"], c["name"]) for c in real]
    gt_preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                for a in gt["annotations"]]  # fmt: skip
    (tmp_path / "gt_preds.json").write_text(json.dumps(gt_preds))
    res = runner.invoke(app, ["eval", "--gt", str(root / val_ann), "--pred", str(tmp_path / "gt_preds.json"), "--json"])  # fmt: skip
    assert json.loads(res.stdout)["stats"]["AP"] == 1.0
    res = runner.invoke(app, ["val", "--run", str(run), "--checkpoint", "last", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output[-2000:]
    assert [c["name"] for c in json.loads(res.stdout)["metrics"]["per_class"]] == [c["name"] for c in real]
