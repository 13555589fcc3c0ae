"""``detrkit train --detach``: the same training in a detached child process, as with ``nohup``.

The launching process reserves the run folder (the name the trainer would pick, or ``output.dir``),
starts ``python -m detrkit.cli.main train ... output.dir=RUN`` in a new session with stdin closed
and stdout/stderr appended to ``RUN/train.log``, writes ``status.json`` (``state: starting``, the
child's PID and start time, ``log: train.log``, ``detached: true``) and returns. The trainer in the
child then records its progress in the same ``status.json`` (:mod:`detrkit.runs.status`);
:func:`detached_child` records a failure that happens before the trainer could (a bad data path).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detrkit.errors import ConfigError
from detrkit.runs import status as run_status

#: set in the child's environment: the run folder it trains into.
DETACHED_ENV = "DETRKIT_DETACHED_RUN"


@dataclass(frozen=True)
class Detached:
    """A started detached run."""

    run_dir: Path
    pid: int
    log: Path


def launch_detached(train_args: Sequence[str], run_dir: str | Path) -> Detached:
    """Start ``detrkit train *train_args`` in a detached child process writing to ``run_dir``.

    ``run_dir`` exists (reserved by the caller); ``train_args`` already name it (``output.dir=`` or
    ``--resume``). The child runs in this process's working folder and environment.
    """
    run_dir = Path(run_dir)
    log = run_dir / run_status.TRAIN_LOG
    env = {**os.environ, DETACHED_ENV: str(run_dir), "PYTHONUNBUFFERED": "1"}
    command = ["detrkit", "train", *train_args]
    run_status.write_status(
        run_dir,
        state="starting",
        log=run_status.TRAIN_LOG,
        detached=True,
        command=command,
        error=None,
        started=time.time(),
    )
    with open(log, "ab") as out:
        out.write(f"--- detrkit train (detached) {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        out.flush()
        child = subprocess.Popen(
            [sys.executable, "-m", "detrkit.cli.main", "train", *train_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    # only the child's identity: the child may already have written its own state
    run_status.write_status(run_dir, **run_status.process_identity(child.pid))
    return Detached(run_dir=run_dir, pid=child.pid, log=log)


def detach_training(
    config: Any,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    train_args: Sequence[str],
) -> dict[str, Any]:
    """``detrkit train --detach``: check the config here (its errors show at once, exit 2), reserve
    the run folder, start ``detrkit train *train_args`` in it detached; returns ``{"run_dir", "pid",
    "log"}`` without waiting.

    Args:
        config: a config file or packaged name, or a :class:`~detrkit.config.RunConfig`.
        overrides: ``key=value`` overrides of ``config`` (or of the resumed run's config).
        resume: a run folder to continue (its ``config.yaml``; ``config`` must be ``None``).
        train_args: the ``detrkit train`` arguments the child repeats (without ``--detach``).
    """
    from detrkit.config import RunConfig, load_config
    from detrkit.runs.layout import check_resumable, default_run_name, make_run_dir
    from detrkit.runs.trackers import check_trackers

    if resume is not None:
        if config is not None:
            raise ConfigError(
                f"--config {config} with --resume {resume}: a resumed run continues with its own "
                f"{Path(resume) / 'config.yaml'}; drop --config"
            )
        check_resumable(resume)
        cfg = load_config(Path(resume) / "config.yaml", list(overrides))
        current = run_status.run_state(resume)
        if current.status == "running":
            raise ConfigError(f"{resume}: this run is still training (PID {current.pid}); stop it first")
        check_trackers(cfg.log, cfg.source)
        run_dir, args = Path(resume), list(train_args)
    else:
        cfg = config if isinstance(config, RunConfig) else load_config(config, list(overrides))
        check_trackers(cfg.log, cfg.source)
        out = cfg.output
        run_dir = make_run_dir(
            root=out.root, name=default_run_name(out.name, cfg.source), explicit=out.dir, source=cfg.source
        )
        args = [*train_args, f"output.dir={run_dir}"]
    started = launch_detached(args, run_dir)
    return {"run_dir": str(started.run_dir), "pid": started.pid, "log": str(started.log)}


@contextmanager
def detached_child() -> Iterator[None]:
    """In a detached child (``DETRKIT_DETACHED_RUN`` set): an exception that leaves the block and
    that the trainer did not record (it failed before its logger existed) goes into
    ``status.json`` as ``failed`` (``interrupted`` for Ctrl-C). A no-op elsewhere."""
    run_dir = os.environ.get(DETACHED_ENV)
    try:
        yield
    except BaseException as err:
        status = run_status.read_status(run_dir) if run_dir else None
        if (
            run_dir
            and Path(run_dir).is_dir()
            and status is not None
            and status.get("state")
            in (
                "starting",
                "running",
            )
        ):
            interrupted = isinstance(err, KeyboardInterrupt)
            run_status.write_status(
                run_dir,
                state="interrupted" if interrupted else "failed",
                error=None if interrupted else run_status.error_line(err),
            )
        raise
