"""Entry points: load a config (or a run's), train, and format the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detrkit.config import RunConfig, load_config
from detrkit.engine.trainer import Trainer
from detrkit.runs.layout import check_resumable


def train_from_config(
    config: str | Path | RunConfig | None,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load a config (or the resumed run's ``config.yaml``; a ``RunConfig`` is used as is), train,
    return the summary."""
    if isinstance(config, RunConfig):
        cfg = config
    elif resume is not None:
        check_resumable(resume)
        cfg = load_config(Path(resume) / "config.yaml", overrides or [])
    else:
        cfg = load_config(config, overrides or [])
    dry_run = kwargs.pop("dry_run", False)
    return Trainer(cfg, resume=resume, **kwargs).fit(dry_run=dry_run)


def summary_json(summary: dict[str, Any]) -> str:
    """The ``--json`` output."""
    return json.dumps(summary, indent=2, default=str)
