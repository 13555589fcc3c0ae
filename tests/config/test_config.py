"""detrkit.config: YAML + _base_ + overrides, type checks, errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detrkit.config import RunConfig, config_from_dict, load_config, packaged_config_names, parse_overrides
from detrkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides_are_typed() -> None:
    cfg = load_config(
        None,
        [
            "optim.lr=1e-4",
            "train.epochs=5",
            "train.batch_size=auto",
            "model.freeze=backbone",
            "train.clip_grad_norm=null",
            "data.shapes.size=96",
            "optim.betas=[0.8, 0.9]",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(
        cfg.optim.lr, float
    )  # YAML reads 1e-4 as a string
    assert cfg.train.epochs == 5
    assert cfg.train.batch_size == "auto"
    assert cfg.model.freeze == ["backbone"]
    assert cfg.train.clip_grad_norm is None
    assert cfg.data.shapes is not None and cfg.data.shapes.size == 96 and cfg.data.shapes.train == 400
    assert cfg.optim.betas == [0.8, 0.9]
    assert RunConfig().train.epochs == 10  # defaults untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "<command line>: optim.lrr: unknown key (did you mean optim.lr?)"),
        ("train.epochs=abc", "<command line>: train.epochs: expected an integer, got 'abc'"),
        (
            "train.precision=fp64",
            "train.precision: expected 'fp32' or 'bf16' or 'fp16' or 'auto', got 'fp64'",
        ),
        ("train.batch_size=big", "train.batch_size: expected int or 'auto', got 'big'"),
        ("train.ema=maybe", "train.ema: expected true or false, got 'maybe'"),
        ("epochs=3", "epochs: unknown key"),
        ("optim.lr", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.epochs: expected an integer, got 'ten'"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ invalid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"nope.yaml: no such config file \(packaged configs: .*demo"):
        load_config(tmp_path / "nope.yaml")
    # a file error is reported against the file even when overrides are given too
    with pytest.raises(ConfigError, match=r"bad.yaml: train.epochs"):
        load_config(bad, ["optim.lr=0.1"])


def test_base_composition_merges_sections(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({"optim": {"lr": 0.5, "weight_decay": 0.2}, "train": {"epochs": 3}})
    )
    (tmp_path / "mid.yaml").write_text(yaml.safe_dump({"_base_": "base.yaml", "optim": {"lr": 0.25}}))
    (tmp_path / "top.yaml").write_text(yaml.safe_dump({"_base_": ["mid.yaml"], "train": {"seed": 7}}))
    cfg = load_config(tmp_path / "top.yaml", ["train.epochs=4"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.epochs, cfg.train.seed) == (0.25, 0.2, 4, 7)
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: _base_ file gone.yaml not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_reloads_identically(tmp_path: Path) -> None:
    cfg = load_config("demo", ["optim.lr=0.003"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_packaged_configs_load_and_match_the_repo_folder() -> None:
    names = packaged_config_names()
    assert {"demo", "detr_r50_coco10", "detr_r101", "deformable_detr_r50", "fasterrcnn_vgg16"} <= set(names)
    for name in names:
        cfg = load_config(name)
        repo_file = REPO / "configs" / f"{name}.yaml"
        assert repo_file.read_text() == (REPO / "src" / "detrkit" / "configs" / f"{name}.yaml").read_text()
        assert load_config(repo_file).to_dict() == cfg.to_dict()
    r50, r101 = load_config("detr_r50_coco10"), load_config("detr_r101")
    assert (r50.optim.lr, r50.optim.backbone_lr, r50.train.epochs, r50.train.batch_size) == (
        1e-4,
        1e-5,
        10,
        4,
    )
    assert r101.model.name == "detr-r101" and r101.model.init_from == "runs/detr_r50/checkpoints/best.pt"
    assert r101.data.train_ann == r50.data.train_ann  # inherited through _base_


def test_parse_overrides_nests_dotted_keys() -> None:
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]"]) == {
        "a": {"b": {"c": 1, "d": "x"}},
        "e": [1, 2],
    }
    with pytest.raises(ConfigError, match="conflicts"):
        parse_overrides(["a=1", "a.b=2"])


def test_switching_model_on_the_command_line_drops_the_file_model_options() -> None:
    demo = load_config("demo")
    assert demo.model.name == "deformable-detr-tiny" and demo.model.overrides.get("two_stage") is True
    same = load_config("demo", ["model.overrides.num_queries=30"])  # same model: options merge
    assert same.model.overrides["num_queries"] == 30 and same.model.overrides["two_stage"] is True
    other = load_config("demo", ["model.name=detr-tiny", "model.overrides.loss=focal"])
    assert other.model.name == "detr-tiny" and other.model.overrides == {"loss": "focal"}
