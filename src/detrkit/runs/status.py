"""A run's state: ``status.json``, written by the trainer, read by ``detrkit runs``.

The trainer records (through :class:`~detrkit.runs.logger.RunLogger`) ``state: running`` with its
process (PID, the PID's start time, host) when training starts, the epoch and best metric after
each epoch, ``finished`` at the end and ``failed`` (with the error) or ``interrupted`` (Ctrl-C)
when it stops early; ``detrkit train --detach`` writes ``starting`` with the child's PID and
``train.log`` before the child starts. Every write replaces the file atomically.

:func:`run_state` turns that into one of :data:`STATES`: ``running`` when the recorded process is
alive and is the same process (PID and start time match; a reused PID is not), ``finished`` when
the final metrics were written, ``failed`` when an error was recorded, and ``interrupted`` for
anything else (a killed process, a power cut). Folders of runs made before ``status.json`` existed
read as ``finished`` (``metrics.json`` present) or ``interrupted``.

Imports nothing heavy (no torch), so ``detrkit runs`` starts fast.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from detrkit.runs.metrics import METRICS_CSV, METRICS_JSON, read_metrics_csv

STATUS_JSON = "status.json"
#: where a detached run's console output goes
TRAIN_LOG = "train.log"
#: the files a detached launch writes into the run folder before the trainer starts
LAUNCH_FILES: frozenset[str] = frozenset({STATUS_JSON, TRAIN_LOG})
STATES: tuple[str, ...] = ("running", "finished", "failed", "interrupted")


def _process_start(pid: int) -> float | None:
    """The start time of process ``pid`` (seconds since the epoch), ``None`` when it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """``{"pid", "pid_started", "host"}`` of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "pid_started": _process_start(pid), "host": socket.gethostname()}


def process_alive(status: dict[str, Any]) -> bool:
    """Whether the process recorded in ``status`` still runs on this host and is the same one."""
    pid, started = status.get("pid"), status.get("pid_started")
    if not isinstance(pid, int) or status.get("host") not in (None, socket.gethostname()):
        return False
    now = _process_start(pid)
    if now is None:
        return False
    return not isinstance(started, (int, float)) or abs(now - float(started)) < 1.0


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The content of ``run_dir/status.json``; ``None`` when absent or unreadable."""
    try:
        data = json.loads((Path(run_dir) / STATUS_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run_dir/status.json`` (``updated`` set to now); atomic replace."""
    path = Path(run_dir) / STATUS_JSON
    status = {**(read_status(run_dir) or {}), **fields, "updated": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return status


def error_line(err: BaseException) -> str:
    """One line naming an exception: ``TrainingError: 5 non-finite losses in a row``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@dataclass(frozen=True)
class RunState:
    """One row of ``detrkit runs``; ``updated`` in seconds since the epoch."""

    run: str
    path: str
    status: str
    epoch: int | None
    epochs: int | None
    best_metric: str | None
    best: float | None
    best_epoch: int | None
    updated: float | None
    pid: int | None
    log: str | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["updated_iso"] = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.updated)) if self.updated else None
        )
        return d


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_state(run_dir: str | Path, *, root: str | Path | None = None) -> RunState:
    """What ``detrkit runs`` shows about one run folder (see the module docstring for the states)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) or {}
    summary_path = run_dir / METRICS_JSON
    state = status.get("state")
    if state in ("running", "starting") and process_alive(status):
        shown = "running"
    elif state == "failed":
        shown = "failed"
    elif state == "finished" or (not status and summary_path.is_file()):
        shown = "finished"
    else:
        shown = "interrupted"
    rows = read_metrics_csv(run_dir / METRICS_CSV)
    cfg = _config(run_dir)
    metric = status.get("best_metric") or (cfg.get("eval") or {}).get("best_metric") or "AP"
    epoch = _int(status.get("epoch"))
    if epoch is None and rows:
        epoch = _int(rows[-1].get("epoch"))
    epochs = _int(status.get("epochs")) or _int((cfg.get("train") or {}).get("epochs"))
    best, best_epoch = _num(status.get("best")), _int(status.get("best_epoch"))
    if best is None:
        scored = [r for r in rows if _num(r.get(f"val/{metric}")) is not None]
        if scored:
            top = max(scored, key=lambda r: float(r[f"val/{metric}"]))
            best, best_epoch = float(top[f"val/{metric}"]), _int(top.get("epoch"))
    times = [
        t
        for t in (
            _num(status.get("updated")),
            _mtime(run_dir / METRICS_CSV),
            _mtime(summary_path),
            _mtime(run_dir / "log.txt"),
        )
        if t is not None
    ]
    name = str(run_dir.relative_to(root)) if root is not None and run_dir != Path(root) else run_dir.name
    log = status.get("log")
    return RunState(
        run=name,
        path=str(run_dir),
        status=shown,
        epoch=epoch,
        epochs=epochs,
        best_metric=metric,
        best=best,
        best_epoch=best_epoch,
        updated=max(times) if times else None,
        pid=_int(status.get("pid")),
        log=str(run_dir / log) if isinstance(log, str) else None,
        error=status.get("error") if shown == "failed" else None,
    )


def is_run_dir(path: Path) -> bool:
    """A detrkit run folder: ``config.yaml`` or ``status.json`` inside."""
    return (path / "config.yaml").is_file() or (path / STATUS_JSON).is_file()


def find_run_dirs(root: str | Path, *, max_depth: int = 4) -> list[Path]:
    """The run folders at or under ``root`` (not looking inside a run folder), sorted by path."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for child in children:
            if is_run_dir(child):
                found.append(child)
            elif depth + 1 < max_depth:
                stack.append((child, depth + 1))
    return sorted(found)


def list_runs(root: str | Path) -> list[RunState]:
    """Every run under ``root``, the most recently updated first."""
    states = [run_state(p, root=root) for p in find_run_dirs(root)]
    return sorted(states, key=lambda s: -(s.updated or 0.0))
