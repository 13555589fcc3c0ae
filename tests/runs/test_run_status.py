"""``status.json``: what the trainer records, and the state ``detrkit runs`` reads from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from detrkit.errors import ConfigError
from detrkit.runs.layout import make_run_dir
from detrkit.runs.metrics import read_metrics_csv
from detrkit.runs.status import (
    STATUS_JSON,
    find_run_dirs,
    list_runs,
    process_identity,
    read_status,
    run_state,
    write_status,
)


def _best_from_csv(run: Path, metric: str = "AP") -> tuple[float, int]:
    rows = [r for r in read_metrics_csv(run / "metrics.csv") if f"val/{metric}" in r]
    top = max(rows, key=lambda r: r[f"val/{metric}"])
    return top[f"val/{metric}"], top["epoch"]


def test_the_trainer_records_running_then_finished(doubles: ModuleType, tmp_path: Path) -> None:
    run = tmp_path / "run"
    seen: list[Any] = []

    def during(epoch: int, row: dict[str, Any]) -> bool:
        seen.append((epoch, run_state(run), read_status(run)))
        return True

    trainer = doubles.make_trainer(doubles.double_config(run, train={"epochs": 2}), n_train=8, n_val=4)
    trainer.on_epoch_end = during
    summary = trainer.fit()
    (first_epoch, state, status) = seen[0]
    # while training: our own process, alive, at epoch 1 of 2
    assert state.status == "running" and state.epoch == 1 and state.epochs == 2
    assert status["pid"] == os.getpid() and status["state"] == "running"
    final = run_state(run)
    assert final.status == "finished" and (final.epoch, final.epochs) == (2, 2)
    best, best_epoch = _best_from_csv(run)
    assert final.best == pytest.approx(best) and final.best_epoch == best_epoch
    assert summary["best"] == pytest.approx(best)
    assert final.best_metric == "AP" and final.error is None and final.updated is not None


@pytest.mark.parametrize(
    ("raised", "state"), [(RuntimeError("boom\nsecond line"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_a_run_that_stops_with_an_error_is_failed_and_ctrl_c_interrupted(
    doubles: ModuleType, tmp_path: Path, raised: BaseException, state: str
) -> None:
    run = tmp_path / "run"

    def stop(epoch: int, row: dict[str, Any]) -> bool:
        raise raised

    trainer = doubles.make_trainer(doubles.double_config(run, train={"epochs": 2}), n_train=8, n_val=4)
    trainer.on_epoch_end = stop
    with pytest.raises(type(raised)):
        trainer.fit()
    shown = run_state(run)  # the folder is kept: epoch 1's last.pt can be resumed
    assert shown.status == state and shown.epoch == 1
    assert shown.error == ("RuntimeError: boom" if state == "failed" else None)
    assert read_status(run)["state"] == state


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_or_foreign_pid_reads_interrupted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"train": {"epochs": 5}, "eval": {"best_metric": "AP50"}})
    )
    (run / "metrics.csv").write_text("epoch,val/AP50\n1,0.2\n2,0.5\n3,0.4\n")
    me = process_identity()
    write_status(run, state="running", **me)
    assert run_state(run).status == "running"
    write_status(run, pid=_dead_pid())  # killed: the process is gone, nothing was recorded
    shown = run_state(run)
    assert shown.status == "interrupted" and (shown.epoch, shown.epochs) == (3, 5)
    assert (shown.best_metric, shown.best, shown.best_epoch) == ("AP50", 0.5, 2)  # from metrics.csv
    write_status(run, pid=me["pid"], pid_started=me["pid_started"] - 100)  # the PID was reused
    assert run_state(run).status == "interrupted"
    write_status(run, pid=me["pid"], pid_started=me["pid_started"], host="another-host")
    assert run_state(run).status == "interrupted"


def test_folders_without_status_and_nested_roots(tmp_path: Path) -> None:
    old = tmp_path / "runs" / "old"  # a run from before status.json: finished by its metrics.json
    old.mkdir(parents=True)
    (old / "config.yaml").write_text("train: {epochs: 1}\n")
    (old / "metrics.json").write_text(json.dumps({"best": 0.3}))
    cut = tmp_path / "runs" / "ablate" / "seed1"  # nested, killed before any epoch
    cut.mkdir(parents=True)
    (cut / "config.yaml").write_text("train: {epochs: 3}\n")
    (cut / "checkpoints").mkdir()
    (tmp_path / "runs" / "notes").mkdir()
    assert find_run_dirs(tmp_path / "runs") == [cut, old]
    assert find_run_dirs(old) == [old]
    os.utime(cut / "config.yaml", (1, 1))
    states = {s.run: s for s in list_runs(tmp_path / "runs")}
    assert states["old"].status == "finished" and states["ablate/seed1"].status == "interrupted"
    assert states["ablate/seed1"].epochs == 3 and states["ablate/seed1"].epoch is None


def test_status_writes_merge_and_replace_atomically(tmp_path: Path) -> None:
    write_status(tmp_path, state="running", epoch=0)
    write_status(tmp_path, epoch=2)
    data = json.loads((tmp_path / STATUS_JSON).read_text())
    assert data["state"] == "running" and data["epoch"] == 2 and data["updated"] > 0
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_JSON]  # no temp file left


def test_a_folder_reserved_by_detach_is_usable_but_a_run_is_not(tmp_path: Path) -> None:
    reserved = make_run_dir(root=tmp_path, name="x", explicit=str(tmp_path / "r"))
    write_status(reserved, state="starting")
    (reserved / "train.log").write_text("")
    assert make_run_dir(root=tmp_path, name="x", explicit=str(reserved)) == reserved
    (reserved / "config.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        make_run_dir(root=tmp_path, name="x", explicit=str(reserved))
