"""Every numeric config value is checked against its allowed range when the config is loaded."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Annotated, Any

import pytest

from detrkit.config import Range, RunConfig, load_config
from detrkit.errors import ConfigError

#: numeric fields with no natural bound (any integer seed is a seed)
UNBOUNDED = {"train.seed", "data.shapes.seed", "data.copy_paste.seed"}


def _numeric_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, annotation)`` of every int/float field, through nested sections and Optionals."""
    out = []
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp, key = hints[f.name], f"{prefix}{f.name}"
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, type(int | None)) else (tp,)
        for arg in args:
            inner = typing.get_args(arg)[0] if typing.get_origin(arg) is Annotated else arg
            if dataclasses.is_dataclass(inner):
                out.extend(_numeric_fields(inner, f"{key}."))
            elif inner in (int, float) or (
                typing.get_origin(inner) is list and _base(_item(inner)) in (int, float)
            ):
                out.append((key, arg))
    return out


def _item(tp: Any) -> Any:
    return typing.get_args(tp)[0]


def _base(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _range_of(tp: Any) -> Range | None:
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is Annotated:
        return next((e for e in typing.get_args(tp)[1:] if isinstance(e, Range)), None)
    return None


def test_every_numeric_config_field_declares_its_range() -> None:
    fields = _numeric_fields()
    assert len(fields) > 30  # the sweep sees the sections
    missing = [key for key, tp in fields if _range_of(tp) is None and key not in UNBOUNDED]
    assert missing == [], f"numeric config keys without a Range: {missing}"


def _outside(rng: Range) -> list[float]:
    values = []
    if rng.ge is not None:
        values.append(rng.ge - 1)
    if rng.gt is not None:
        values.append(rng.gt)
    if rng.le is not None:
        values.append(rng.le + 1)
    if rng.lt is not None:
        values.append(rng.lt)
    return values


def _override(key: str, value: Any, tp: Any) -> list[str]:
    section_overrides = {"data.shapes.": "data.shapes.out=x", "data.copy_paste.": "data.copy_paste.prob=0.5"}
    extra = [v for p, v in section_overrides.items() if key.startswith(p)]
    if typing.get_origin(tp) is list:
        return [*extra, f"{key}=[{value}]"]
    return [*extra, f"{key}={value}"]


CASES = [
    (key, tp, v) for key, tp in _numeric_fields() if (rng := _range_of(tp)) is not None for v in _outside(rng)
]


@pytest.mark.parametrize(("key", "tp", "value"), CASES, ids=[f"{k}={v:g}" for k, _, v in CASES])
def test_value_outside_the_range_is_one_line_naming_the_key(key: str, tp: Any, value: float) -> None:
    inner = _base(_item(tp) if typing.get_origin(tp) is list else tp)
    value = int(value) if inner is int and float(value).is_integer() else value
    with pytest.raises(ConfigError) as info:
        load_config(None, _override(key, value, tp))
    message = str(info.value)
    assert key.split(".")[-1] in message and "must be" in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs=-1", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("train.grad_accum=0", "train.grad_accum"),
        ("optim.lr=-1e-4", "optim.lr"),
        ("eval.score_threshold=1.5", "eval.score_threshold"),
        ("eval.score_threshold=.nan", "eval.score_threshold"),
        ("data.num_workers=-2", "data.num_workers"),
        ("eval.batch_size=0", "eval.batch_size"),
    ],
)
def test_the_issue_values_are_rejected(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: must be"):
        load_config("demo", [override])


def test_boundaries_and_other_union_arms_still_load() -> None:
    cfg = load_config(
        "demo",
        [
            "train.batch_size=1",
            "train.batch_size=auto",
            "eval.score_threshold=1",
            "train.clip_grad_norm=null",
        ],
    )
    assert cfg.train.batch_size == "auto" and cfg.eval.score_threshold == 1.0
    assert cfg.train.clip_grad_norm is None
    assert load_config("demo", ["train.batch_size=1"]).train.batch_size == 1
    assert math.isclose(load_config("demo", ["optim.lr=0"]).optim.lr, 0.0)


def test_nested_key_typo_says_did_you_mean() -> None:
    with pytest.raises(
        ConfigError, match=r"data\.shapes\.trian: unknown key \(did you mean data\.shapes\.train\?\)"
    ):
        load_config("demo", ["data.shapes.trian=64"])
    with pytest.raises(
        ConfigError, match=r"data\.copy_paste\.probb: unknown key \(did you mean data\.copy_paste\.prob\?\)"
    ):
        load_config("demo", ["data.copy_paste.probb=0.3"])
    # a value of the wrong kind for an optional section still says what is expected
    with pytest.raises(ConfigError, match=r"data\.shapes: expected ShapesConfig or null"):
        load_config("demo", ["data.shapes=7"])
