"""Model registry (timm style): ``register_model``, ``build_model``, ``list_models``, ``model_info``.

A builder is a function ``builder(*, num_classes: int, **options) -> Detector`` decorated with
``@register_model("name", options=OptionsClass, defaults={...})``: ``options`` is the dataclass of
its family's options (:mod:`detrkit.models.options`) and ``defaults`` the model's own values of
some of them. :func:`build_model` checks the given options against that class (unknown names,
types, ranges, old names) and calls the builder with every option. A builder registered without
an options class takes none. The registry is filled on first use by importing the modules that
define builders (:data:`MODEL_MODULES`), so ``import detrkit.models.registry`` stays cheap and has
no import cycle with those modules.

Example::

    from detrkit.models.registry import build_model, list_models
    list_models()                 # ['deformable-detr-r50', ..., 'detr-tiny', ...]
    model = build_model("detr-tiny", num_classes=3, num_queries=20)
    model_info("detr-tiny").default_options()   # DETROptions(backbone='resnet18', d_model=64, ...)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from detrkit.models.base import Detector
from detrkit.models.options import ModelOptionError, check_options, option_values

__all__ = ["MODEL_MODULES", "ModelInfo", "build_model", "list_models", "model_info", "register_model"]

#: Modules imported to populate the registry; ``detrkit.models.deformable_detr`` is optional
#: (imported only when it is installed).
MODEL_MODULES = (
    "detrkit.models.detr",
    "detrkit.models.deformable_detr",
    "detrkit.models.baselines",
    "detrkit.models.co_detr.model",
)
_OPTIONAL_MODULES = frozenset({"detrkit.models.deformable_detr", "detrkit.models.co_detr.model"})

Builder = TypeVar("Builder", bound=Callable[..., Detector])


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name.

    Attributes:
        name: registry name, e.g. ``"detr-r50"``.
        builder: the builder function.
        module: the module that defines it.
        description: first line of the builder's docstring.
        info: extra metadata given to :func:`register_model` (e.g. ``family``, ``hf_id``).
        options: the options dataclass of the model's family (``None``: the model takes none).
        defaults: the model's own values of some options (over the class's defaults).
    """

    name: str
    builder: Callable[..., Detector]
    module: str
    description: str
    info: dict[str, Any] = field(default_factory=dict)
    options: type | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    def default_options(self) -> Any:
        """The options this model is built with when none are given (``None`` without options)."""
        return None if self.options is None else self.check_options({})

    def check_options(self, options: dict[str, Any]) -> Any:
        """The model's defaults overridden by ``options``, checked (see :func:`build_model`)."""
        if self.options is None:
            if options:
                raise ModelOptionError(
                    f"{self.name} does not accept option(s) {sorted(options)}; valid options: none"
                )
            return None
        return check_options(self.options, options, name=self.name, defaults=self.defaults)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the builder function)."""
        out = {"name": self.name, "module": self.module, "description": self.description, **self.info}
        if self.options is not None:
            out["options"] = self.options.__name__
            out["defaults"] = dict(self.defaults)
        return out


_REGISTRY: dict[str, ModelInfo] = {}
_populated = False


def register_model(
    name: str, *, options: type | None = None, defaults: dict[str, Any] | None = None, **info: Any
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(*, num_classes, **options) -> Detector`` under ``name``.

    Args:
        name: unique registry name (lowercase, dashes), e.g. ``"detr-tiny"``.
        options: the dataclass of the options the builder takes (:mod:`detrkit.models.options`).
        defaults: this model's values of some of those options (``{"d_model": 64}``).
        **info: metadata shown by :func:`model_info` (e.g. ``family="detr"``,
            ``hf_id="facebook/detr-resnet-50"``).
    Raises:
        ValueError: if ``name`` is already registered by another function, or ``defaults`` are
            not valid ``options``.
    """
    if options is None and defaults:
        raise ValueError(f"{name}: defaults given without an options class")
    if options is not None:
        check_options(options, {}, name=name, defaults=defaults)  # a wrong default fails at import

    def decorator(fn: Builder) -> Builder:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.builder.__qualname__ != fn.__qualname__:
            raise ValueError(
                f"model name {name!r} is already registered by {existing.module}.{existing.builder.__qualname__}; "
                "pick another name"
            )
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=fn,
            module=fn.__module__,
            description=doc.splitlines()[0] if doc else "",
            info=dict(info),
            options=options,
            defaults=dict(defaults or {}),
        )
        return fn

    return decorator


def _populate() -> None:
    global _populated
    if _populated:
        return
    for module in MODEL_MODULES:
        if module in _OPTIONAL_MODULES and importlib.util.find_spec(module) is None:
            continue
        importlib.import_module(module)
    _populated = True


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally those containing ``pattern``."""
    _populate()
    names = sorted(_REGISTRY)
    return names if pattern is None else [n for n in names if pattern in n]


def _lookup(name: str) -> ModelInfo:
    _populate()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; raises ``ValueError`` listing the names for an unknown one."""
    return _lookup(name)


def build_model(name: str, *, num_classes: int, **overrides: Any) -> Detector:
    """Build a registered model with random weights (no download).

    Args:
        name: a name from :func:`list_models`.
        num_classes: number of real classes ``K`` of the dataset (labels ``0..K-1``).
        **overrides: options of the model's family (the fields of ``model_info(name).options``),
            e.g. ``num_queries=50``, ``d_model=128``; strings are converted (``"50"``), old names
            (``n_heads``) read as the new ones.
    Returns:
        The :class:`Detector`, with ``model.model_name == name`` and ``model.num_classes == K``.
    Raises:
        ValueError: unknown name, bad ``num_classes``; an unknown option or a value of the wrong
            type or range raises :class:`~detrkit.models.options.ModelOptionError` (a
            ``ValueError`` and a :class:`~detrkit.errors.ConfigError`); the builder's own checks
            across options raise ``ValueError``.
    """
    entry = _lookup(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int (the number of dataset classes), got {num_classes!r}"
        )
    options = entry.check_options(overrides)
    values = {} if options is None else option_values(options)
    model = entry.builder(num_classes=num_classes, **values)
    model.model_name = name
    return model
