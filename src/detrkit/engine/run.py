"""Entry points: load a config (or a run's), train, and format the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detrkit.config import RunConfig, load_config
from detrkit.engine.trainer import Trainer
from detrkit.errors import ConfigError
from detrkit.runs.checkpoint import ensure_resumable_last
from detrkit.runs.layout import check_resumable


def train_from_config(
    config: str | Path | RunConfig | None,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    fallback: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load a config (or the resumed run's ``config.yaml``; a ``RunConfig`` is used as is), train,
    return the summary."""
    if isinstance(config, RunConfig):
        cfg = config
    elif resume is not None and config is not None:
        raise ConfigError(
            f"--config {config} with --resume {resume}: a resumed run continues with its own "
            f"{Path(resume) / 'config.yaml'}; drop --config (key=value overrides still apply), "
            "or start a new run without --resume"
        )
    elif resume is not None:
        check_resumable(resume)
        used = ensure_resumable_last(resume, fallback=fallback)
        console = kwargs.get("console")
        if used is not None and console is not None:
            console.print(
                f"warning: {Path(resume) / 'checkpoints' / 'last.pt'} was unreadable (kept as last.pt.corrupt); "
                f"resuming from {used.name}",
                highlight=False,
            )
        cfg = load_config(Path(resume) / "config.yaml", overrides or [])
    else:
        cfg = load_config(config, overrides or [])
    dry_run = kwargs.pop("dry_run", False)
    try:
        return Trainer(cfg, resume=resume, **kwargs).fit(dry_run=dry_run)
    finally:
        end_distributed()


def end_distributed() -> None:
    """Destroy the process group a ``torchrun`` launch made (Accelerate's), if any.

    A process that exits with a live gloo/NCCL group can abort in the group's destructor ("terminate
    called without an active exception", exit -6) after a run that succeeded; the command-line
    entry points end it here. Library users who call :meth:`Trainer.fit` under ``torchrun`` own the
    group and end it themselves (``torch.distributed.destroy_process_group()``).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def summary_json(summary: dict[str, Any]) -> str:
    """The ``--json`` output."""
    return json.dumps(summary, indent=2, default=str)
