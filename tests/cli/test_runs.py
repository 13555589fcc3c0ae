"""``detrkit train --detach`` and ``detrkit runs``: a real detached detr-tiny run on generated shapes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

TINY = [
    "model.name=detr-tiny",
    "model.overrides.num_queries=10",
    "train.epochs=1",
    "train.batch_size=4",
    "train.preflight=false",
    "eval.batch_size=4",
    "data.shapes.train=4",
    "data.shapes.val=4",
    "data.shapes.size=64",
    "data.transform_args.size=64",
    "data.num_workers=0",
    "output.tensorboard=false",
    "output.plots=false",
]


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``detrkit *args`` in this process: ``(exit code, stdout, stderr)``."""
    from detrkit.cli.main import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(pid: int | None) -> None:
    """Leave no process behind: SIGKILL the detached child (its own session) if it still runs."""
    if pid is not None and _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _wait_for(root: Path, run: str, states: set[str], timeout: float = 240) -> dict[str, Any]:
    """Poll ``list_runs`` (what ``runs --json`` prints) until ``run`` is in one of ``states``."""
    from detrkit.runs.status import list_runs

    deadline = time.monotonic() + timeout
    while True:
        found = {s.run: s.to_dict() for s in list_runs(root)}
        if run in found and found[run]["status"] in states:
            return found[run]
        if time.monotonic() > deadline:
            raise AssertionError(f"{run} not {states} after {timeout} s: {found.get(run)}")
        time.sleep(0.5)


@pytest.mark.slow
def test_detach_returns_at_once_and_runs_shows_the_run_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the child trains in the launcher's working folder
    pid = None
    try:
        t0 = time.monotonic()
        code, out, err = _main(capsys, "train", "--config", "demo", f"data.shapes.out={tmp_path / 'shapes'}", *TINY,
                   "--detach", "--json")  # fmt: skip
        returned_after = time.monotonic() - t0
        assert code == 0, err[-3000:]
        started = json.loads(out)
        pid = started["pid"]
        run = tmp_path / started["run_dir"]
        assert started["run_dir"] == os.path.join("runs", "demo") and started["log"] == str(
            Path("runs/demo/train.log")
        )
        status = json.loads((run / "status.json").read_text())
        assert status["pid"] == pid and status["detached"] is True and status["log"] == "train.log"
        if _alive(pid):  # a new session, not the launcher's: a closed terminal does not stop it
            assert os.getsid(pid) == pid
        final = _wait_for(tmp_path / "runs", "demo", {"finished", "failed", "interrupted"})
        assert final["status"] == "finished", (run / "train.log").read_text()[-3000:]
        code, out, err = _main(capsys, "runs", "--json")  # default root: ./runs, where train put it
        assert code == 0, err[-2000:]
        (row,) = json.loads(out)
        summary = json.loads((run / "metrics.json").read_text())
        assert (
            row["run"] == "demo" and row["status"] == "finished" and (row["epoch"], row["epochs"]) == (1, 1)
        )
        assert row["best_metric"] == "AP" and row["best"] == pytest.approx(summary["best"])
        assert row["pid"] == pid and row["log"].endswith("train.log") and row["updated"] > t0 - 3600
        log = (run / "train.log").read_text()
        assert '"run_dir": "runs/demo"' in log  # the child's output (--json: the summary) went to train.log
        assert returned_after < 60  # the launcher did not wait for training
        code, out, _ = _main(capsys, "runs", "runs")
        assert code == 0 and "finished" in out and "1/1" in out
    finally:
        _kill(pid)


@pytest.mark.slow
def test_a_detached_run_that_fails_reads_failed_and_a_killed_one_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pids: list[int] = []
    try:
        code, out, err = _main(capsys, "train", "--config", "demo", *TINY, f"data.train_ann={tmp_path / 'nope.json'}",
                   f"data.train_images={tmp_path}", "output.name=bad", "--detach", "--json")  # fmt: skip
        assert code == 0, err[-3000:]
        pids.append(json.loads(out)["pid"])
        code, out, err = _main(capsys, "train", "--config", "demo", f"data.shapes.out={tmp_path / 'shapes'}", *TINY,
                    "train.epochs=50", "output.name=killed", "--detach", "--json")  # fmt: skip
        assert code == 0, err[-3000:]
        pids.append(json.loads(out)["pid"])
        failed = _wait_for(tmp_path / "runs", "bad", {"failed", "finished", "interrupted"})
        assert failed["status"] == "failed" and str(tmp_path / "nope.json") in failed["error"]
        assert "\n" not in failed["error"]
        assert (tmp_path / "runs" / "bad" / "train.log").is_file()  # kept to read what happened
        os.kill(pids[1], signal.SIGKILL)  # kill -9: nothing gets recorded
        killed = _wait_for(tmp_path / "runs", "killed", {"interrupted", "failed", "finished"}, timeout=30)
        assert killed["status"] == "interrupted" and killed["error"] is None
        code, _, err = _main(capsys, "train", "--config", "demo", "--dry-run", "--detach")
        assert code == 2 and "--detach with --dry-run" in err
    finally:
        for pid in pids:
            _kill(pid)
