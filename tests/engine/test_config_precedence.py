"""A value given later wins: command line over file, file over its ``_base_`` files.

The data paths and ``data.shapes`` are two sources of the same data (``config.ALTERNATIVES``):
giving one later drops the other one given earlier; both in one place is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from detrkit.cli.main import app
from detrkit.config import config_from_dict, load_config
from detrkit.engine.builders import ensure_shapes
from detrkit.errors import ConfigError

PATHS = ["data.train_ann=A.json", "data.train_images=imgs", "data.val_ann=B.json", "data.val_images=imgs2"]


def test_command_line_paths_replace_the_files_shapes() -> None:
    cfg = load_config("demo", PATHS)
    assert cfg.data.shapes is None
    assert (cfg.data.train_ann, cfg.data.train_images) == ("A.json", "imgs")
    assert (cfg.data.val_ann, cfg.data.val_images) == ("B.json", "imgs2")
    assert cfg.data.train_preset == "light"  # the rest of the file's data section stays
    # one path alone replaces shapes as well (then the missing ones are reported when building data)
    assert load_config("demo", ["data.val_ann=B.json"]).data.shapes is None
    # and the other way: shapes on the command line replaces a file's paths
    assert load_config("demo", ["data.shapes.size=64"]).data.shapes.size == 64


def test_base_files_follow_the_same_rule(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"_base_": "demo", "data": {"train_ann": "A.json", "train_images": "i"}}))
    cfg = load_config(user)
    assert cfg.data.shapes is None and cfg.data.train_ann == "A.json"
    assert cfg.model.name == "deformable-detr-tiny"  # _base_: demo resolves the packaged config
    back = load_config(user, ["data.shapes.out=sh"])
    assert back.data.shapes is not None and back.data.train_ann is None
    missing = tmp_path / "bad.yaml"
    missing.write_text("_base_: nope\n")
    with pytest.raises(ConfigError, match=r"_base_ file nope not found .*packaged configs: .*demo"):
        load_config(missing)


def test_both_sources_in_one_config_are_refused(tmp_path: Path) -> None:
    cfg = config_from_dict({"data": {"shapes": {"out": str(tmp_path)}, "train_ann": "A.json"}})
    with pytest.raises(ConfigError, match=r"^data.shapes and data.train_ann=A.json are both set"):
        ensure_shapes(cfg.data, main_process=False)
    # the paths the shapes dataset fills in itself (a saved run's config) are not a conflict
    filled = ensure_shapes(config_from_dict({"data": {"shapes": {"out": "s"}}}).data, main_process=False)
    assert ensure_shapes(filled, main_process=False) == filled


def _tiny_coco(root: Path, split: str, n: int) -> tuple[Path, Path]:
    """``n`` 64x64 images with one box each, categories 5 'dent' and 9 'scratch'."""
    rng = np.random.default_rng(n)
    images, anns = [], []
    folder = root / split
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 64})
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": (5, 9)[i % 2],
                "bbox": [8, 8, 30, 24],
                "area": 720,
                "iscrowd": 0,
            }
        )
    ann = root / f"{split}.json"
    cats = [{"id": 5, "name": "dent"}, {"id": 9, "name": "scratch"}]
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann, folder


@pytest.mark.slow
def test_train_cli_uses_the_command_line_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # without the fix the demo's shapes would be generated here
    train_ann, train_images = _tiny_coco(tmp_path, "train", 4)
    val_ann, val_images = _tiny_coco(tmp_path, "val", 2)
    args = [
        "train", "--config", "demo",
        f"data.train_ann={train_ann}", f"data.train_images={train_images}",
        f"data.val_ann={val_ann}", f"data.val_images={val_images}",
        "model.name=detr-tiny", "model.overrides.num_queries=10", "data.transform_args.size=64",
        "train.batch_size=2", "eval.batch_size=2", f"output.dir={tmp_path / 'run'}", "data.sampler=random",
        "train.epochs=1", "--json",  # a real (one-epoch) run: a dry run leaves no run folder behind
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output[-2000:]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["shapes"] is None and saved["data"]["train_ann"] == str(train_ann)
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes["names"] == ["dent", "scratch"] and classes["category_ids"] == [5, 9]
    assert not (tmp_path / "data" / "shapes").exists()
