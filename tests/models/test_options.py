"""Typed model options: one dataclass per family, old names read in configs and checkpoints."""

from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch
import yaml

from detrkit.config import Range, RunConfig, checking, load_config
from detrkit.errors import ConfigError
from detrkit.models import options as opts
from detrkit.models.registry import build_model, list_models, model_info

FAMILIES = [
    opts.DETROptions,
    opts.DeformableDETROptions,
    opts.CoDeformableDETROptions,
    opts.FasterRCNNOptions,
    opts.FasterRCNNVGGOptions,
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deprecation notices are given once per process: forget those of earlier tests."""
    monkeypatch.setattr(checking, "_NOTIFIED", set())


def _numeric(cls: type) -> list[tuple[str, Any]]:
    out = []
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        arms = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, type(int | None)) else (tp,)
        for arm in arms:
            if typing.get_origin(arm) is tuple:
                arm = typing.get_args(arm)[0]
            inner = typing.get_args(arm)[0] if typing.get_origin(arm) is Annotated else arm
            if inner in (int, float):
                out.append((f.name, arm))
    return out


def test_every_numeric_option_declares_its_range() -> None:
    for cls in FAMILIES:
        fields = _numeric(cls)
        assert len(fields) >= 3
        missing = [
            name
            for name, arm in fields
            if typing.get_origin(arm) is not Annotated
            or not any(isinstance(e, Range) for e in typing.get_args(arm)[1:])
        ]
        assert missing == [], f"{cls.__name__} options without a Range: {missing}"


def test_every_model_names_its_options_and_the_shared_names_agree() -> None:
    for name in list_models():
        info = model_info(name)
        assert info.options in FAMILIES, name
        assert dataclasses.is_dataclass(info.default_options())
    shared = {
        "d_model",
        "num_heads",
        "num_encoder_layers",
        "num_decoder_layers",
        "dim_feedforward",
        "dropout",
    }
    for cls in (opts.DETROptions, opts.DeformableDETROptions, opts.CoDeformableDETROptions):
        assert shared <= set(opts.option_names(cls))
    for cls in FAMILIES:  # no family keeps an old name
        assert not set(opts.option_names(cls)) & set(opts.MODEL_OPTION_RENAMES)
        assert "top_k" in opts.option_names(cls)


def test_options_are_converted_and_checked() -> None:
    model = build_model("detr-tiny", num_classes=2, num_queries="7", dropout="0.2", aux_loss="false")
    assert model.num_queries == 7 and model.aux_loss is False
    assert model.transformer.encoder[0].dropout.p == pytest.approx(0.2)
    with pytest.raises(opts.ModelOptionError, match=r"detr-tiny: num_queries: must be >= 1, got 0"):
        build_model("detr-tiny", num_classes=2, num_queries=0)
    with pytest.raises(ConfigError, match=r"deformable-detr-tiny: dropout: must be >= 0 and < 1, got 1.5"):
        build_model("deformable-detr-tiny", num_classes=2, dropout=1.5)
    with pytest.raises(ValueError, match=r"detr-tiny: loss: expected 'ce' or 'focal', got 'bce'"):
        build_model("detr-tiny", num_classes=2, loss="bce")
    with pytest.raises(ValueError, match=r"anchor_sizes\[1\]: must be >= 1, got 0"):
        build_model("fasterrcnn-vgg16", num_classes=2, anchor_sizes=[16, 0])
    with pytest.raises(
        opts.ModelOptionError,
        match=r"unknown Deformable DETR option\(s\): deformable-detr-tiny does not accept option\(s\) "
        r"\['num_head'\]; valid options: backbone, .*, dense_center_fraction \(did you mean num_heads\?\)",
    ):
        build_model("deformable-detr-tiny", num_classes=2, num_head=4)
    with pytest.raises(opts.ModelOptionError, match=r"unknown Faster R-CNN option.*\['d_model'\]"):
        build_model("fasterrcnn-r50-fpn", num_classes=2, d_model=64)


def test_an_unknown_option_in_a_config_names_model_overrides(tmp_path: Path) -> None:
    from detrkit.engine.builders import build_detector

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"name": "detr-tiny", "overrides": {"num_querys": 5}}}))
    cfg = load_config(cfg_file)
    with pytest.raises(
        ConfigError, match=r"run.yaml: model.overrides: .*\['num_querys'\].*did you mean num_queries"
    ):
        build_detector(cfg.model, num_classes=2, source=str(cfg_file))


@pytest.mark.usefixtures("fresh_notices")
def test_old_names_in_files_and_command_lines(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"  # a config of an older release, over the packaged demo (new names)
    old.write_text(yaml.safe_dump({"_base_": "demo", "model": {"overrides": {"n_heads": 8, "ffn_dim": 96}}}))
    with pytest.warns(
        FutureWarning, match=r"model.overrides.n_heads is deprecated, use model.overrides.num_heads"
    ):
        cfg = load_config(old)
    over = cfg.model.overrides
    assert over["num_heads"] == 8 and over["dim_feedforward"] == 96 and "n_heads" not in over
    # an old name on the command line replaces the file's new name (renamed before the layers merge)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cli = load_config("demo", ["model.overrides.n_heads=2"]).model.overrides
    assert cli["num_heads"] == 2 and "n_heads" not in cli
    with pytest.raises(
        ConfigError, match=r"model.overrides.n_heads: renamed to num_heads, which is given too"
    ):
        load_config("demo", ["model.overrides.n_heads=2", "model.overrides.num_heads=4"])
    with pytest.warns(FutureWarning, match="detections_per_img is deprecated, use top_k"):
        model = build_model("fasterrcnn-vgg16", num_classes=2, detections_per_img=7)
    assert model.net.roi_heads.detections_per_img == 7


def test_switching_the_model_names_the_dropped_options() -> None:
    with pytest.warns(UserWarning, match=r"model.name=detr-tiny replaces deformable-detr-tiny.*two_stage"):
        cfg = load_config("demo", ["model.name=detr-tiny"])
    assert cfg.model.overrides == {}


def _old_checkpoint(run: Path, name: str, old: dict[str, Any], new: dict[str, Any]) -> torch.nn.Module:
    """A checkpoint as ``detrkit train`` wrote it before the rename: the model built with the new
    names, its saved config (``RunConfig.to_dict()``) holding the old ones."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, **new).eval()
    config = RunConfig().to_dict()
    config["model"].update(name=name, overrides=old)
    config["data"]["transform_args"] = {"size": 64, "max_size": 64}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = {
        "model": weights, "optimizer": None, "scheduler": None, "scaler": None, "ema": None,
        "epoch": 2, "step": 8, "rng": None, "config": config, "model_name": name,
        "classes": {"names": ["a", "b"], "category_ids": [1, 2]}, "metrics": {"AP": 0.1},
    }  # fmt: skip
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    return model


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        # values unlike the tiny models' defaults: a dropped old name would change the architecture
        ("detr-tiny", {"enc_layers": 1, "dec_layers": 3}, {"num_encoder_layers": 1, "num_decoder_layers": 3}),
        ("deformable-detr-tiny", {"n_heads": 4, "ffn_dim": 48}, {"num_heads": 4, "dim_feedforward": 48}),
    ],
)
@pytest.mark.usefixtures("fresh_notices")
def test_a_checkpoint_with_the_old_names_restores(tmp_path: Path, name: str, old: dict, new: dict) -> None:
    from detrkit.runs import restore

    reference = _old_checkpoint(tmp_path / "run", name, old, new)
    with pytest.warns(FutureWarning, match="is deprecated"):
        model, classes, _, config = restore(tmp_path / "run")
    assert config.model.overrides == new and classes["names"] == ["a", "b"]
    torch.manual_seed(1)
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        want, got = reference(images, mask), model(images, mask)
    assert torch.equal(got["pred_logits"], want["pred_logits"]) and torch.equal(
        got["pred_boxes"], want["pred_boxes"]
    )


def test_the_docs_list_every_option() -> None:
    readme = (ROOT / "README.md").read_text()
    arch = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for cls in FAMILIES:
        for name in opts.option_names(cls):
            assert f"`{name}`" in readme, f"README lacks {cls.__name__}.{name}"
        assert cls.__name__ in arch
    for old, new in opts.MODEL_OPTION_RENAMES.items():
        assert f"`{old}`" in arch and f"`{new}`" in arch
