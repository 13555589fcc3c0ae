"""Checkpoints: atomic writes, loading with clear errors, RNG states, weight transfer.

A checkpoint is a dict (ARCHITECTURE.md): ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``ema``, ``epoch``, ``step``, ``rng``, ``config``, ``classes``, ``model_name``, ``metrics``; the trainer
adds ``global_step``, ``epoch_step`` (batches consumed in ``epoch``), ``nonfinite`` and ``history``.
Files are written to a temporary file in the same folder, flushed, fsynced and moved over the old
file with :func:`os.replace`, so a crash never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detrkit.errors import CheckpointError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_error(path: Path, err: OSError) -> CheckpointError:
    what = err.strerror or type(err).__name__
    keep = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
    return CheckpointError(f"{path}: cannot save the checkpoint ({what}); {keep}")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same folder + fsync + os.replace).

    The file gets the permissions of any file the user creates (``0666 & ~umask``, as
    ``best.pt`` copies do), not ``mkstemp``'s 0600. A full disk, a file-size limit or an unwritable
    folder raises :class:`CheckpointError` (one line) and leaves the previous file as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _save_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause: BaseException | None = err  # torch's zip writer turns ENOSPC/EFBIG into a RuntimeError
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if isinstance(cause, OSError):
            raise _save_error(path, cause) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_copy(src: str | Path, dest: str | Path) -> Path:
    """Copy a checkpoint to ``dest`` atomically (``best.pt``, ``epoch_N.pt`` from ``last.pt``)."""
    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name}.copy")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _save_error(dest, err) from None
    return dest


#: what an interrupted save can leave in ``checkpoints/`` (atomic_save's and atomic_copy's temp files)
STALE_PATTERNS = (".*.pt.*.tmp", ".*.pt.copy", ".preflight.pt")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files of saves killed half-way (``kill -9``); returns what was removed."""
    folder = Path(folder)
    removed = sorted({p for pattern in STALE_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file; raises :class:`CheckpointError` naming the file when unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a detrkit checkpoint (no 'model' entry)")
    return ckpt


def resolve_checkpoint(run_or_path: str | Path, which: str = "best") -> Path:
    """A run folder + ``best``/``last``/``epoch_N`` (or a file path) -> the checkpoint file.

    ``best`` falls back to ``last`` when the run never validated.
    """
    p = Path(run_or_path)
    if p.is_file():
        return p
    if Path(which).suffix == ".pt" and Path(which).is_file():
        return Path(which)
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such run folder or checkpoint file")
    folder = p / "checkpoints"
    candidate = folder / f"{which}.pt"
    if candidate.is_file():
        return candidate
    if which == "best" and (folder / "last.pt").is_file():
        return folder / "last.pt"
    found = sorted(q.stem for q in folder.glob("*.pt")) if folder.is_dir() else []
    raise CheckpointError(f"{candidate}: checkpoint not found (the run has: {', '.join(found) or 'none'})")


def inference_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the EMA weights when the run kept them, else ``model``."""
    ema = ckpt.get("ema")
    if isinstance(ema, dict) and "module" in ema:
        return ema["module"]
    return ckpt["model"]


def rng_state() -> dict[str, Any]:
    """States of the python, numpy, torch CPU and CUDA generators of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dicts_equal(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose tensors differ between two (nested) state dicts; ``[]`` when identical."""
    diffs: list[str] = []

    def walk(x: Any, y: Any, key: str) -> None:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            ok = (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.shape == y.shape
                and x.dtype == y.dtype
                and torch.equal(x.cpu(), y.cpu())
            )
            if not ok:
                diffs.append(key)
        elif isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                diffs.append(f"{key} (keys)")
            for k in set(x) & set(y):
                walk(x[k], y[k], f"{key}.{k}" if key else str(k))
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                diffs.append(f"{key} (length)")
            for i, (u, v) in enumerate(zip(x, y, strict=False)):
                walk(u, v, f"{key}[{i}]")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                diffs.append(key)
        elif x != y and not (isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y)):
            diffs.append(key)

    walk(a, b, "")
    return diffs


def read_checkpoint(source: str | Path, which: str = "best") -> tuple[Path, dict[str, Any]]:
    """A run folder (+ ``best``/``last``/``epoch_N``) or a checkpoint file -> ``(path, checkpoint)``.

    The one way in for everything that reads a trained model back (restore, weight transfer,
    export of an inference checkpoint).
    """
    path = resolve_checkpoint(source, which)
    return path, load_checkpoint(path)


def transfer_weights(model: nn.Module, source: str | Path) -> tuple[list[str], list[str]]:
    """Copy tensors from a detrkit checkpoint (file or run folder) where names and shapes match.

    Used by ``model.init_from`` (e.g. DETR-R101 from a DETR-R50 run: the transformer, the heads and
    the query embeddings transfer; backbone tensors with different shapes are skipped).

    Returns:
        ``(loaded, skipped)`` parameter names.
    Raises:
        CheckpointError: the source is unreadable or nothing at all matched.
    """
    path, ckpt = read_checkpoint(source, "best")
    state = inference_state_dict(ckpt)
    own = model.state_dict()
    loaded, skipped = [], []
    new_state = {}
    for name, tensor in own.items():
        src = state.get(name)
        if src is not None and src.shape == tensor.shape:
            new_state[name] = src.to(tensor.dtype)
            loaded.append(name)
        else:
            skipped.append(name)
    if not loaded:
        raise CheckpointError(f"{path}: no tensor matches the model by name and shape; cannot init_from it")
    model.load_state_dict(new_state, strict=False)
    return loaded, skipped


def _epoch_of(path: Path) -> int:
    stem = path.stem
    return int(stem.split("_", 1)[1]) if stem.startswith("epoch_") and stem[6:].isdigit() else -1


def ensure_resumable_last(run_dir: str | Path, *, fallback: bool = False) -> Path | None:
    """Check that ``run_dir/checkpoints/last.pt`` loads; else fall back or say how.

    With ``fallback``, an unreadable ``last.pt`` is moved aside to ``last.pt.corrupt`` and the
    newest readable ``epoch_N.pt`` (else ``best.pt``) is copied in its place; returns the file used
    (``None`` when ``last.pt`` was fine). Without it, raises one line naming the file and the
    newest intact checkpoint to fall back to.
    """
    folder = Path(run_dir) / "checkpoints"
    last = folder / "last.pt"
    try:
        load_checkpoint(last)
        return None
    except CheckpointError as err:
        problem = str(err)
    candidates = sorted(folder.glob("epoch_*.pt"), key=_epoch_of, reverse=True) + [folder / "best.pt"]
    intact = None
    for candidate in (c for c in candidates if c.is_file()):
        try:
            load_checkpoint(candidate)
        except CheckpointError:
            continue
        intact = candidate
        break
    if not fallback:
        hint = (
            f"; add --fallback to resume from {intact.name}"
            if intact
            else "; no intact checkpoint to fall back to"
        )
        raise CheckpointError(problem + hint)
    if intact is None:
        raise CheckpointError(problem + "; no intact epoch_N.pt or best.pt to fall back to")
    if last.exists():
        os.replace(last, folder / "last.pt.corrupt")
    atomic_copy(intact, last)
    return intact
