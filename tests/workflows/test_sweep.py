"""``detrkit sweep`` on generated shapes data: grid trials as run folders, the table, resuming a
finished and an interrupted study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

CONFIG = """
model: {name: detr-tiny}
data:
  shapes: {out: shapes, train: 4, val: 2, size: 64, seed: 0}
  train_preset: light
  val_preset: light
  transform_args: {size: 64}
  num_workers: 0
train: {epochs: 2, batch_size: 2, max_steps_per_epoch: 1, preflight: false, checkpoint_every: 0}
output: {tensorboard: false, plots: false}
"""


def test_space_parsing() -> None:
    from detrkit.errors import ConfigError
    from detrkit.workflows.sweep import parse_space

    space, fixed = parse_space(["optim.lr=1e-5,1e-4", "train.epochs=3", "x={a: 1, b: 2}"])
    assert space == {"optim.lr": [1e-5, 1e-4]} and fixed == ["train.epochs=3", "x={a: 1, b: 2}"]
    with pytest.raises(ConfigError, match="at least one"):
        parse_space(["train.epochs=3"])
    with pytest.raises(ConfigError, match="twice"):
        parse_space(["optim.lr=1,1"])


@pytest.mark.slow
def test_grid_sweep_runs_every_trial_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from detrkit.errors import ConfigError
    from detrkit.workflows.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    out = tmp_path / "sweep"
    out.mkdir()
    storage = f"sqlite:///{out / 'study.db'}"
    # a trial left RUNNING by a crashed earlier sweep: failed, then run again
    study = optuna.create_study(study_name="sweep", storage=storage, direction="maximize")
    study.enqueue_trial({"optim.lr": "0.001"})
    study.ask({"optim.lr": optuna.distributions.CategoricalDistribution(["0.0001", "0.001"])})
    args = {
        "config": str(tmp_path / "cfg.yaml"),
        "overrides": ["optim.lr=1e-4,1e-3"],
        "out": out,
        "log": lambda _: None,
    }
    rows = run_sweep(**args)
    assert sorted(r["optim.lr"] for r in rows) == [1e-4, 1e-3] and all(r["state"] == "complete" for r in rows)
    states = [t.state.name for t in optuna.load_study(study_name="sweep", storage=storage).trials]
    assert sorted(states) == ["COMPLETE", "COMPLETE", "FAIL"]
    for r in rows:  # every trial is a normal run folder; its value is the run's best AP
        run = Path(r["runs"][0])
        assert r["mean"] == pytest.approx(json.loads((run / "metrics.json").read_text())["best"])
        assert float(yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]) == r["optim.lr"]
    means = [r["mean"] for r in rows]
    assert means == sorted(means, reverse=True)
    for name in ("sweep.md", "sweep.csv", "sweep.json", "metric_vs_params.png", "study.db"):
        assert (out / name).is_file(), name
    # again: nothing new to run
    folders = sorted(p.name for p in out.glob("trial_*"))
    assert run_sweep(**args) == rows and sorted(p.name for p in out.glob("trial_*")) == folders
    with pytest.raises(ConfigError, match="pick another --out"):
        run_sweep(**{**args, "overrides": ["optim.lr=1e-4,1e-3,1e-2"]})
