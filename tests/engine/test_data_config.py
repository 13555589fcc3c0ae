"""Config keys for extra training files, online copy-paste, repeat-factor sampling and rare classes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detrkit.config import config_from_dict, load_config
from detrkit.engine.builders import build_data, repeat_factors_for
from detrkit.errors import ConfigError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detrkit.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=6, val=2, size=64, seed=0)
    return root


def _cfg(root: Path, *overrides: str):
    return load_config(
        "demo",
        [
            f"data.train_ann={root / 'annotations/train.json'}",
            f"data.train_images={root / 'train'}",
            f"data.val_ann={root / 'annotations/val.json'}",
            f"data.val_images={root / 'val'}",
            "data.shapes=null",
            "data.transform_args.size=64",
            *overrides,
        ],
    )


def _extra_file(root: Path, out: Path, names: list[str]) -> tuple[Path, list[str]]:
    """The first two training images again, with only the classes ``names`` under new category ids
    (1000 + position, in reverse name order so that ids and contiguous labels disagree)."""
    coco = json.loads((root / "annotations/train.json").read_text())
    new_id = {
        c["id"]: 1000 + i
        for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["name"], reverse=True))
    }
    keep_cats = [c for c in coco["categories"] if c["name"] in names]
    keep_ids = {c["id"] for c in keep_cats}
    images = coco["images"][:2]
    anns = [
        a
        for a in coco["annotations"]
        if a["image_id"] in {im["id"] for im in images} and a["category_id"] in keep_ids
    ]
    extra = {
        "images": images,
        "annotations": [{**a, "category_id": new_id[a["category_id"]]} for a in anns],
        "categories": [{**c, "id": new_id[c["id"]]} for c in keep_cats],
    }
    out.write_text(json.dumps(extra))
    name_of = {new_id[c["id"]]: c["name"] for c in keep_cats}
    return out, [name_of[a["category_id"]] for a in extra["annotations"]]


def test_extra_files_add_images_with_labels_matched_by_name(shapes: Path, tmp_path: Path) -> None:
    base = build_data(_cfg(shapes)).train
    names = base.class_names[:3]
    ann, extra_names = _extra_file(shapes, tmp_path / "extra.json", names)
    assert extra_names, "the extra file should hold annotations"
    data = build_data(_cfg(shapes, f"data.extra=[{{ann: {ann}, images: {shapes / 'train'}}}]"))
    assert len(data.train) == len(base) + 2
    labels = data.train.labels_per_image()
    assert [lbl.tolist() for lbl in labels[: len(base)]] == [lbl.tolist() for lbl in base.labels_per_image()]
    got = sorted(int(v) for lbl in labels[len(base) :] for v in lbl)
    want = sorted(base.class_names.index(n) for n in extra_names)
    assert got == want  # contiguous labels of the main file, found by class name


def test_extra_file_with_unknown_class_names_is_a_config_error(shapes: Path, tmp_path: Path) -> None:
    coco = json.loads((shapes / "annotations/train.json").read_text())
    coco["categories"][0]["name"] = "unicorn"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    with pytest.raises(
        ConfigError, match=r"bad\.json: classes unicorn are not in the training file.*data\.extra\[0\]"
    ):
        build_data(_cfg(shapes, f"data.extra=[{{ann: {bad}, images: {shapes / 'train'}}}]"))
    with pytest.raises(ConfigError, match=r"data\.extra\[0\]: missing key\(s\) images"):
        _cfg(shapes, f"data.extra=[{{ann: {bad}}}]")


def test_seed_in_an_extra_path_is_the_train_seed(shapes: Path, tmp_path: Path) -> None:
    ann, _ = _extra_file(shapes, tmp_path / "extra-7.json", build_data(_cfg(shapes)).train.class_names)
    cfg = _cfg(
        shapes, f"data.extra=[{{ann: '{tmp_path / 'extra-{seed}.json'}', images: {shapes / 'train'}}}]"
    )
    cfg.train.seed = 7
    assert len(build_data(cfg).train) == 6 + 2


def test_copy_paste_is_in_front_of_the_training_transforms_only(shapes: Path) -> None:
    from detrkit.synth.online import OnlineCopyPaste

    names = build_data(_cfg(shapes)).class_names
    data = build_data(_cfg(shapes, f"data.copy_paste={{prob: 1.0, classes: [{names[0]}], max_instances: 1}}"))
    first = data.train.transforms.transforms[0]
    assert isinstance(first, OnlineCopyPaste) and first.p == 1.0 and first.max_instances == 1
    assert first.params.scale_range == (0.6, 1.4)  # the default jitter
    jittered = build_data(_cfg(shapes, f"data.copy_paste={{classes: [{names[0]}], scale: [0.1, 2.0]}}"))
    assert jittered.train.transforms.transforms[0].params.scale_range == (0.1, 2.0)
    with pytest.raises(ConfigError, match="data.copy_paste.scale"):
        build_data(_cfg(shapes, f"data.copy_paste={{classes: [{names[0]}], scale: [2.0, 1.0]}}"))
    assert not any(isinstance(t, OnlineCopyPaste) for t in data.val.transforms.transforms)
    plain = build_data(_cfg(shapes, "data.train_preset=val"))
    pasted = build_data(
        _cfg(shapes, "data.train_preset=val", f"data.copy_paste={{prob: 1.0, classes: [{names[0]}]}}")
    )
    torch.manual_seed(0)
    (image, target), (image0, target0) = pasted.train[0], plain.train[0]
    assert image.dtype == torch.uint8 and image.shape == image0.shape and not torch.equal(image, image0)
    assert (target["labels"] == 0).sum() > (target0["labels"] == 0).sum()  # the pasted class
    with pytest.raises(ConfigError, match="data.rare_classes: kite not among the classes"):
        build_data(_cfg(shapes, "data.rare_classes=[kite]"))


def test_rare_classes_recorded_from_config_or_the_stats_definition(shapes: Path) -> None:
    from detrkit.data.coco import CocoIndex
    from detrkit.synth.rare import find_rare_classes

    names = build_data(_cfg(shapes)).class_names
    assert build_data(_cfg(shapes, f"data.rare_classes=[{names[1]}]")).classes["rare"] == [names[1]]
    index = CocoIndex.load(shapes / "annotations/train.json")
    want = find_rare_classes(index, fraction=0.5)
    got = build_data(_cfg(shapes, "data.rare_fraction=0.5")).classes.get("rare")
    assert got == (want or None)


class _Labels:
    def __init__(self, labels: list[list[int]]) -> None:
        self._labels = [np.asarray(x, dtype=np.int64) for x in labels]

    def labels_per_image(self) -> list[np.ndarray]:
        return self._labels


def test_repeat_factor_sampler_config_gives_the_hand_computed_factors() -> None:
    cfg = load_config("demo", ["data.sampler=repeat_factor", "data.rfs_threshold=0.5"])
    # 4 images; class 0 in 3 of them (f = 3/4), class 1 in 1 (f = 1/4); t = 1/2:
    # r_0 = max(1, sqrt(0.5 / 0.75)) = 1, r_1 = sqrt(0.5 / 0.25) = sqrt(2); an image takes its max.
    ds = _Labels([[0], [0, 0], [1, 0], []])
    assert repeat_factors_for(cfg.data, ds, "t") == pytest.approx([1.0, 1.0, math.sqrt(2), 1.0])
    assert repeat_factors_for(load_config("demo", ["data.sampler=random"]).data, ds, "t") is None
    with pytest.raises(ConfigError, match=r"rfs_threshold: must be > 0 and <= 1, got 0"):
        load_config("demo", ["data.sampler=repeat_factor", "data.rfs_threshold=0"])
    old = load_config("demo", ["data.repeat_factor_threshold=0.3"]).data  # configs of older runs
    assert (old.sampler, old.rfs_threshold) == ("repeat_factor", 0.3)
    assert config_from_dict({"data": {"repeat_factor_threshold": 0}}, "old").data.sampler == "random"


def test_repeat_factor_run_resumes_exactly_mid_epoch(conf, tmp_path: Path, monkeypatch) -> None:
    from detrkit.engine.step import TrainStep
    from detrkit.runs.checkpoint import load_checkpoint

    class LabelledSquares(conf.SquaresDataset):
        def labels_per_image(self) -> list[np.ndarray]:
            return [np.array([item[-1]]) for item in self.items]

    def trainer(out: Path, resume: Path | None = None):
        cfg = conf.double_config(
            out,
            data={"num_workers": 0, "sampler": "repeat_factor", "rfs_threshold": 0.9},
            train={"epochs": 2, "checkpoint_every": 0},
            optim={"schedule": "constant", "warmup_steps": 0},
        )
        t = conf.make_trainer(cfg, resume=resume, val=False, n_train=16)
        t._data_in = (LabelledSquares(16, seed=1, augment=True), None, conf.CLASSES, None)
        return t

    ref = trainer(tmp_path / "ref")
    ref.fit()
    assert ref.train_sampler.weights is not None and len(list(ref.train_sampler)) > 16 // 4

    stop_at = ref.steps_per_epoch + 2  # inside the second epoch
    assert ref.steps_per_epoch > 16 // 4  # repeats made the epoch longer
    calls = {"n": 0}
    original = TrainStep.train_step

    def stop_after(self, micro, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at:  # Ctrl-C: this step runs, then last.pt is saved
            self.stop.set()
        return original(self, micro, **kwargs)

    monkeypatch.setattr(TrainStep, "train_step", stop_after)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "run").fit()
    monkeypatch.setattr(TrainStep, "train_step", original)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and saved["epoch_step"] > 0
    trainer(tmp_path / "run", resume=tmp_path / "run").fit()
    want = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["model"]
    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    for k in want:
        assert torch.equal(want[k], got[k]), k
