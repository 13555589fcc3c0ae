"""W&B (offline) and MLflow (local file store) beside TensorBoard, read back with their own formats
and clients and compared with the run's ``metrics.csv``; no server, nothing downloaded."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from detrkit.errors import ConfigError
from detrkit.runs.metrics import read_metrics_csv
from detrkit.runs.status import read_status


def _csv_metrics(run: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {column: value}}`` of the numeric ``metrics.csv`` cells (the reference)."""
    return {
        r["epoch"]: {k: float(v) for k, v in r.items() if k != "epoch" and isinstance(v, int | float)}
        for r in read_metrics_csv(run / "metrics.csv")
    }


def _fail_at(epoch_to_fail: int, error: BaseException) -> Any:
    def hook(epoch: int, row: dict[str, Any]) -> bool:
        if epoch == epoch_to_fail:
            raise error
        return True

    return hook


# -- Weights & Biases ------------------------------------------------------------------------------
def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline ``run-ID.wandb`` file: W&B's header, then LevelDB-log framed
    chunks (7-byte header: crc32, length, type; 32 KiB blocks) of ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _wandb_run(
    root: Path, segment: int = 0
) -> tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any], int]:
    """``(run id, config, history rows, summary, exit code)`` of the offline run under ``root``
    (``segment``: which of several offline folders, oldest first; a resumed run adds one)."""
    import wandb

    wandb.teardown()  # the service writes the file asynchronously: flush it
    path = sorted(root.glob("wandb/offline-run-*/run-*.wandb"))[segment]
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    exit_code = None
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            history.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "summary":
            summary.update(
                {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update}
            )
        elif kind == "exit":
            exit_code = r.exit.exit_code
    return path.stem.removeprefix("run-"), config, history, summary, int(exit_code)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("wandb")  # in the dev extra; skipped only where the extra is not installed
    root = tmp_path / "wandb_dir"
    root.mkdir()
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # no wrapping of pytest's captured streams
    return root


@pytest.mark.slow
def test_wandb_offline_run_holds_the_config_every_epoch_and_the_summary(
    doubles: ModuleType, tmp_path: Path, wandb_offline: Path
) -> None:
    run = tmp_path / "run"
    cfg = doubles.double_config(
        run, train={"epochs": 2}, log={"wandb": {"project": "tests", "mode": "offline"}}
    )
    summary = doubles.make_trainer(cfg, n_train=8, n_val=4).fit()
    run_id, config, history, wb_summary, exit_code = _wandb_run(wandb_offline)
    assert exit_code == 0
    assert (
        config["train.epochs"] == 2 and config["optim.lr"] == 0.01 and config["log.wandb.project"] == "tests"
    )
    logged = {row["_step"]: {k: v for k, v in row.items() if not k.startswith("_")} for row in history}
    expected = _csv_metrics(run)
    assert set(logged) == set(expected) == {1, 2}
    for epoch, values in expected.items():
        assert logged[epoch] == pytest.approx(values, rel=1e-6), epoch
    assert wb_summary["summary/best"] == pytest.approx(summary["best"])
    assert wb_summary["summary/wall_s"] == pytest.approx(summary["wall_s"])
    assert read_status(run)["trackers"]["wandb"]["id"] == run_id


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_wandb_run(
    doubles: ModuleType, tmp_path: Path, wandb_offline: Path
) -> None:
    run = tmp_path / "run"
    log = {"wandb": {"project": "tests", "mode": "offline"}}
    doubles.make_trainer(doubles.double_config(run, train={"epochs": 1}, log=log), n_train=8, n_val=4).fit()
    first_id, *_ = _wandb_run(wandb_offline, 0)
    time.sleep(1.1)  # W&B names offline folders by the second: keep the two segments apart
    cfg = doubles.double_config(run, train={"epochs": 2}, log=log)
    doubles.make_trainer(cfg, n_train=8, n_val=4, resume=run).fit()
    assert len(list(wandb_offline.glob("wandb/offline-run-*"))) == 2
    second_id, config, history, _, exit_code = _wandb_run(wandb_offline, 1)
    assert second_id == first_id and exit_code == 0
    assert config["train.epochs"] == 2 and [row["_step"] for row in history] == [2]


@pytest.mark.slow
def test_wandb_run_of_a_failing_training_ends_failed(
    doubles: ModuleType, tmp_path: Path, wandb_offline: Path
) -> None:
    cfg = doubles.double_config(tmp_path / "run", train={"epochs": 2}, log={"wandb": {"mode": "offline"}})
    trainer = doubles.make_trainer(cfg, n_train=8, n_val=4)
    trainer.on_epoch_end = _fail_at(1, RuntimeError("disk full"))
    with pytest.raises(RuntimeError):
        trainer.fit()
    *_, history, _, exit_code = _wandb_run(wandb_offline)
    assert exit_code == 1 and [row["_step"] for row in history] == [1]


# -- MLflow ----------------------------------------------------------------------------------------
@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pytest.importorskip("mlflow")  # in the dev extra; skipped only where the extra is not installed
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a file store
    return (tmp_path / "mlruns").as_uri()


def _mlflow_run(uri: str, experiment: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, found


@pytest.mark.slow
def test_mlflow_history_equals_metrics_csv_and_resume_continues_the_run(
    doubles: ModuleType, tmp_path: Path, mlflow_uri: str
) -> None:
    run = tmp_path / "run"
    log = {"mlflow": {"tracking_uri": mlflow_uri, "experiment": "exp", "run_name": "first"}}
    doubles.make_trainer(doubles.double_config(run, train={"epochs": 1}, log=log), n_train=8, n_val=4).fit()
    cfg = doubles.double_config(run, train={"epochs": 2}, log=log)
    summary = doubles.make_trainer(cfg, n_train=8, n_val=4, resume=run).fit()
    client, found = _mlflow_run(mlflow_uri, "exp")  # one run: the resumed segment continued it
    run_id = found.info.run_id
    assert found.info.status == "FINISHED" and found.info.run_name == "first"
    assert read_status(run)["trackers"]["mlflow"]["run_id"] == run_id
    expected = _csv_metrics(run)
    assert set(expected) == {1, 2}
    for key in expected[1]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(e, pytest.approx(expected[e][key], rel=1e-6)) for e in (1, 2)], key
    params = found.data.params
    assert params["train.epochs"] == "1" and params["model.name"] == "tiny-double"
    assert params["log.mlflow.experiment"] == "exp" and params["train.device"] == "null"
    assert found.data.tags["resumed.train.epochs"] == "2"  # a parameter cannot change in MLflow
    assert found.data.metrics["summary/best"] == pytest.approx(summary["best"])
    saved = Path(client.download_artifacts(run_id, "metrics.json", str(tmp_path)))
    assert json.loads(saved.read_text())["best_epoch"] == summary["best_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError("x"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_mlflow_run_of_a_stopped_training(
    doubles: ModuleType, tmp_path: Path, mlflow_uri: str, error: BaseException, status: str
) -> None:
    log = {"mlflow": {"tracking_uri": mlflow_uri, "experiment": "stop"}}
    trainer = doubles.make_trainer(
        doubles.double_config(tmp_path / "run", train={"epochs": 2}, log=log), n_train=8, n_val=4
    )
    trainer.on_epoch_end = _fail_at(1, error)
    with pytest.raises(type(error)):
        trainer.fit()
    client, found = _mlflow_run(mlflow_uri, "stop")
    assert found.info.status == status and found.info.run_name == "run"  # default: the folder's name
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/loss")] == [1]


@pytest.mark.slow
def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(
    doubles: ModuleType, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detrkit.runs.trackers import MlflowTracker

    def gone(self: Any, metrics: dict[str, float], step: int) -> None:
        raise ConnectionError("server gone")

    monkeypatch.setattr(MlflowTracker, "log_metrics", gone)
    run = tmp_path / "run"
    log = {"mlflow": {"tracking_uri": mlflow_uri, "experiment": "gone"}}
    doubles.make_trainer(doubles.double_config(run, train={"epochs": 2}, log=log), n_train=8, n_val=4).fit()
    assert read_status(run)["state"] == "finished" and len(read_metrics_csv(run / "metrics.csv")) == 2
    warned = [line for line in (run / "log.txt").read_text().splitlines() if "warning: mlflow" in line]
    assert len(warned) == 1 and "logging failed (server gone)" in warned[0]  # once, then left out
    _, found = _mlflow_run(mlflow_uri, "gone")
    assert found.info.status == "FAILED"


def test_an_unreachable_tracker_is_one_line(
    doubles: ModuleType, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    log = {"mlflow": {"tracking_uri": mlflow_uri}}
    with pytest.raises(ConfigError) as err:
        doubles.make_trainer(doubles.double_config(tmp_path / "run", log=log), n_train=8, n_val=4).fit()
    message = str(err.value)
    assert (
        message.startswith("test-double: log.mlflow: MLflow could not start a run at file://")
        and "\n" not in message
    )
    assert "MLFLOW_ALLOW_FILE_STORE=true" in message
    assert not (tmp_path / "run").exists()  # nothing trained: the folder is removed as for any failed start


# -- a tracker whose package is missing ------------------------------------------------------------
def _without(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )


def test_a_missing_tracker_package_stops_the_run_before_it_starts(
    doubles: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without(monkeypatch, "wandb")
    cfg = doubles.double_config(tmp_path / "run", log={"wandb": {"project": "p"}})
    with pytest.raises(ConfigError) as err:
        doubles.make_trainer(cfg, n_train=8, n_val=4).fit()
    assert str(err.value) == (
        "test-double: log.wandb is set but the wandb package is not installed "
        "(pip install 'detrkit[wandb]', or remove log.wandb)"
    )
    assert not (tmp_path / "run").exists()


def test_the_cli_says_so_in_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from detrkit.cli.main import main

    _without(monkeypatch, "mlflow")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as code:
        main(["train", "--config", "demo", "log.mlflow.experiment=e", "--detach"])
    assert code.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: demo: log.mlflow is set but the mlflow package is not installed "
        "(pip install 'detrkit[mlflow]', or remove log.mlflow)"
    )
    assert not (tmp_path / "runs").exists()  # checked before the run folder is reserved
