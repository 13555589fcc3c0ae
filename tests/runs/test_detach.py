"""``detrkit.runs.detach`` without starting training: refusals, and what a failing child records."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detrkit.errors import ConfigError, DataError
from detrkit.runs.detach import DETACHED_ENV, detach_training, detached_child
from detrkit.runs.status import process_identity, read_status, run_state, write_status


def _resumable(run: Path) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"not read here")
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 3}}))
    return run


def test_a_run_still_training_is_not_resumed_twice(tmp_path: Path) -> None:
    run = _resumable(tmp_path / "run")
    write_status(run, state="running", **process_identity())  # this process: alive
    with pytest.raises(ConfigError, match=r"still training \(PID \d+\); stop it first"):
        detach_training(None, resume=run, train_args=["--resume", str(run)])
    assert not (run / "train.log").exists()  # nothing launched


def test_config_and_resume_together_are_refused(tmp_path: Path) -> None:
    run = _resumable(tmp_path / "run")
    with pytest.raises(ConfigError, match="drop --config"):
        detach_training("demo", resume=run, train_args=[])


def test_a_child_that_fails_before_the_trainer_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_status(run, state="starting", **process_identity(), detached=True)
    monkeypatch.setenv(DETACHED_ENV, str(run))
    with pytest.raises(DataError), detached_child():
        raise DataError("data/train.json: no such file\nmore detail")
    assert read_status(run)["error"] == "DataError: data/train.json: no such file"
    assert run_state(run).status == "failed"
    write_status(run, state="finished")  # what the trainer recorded is not overwritten
    with pytest.raises(KeyboardInterrupt), detached_child():
        raise KeyboardInterrupt
    assert read_status(run)["state"] == "finished"


def test_outside_a_detached_child_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DETACHED_ENV, raising=False)
    with pytest.raises(RuntimeError), detached_child():
        raise RuntimeError("x")
    assert list(tmp_path.iterdir()) == []
