"""The one way back from a checkpoint to a usable model: :func:`restore`.

``model, classes, transform, config = restore("runs/demo")`` rebuilds the network a run trained
(by name and options recorded in the checkpoint), loads its inference weights (the EMA weights when
the run kept them), and returns it in eval mode on the CPU together with its classes, its
evaluation transform and its config. ``detrkit predict``, ``val``, ``analyze``, ``export``, the
aerial predictor and the web app all come through here.

What a checkpoint holds depends on what trained it: a :class:`CheckpointKind` says how to rebuild
one kind. :data:`DETECTOR` (``detrkit train``, no ``kind`` entry) lives here; the aerial
segmentation kind lives with its model in :mod:`detrkit.aerial.model`, so this package never
imports the packages above it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from detrkit.errors import CheckpointError
from detrkit.runs.checkpoint import inference_state_dict, read_checkpoint

#: ``rebuild(checkpoint, path) -> (untrained model, classes, eval transform | None, config)``
Rebuild = Callable[[dict[str, Any], Path], tuple[nn.Module, dict[str, Any], Any, Any]]


@dataclass(frozen=True)
class CheckpointKind:
    """How to rebuild the model of one kind of checkpoint.

    Attributes:
        name: the checkpoint's ``kind`` entry (``None``: detector checkpoints, which carry none).
        label: how errors name the kind (``"a detector"``, ``"an aerial segmentation"``).
        rebuild: builds the model with random weights plus classes, transform and config.
    """

    name: str | None
    label: str
    rebuild: Rebuild


@dataclass(frozen=True)
class Restored:
    """A restored checkpoint; unpacks as ``model, classes, transform, config``.

    Attributes:
        model: the network with its inference weights, eval mode, on the CPU.
        classes: ``{"names": [K str], "category_ids": [K int], ...}`` (contiguous label order).
        transform: ``(image uint8 [3,H,W], target) -> (image, target)``, the evaluation transform
            (``None`` where the kind has none).
        config: the run's config (:class:`detrkit.config.RunConfig` for detectors; the aerial
            training config as a dict for aerial checkpoints).
        path: the checkpoint file.
        checkpoint: the whole checkpoint dict (``epoch``, ``metrics``, ``tile``...).
    """

    model: nn.Module
    classes: dict[str, Any]
    transform: Any
    config: Any
    path: Path
    checkpoint: dict[str, Any]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.classes, self.transform, self.config))


def _detector(ckpt: dict[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any], Any, Any]:
    from detrkit.config import config_from_dict
    from detrkit.data.transforms import build_transforms
    from detrkit.models.registry import build_model

    for key in ("model_name", "classes"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry (not written by detrkit train?)")
    names = [str(n) for n in ckpt["classes"]["names"]]
    cat_ids = [int(c) for c in ckpt["classes"].get("category_ids", range(1, len(names) + 1))]
    classes = {**ckpt["classes"], "names": names, "category_ids": cat_ids}
    cfg = config_from_dict(ckpt.get("config") or {}, str(path))
    try:
        model = build_model(ckpt["model_name"], num_classes=len(names), **cfg.model.overrides)
    except ValueError as err:
        raise CheckpointError(f"{path}: cannot rebuild model {ckpt['model_name']!r}: {err}") from None
    transform = build_transforms(cfg.data.val_preset, train=False, **cfg.data.transform_args)
    return model, classes, transform, cfg


DETECTOR = CheckpointKind(name=None, label="a detector", rebuild=_detector)


def restore(source: str | Path, *, which: str = "best", kind: CheckpointKind = DETECTOR) -> Restored:
    """Rebuild a trained model from a run folder or a checkpoint file.

    Args:
        source: a run folder (its ``checkpoints/{which}.pt``; ``best`` falls back to ``last``) or
            a checkpoint file.
        which: ``best``, ``last``, ``epoch_N`` or a checkpoint file path.
        kind: what trained the checkpoint (:data:`DETECTOR`, or ``detrkit.aerial.model.AERIAL``).
    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, of another kind, lacks
            what the kind needs, or its weights do not fit the rebuilt model.
    """
    path, ckpt = read_checkpoint(source, which)
    if ckpt.get("kind") != kind.name:
        raise CheckpointError(f"{path}: not {kind.label} checkpoint (kind {ckpt.get('kind')!r})")
    model, classes, transform, config = kind.rebuild(ckpt, path)
    name = ckpt.get("model_name")
    try:
        missing, unexpected = model.load_state_dict(inference_state_dict(ckpt), strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise CheckpointError(f"{path}: weights do not fit {name!r} ({str(err).splitlines()[0]})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {name!r} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )
    return Restored(model.eval(), classes, transform, config, path, ckpt)
