"""The typed mechanism every config uses: a value is checked against a dataclass field's annotation.

:func:`build_dataclass` turns a mapping (YAML content or parsed ``key=value`` overrides) into a
dataclass instance: unknown keys fail with "did you mean", each value is converted (strings from
the command line) and checked against its type and then its :class:`Range`
(``epochs: Annotated[int, Range(ge=1)]``). Every error is one
:class:`~detrkit.errors.ConfigError` line naming the source and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import yaml

from detrkit.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric config value, attached as ``Annotated[int, Range(ge=1)]``.

    Checked by the loader after the type, so ``train.batch_size=0`` fails with one line naming the
    key and the interval instead of a ``ValueError`` inside the DataLoader.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        """``>= 1``, ``in [0, 1]``, ``> 0 and < 1`` ..."""
        if self.ge is not None and self.le is not None:
            return f"in [{self.ge:g}, {self.le:g}]"
        low = f">= {self.ge:g}" if self.ge is not None else (f"> {self.gt:g}" if self.gt is not None else "")
        high = f"<= {self.le:g}" if self.le is not None else (f"< {self.lt:g}" if self.lt is not None else "")
        return " and ".join(part for part in (low, high) if part)

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside (NaN never does)."""
        if value != value:  # NaN
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


#: shorthands of the ranges used below
PosInt = Annotated[int, Range(ge=1)]
NonNegInt = Annotated[int, Range(ge=0)]
PosFloat = Annotated[float, Range(gt=0)]
NonNegFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]


def _matched(err: ConfigError) -> ConfigError:
    """Mark an error raised after the value was recognised as the annotation's kind (see unions)."""
    err.matched = True  # type: ignore[attr-defined]
    return err


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert strings from the command line."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *extras = typing.get_args(tp)
        value = coerce(value, inner, where)
        for rng in (e for e in extras if isinstance(e, Range)):
            if not rng.contains(value):
                raise _matched(ConfigError(f"{where}: must be {rng.describe()}, got {value!r}"))
        return value
    if origin in (Union, types.UnionType):
        matched = []  # errors of arms whose kind the value has (a mapping for a section, a number)
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, where)
            except ConfigError as err:
                if getattr(err, "matched", False):
                    matched.append(err)
        if matched:  # e.g. data.shapes.trian=64: "unknown key ... did you mean", not "expected X or null"
            raise matched[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        try:
            return build_dataclass(tp, value, where)
        except ConfigError as err:
            raise _matched(err) from None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            try:
                value = [] if value.strip() in ("", "[]") else yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(
                    f"{where}: {value!r} is not a valid YAML list (quote values with {{ or :)"
                ) from None
            value = value if isinstance(value, list) else [value]
        if not isinstance(value, (list, tuple)):
            value = [value] if item_tp is str else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs: dict[str, Any] = {}
    prefix = where if where.endswith(": ") else f"{where}."
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            dotted = prefix.split(": ", 1)[-1]
            hint = f" (did you mean {dotted}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
        kwargs[key] = coerce(value, hints[key], f"{prefix}{key}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ConfigError(f"{prefix.rstrip('.')}: missing key(s) {', '.join(missing)}")
    return cls(**kwargs)
