"""The run folder: creation (auto-incremented names), ``env.json``, ``classes.json``.

Layout (DESIGN.md)::

    runs/<name>/config.yaml  env.json  classes.json  log.txt  metrics.csv  metrics.json
                checkpoints/{last,best,epoch_N}.pt  tb/  plots/*.png  profile/
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from detrkit.errors import CheckpointError, ConfigError


def next_run_dir(root: str | Path, name: str) -> Path:
    """``root/name`` if free, else ``root/name2``, ``root/name3``... (Ultralytics style); not created."""
    root = Path(root)
    candidate = root / name
    n = 2
    while candidate.exists():
        candidate = root / f"{name}{n}"
        n += 1
    return candidate


def default_run_name(name: str | None, source: str) -> str:
    """``output.name``, else the config file's stem (``demo``), else ``run``."""
    return name or Path(source).stem.replace("<", "").replace(">", "") or "run"


def make_run_dir(*, root: str | Path, name: str, explicit: str | None, source: str = "config") -> Path:
    """Create the run folder. An explicit ``output.dir`` must be new or empty (no silent overwrite);
    a folder holding only the files of a ``--detach`` launch (``status.json``, ``train.log``, an empty
    ``checkpoints/``) counts as empty: it was reserved for this run."""
    from detrkit.runs.status import LAUNCH_FILES

    if explicit:
        path = Path(explicit)

        def reserved(p: Path) -> bool:
            return p.name in LAUNCH_FILES or (p.name == "checkpoints" and p.is_dir() and not any(p.iterdir()))

        if path.exists() and not all(reserved(p) for p in path.iterdir()):
            raise ConfigError(
                f"{source}: output.dir {path} already holds a run; use --resume {path} to continue it "
                "or pick another folder"
            )
    else:
        path = next_run_dir(root, name)
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


def check_resumable(run_dir: str | Path) -> Path:
    """The ``last.pt`` of a run folder to resume; clear error when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder to resume")
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{last}: nothing to resume (the run saved no checkpoint yet)")
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir / 'config.yaml'}: missing; not a detrkit run folder")
    return last


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_sha(cwd: str | Path | None = None) -> str | None:
    """Commit of the working tree at ``cwd`` (``None`` outside git), with ``-dirty`` if modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def environment(device: torch.device, *, num_processes: int, precision: str) -> dict[str, Any]:
    """Versions, git commit, device and launch details recorded as ``env.json``."""
    package_dir = Path(__file__).resolve().parents[1]
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "git_sha": git_sha(package_dir),
        "packages": {
            name: _version(name)
            for name in (
                "detrkit",
                "torch",
                "torchvision",
                "accelerate",
                "numpy",
                "faster-coco-eval",
                "transformers",
            )
        },
        "device": str(device),
        "num_processes": num_processes,
        "precision": precision,
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["cuda"] = {
            "name": props.name,
            "total_memory_gib": round(props.total_memory / 2**30, 2),
            "capability": f"{props.major}.{props.minor}",
            "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return env


def write_json(path: str | Path, data: Any) -> None:
    """Pretty JSON, written via a temp file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
