"""The aerial config goes through the same typed mechanism as the run config (types, ranges, layers)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from detrkit.config import Range
from detrkit.config.aerial import PRESETS, AerialTrainConfig, aerial_config_from_dict, load_aerial_config
from detrkit.errors import ConfigError


def test_every_numeric_aerial_field_declares_a_range() -> None:
    hints = typing.get_type_hints(AerialTrainConfig, include_extras=True)
    unbounded = []
    for f in dataclasses.fields(AerialTrainConfig):
        tp = hints[f.name]
        if typing.get_origin(tp) is list:
            (tp,) = typing.get_args(tp)
        base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
        if base in (int, float) and not any(isinstance(e, Range) for e in getattr(tp, "__metadata__", ())):
            unbounded.append(f.name)
    assert unbounded == ["seed"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=0", "<command line>: epochs: must be >= 1, got 0"),
        ("focal_alpha=1.5", "<command line>: focal_alpha: must be in [0, 1], got 1.5"),
        ("lr=-1", "<command line>: lr: must be > 0, got -1.0"),
        ("crop=16", "<command line>: crop: must be >= 32, got 16"),
        ("crop=100", "<command line>: crop: must be a multiple of 32 (e.g. 128), got 100"),
        (
            "scale_range=[2, 1]",
            "<command line>: scale_range: must be [min, max] with 0 < min <= max, got [2.0, 1.0]",
        ),
        ("scale_range=[0, 1]", "<command line>: scale_range[0]: must be > 0, got 0.0"),
        ("batch_sise=4", "<command line>: batch_sise: unknown key (did you mean batch_size?)"),
        ("amp=maybe", "<command line>: amp: expected true or false, got 'maybe'"),
        ("epochs", "<command line>: override 'epochs' must look like key=value"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_aerial_config("tiny-synth", [override])
    assert str(err.value) == message


def test_overrides_are_typed_and_an_empty_value_is_null() -> None:
    cfg = load_aerial_config("r34-inria", ["epochs=3", "lr=1e-3", "encoder_weights=", "scale_range=[1, 2]"])
    assert (cfg.epochs, cfg.lr, cfg.encoder_weights, cfg.scale_range) == (3, 1e-3, None, [1.0, 2.0])
    assert cfg.crop == PRESETS["r34-inria"]["crop"] and cfg.name == "aerial-r34"
    assert load_aerial_config().to_dict() == AerialTrainConfig().to_dict()


def test_a_file_names_its_errors_and_composes_with_base(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"_base_": "tiny-synth", "epochs": 2, "lr": 1e-3}))
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"_base_": "base.yaml", "lr": 5e-4}))
    cfg = load_aerial_config(top)
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.crop) == ("unet-tiny", 2, 5e-4, PRESETS["tiny-synth"]["crop"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: epochs: expected an integer, got 'many'$"):
        load_aerial_config(bad, ["lr=1e-3"])
    missing = tmp_path / "m.yaml"
    missing.write_text("_base_: nope\n")
    with pytest.raises(ConfigError, match="_base_ file nope not found .*presets: r34-inria"):
        load_aerial_config(missing)


def test_a_saved_config_round_trips() -> None:
    cfg = load_aerial_config("tiny-real")
    assert aerial_config_from_dict(cfg.to_dict(), "last.pt") == cfg
    with pytest.raises(ConfigError, match=r"^last.pt: crop: must be a multiple of 32"):
        aerial_config_from_dict({**cfg.to_dict(), "crop": 33}, "last.pt")


def test_the_default_model_presets_chain_their_stages() -> None:
    """tiny-real-s1 -> ... -> s5 reproduce the shipped model (each starts from the previous run
    folder); tiny-real fine-tunes the packaged model with the last stage's recipe."""
    stages = [load_aerial_config(f"tiny-real-s{i}") for i in range(1, 6)]
    assert stages[0].init_weights is None and not stages[0].augment and len(stages[0].data) == 1
    for i, cfg in enumerate(stages[1:], start=1):
        assert cfg.init_weights == f"runs/tiny_real_s{i}" and cfg.augment and cfg.model == "unet-tiny"
    synth = [cfg.data[1]["samples_per_tile"] for cfg in stages[1:]]
    assert synth == [3, 3, 10, 16]
    ft = load_aerial_config("tiny-real")
    last = stages[-1]
    assert ft.init_weights == "unet_tiny_real.pt" and (ft.lr, ft.epochs, ft.data) == (
        last.lr,
        last.epochs,
        last.data,
    )
