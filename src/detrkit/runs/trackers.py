"""Experiment trackers beside TensorBoard: Weights & Biases (``log.wandb``) and MLflow (``log.mlflow``).

Each tracker gets the flattened run config as parameters when training starts, every
``metrics.csv`` row as metrics at ``step = epoch`` (numeric, finite cells; ``epoch`` itself is the
step), the final summary (its scalars as ``summary/<key>``, MLflow also ``metrics.json`` as an
artifact), and ends its run as finished, failed or interrupted. :class:`~detrkit.runs.logger.RunLogger`
owns them, so the trainer does not know which are on. Their run ids go into ``status.json``, so a
resumed run (``detrkit train --resume``) continues the same tracker runs.

The packages are optional extras (``pip install 'detrkit[wandb]'`` / ``'detrkit[mlflow]'``);
:func:`check_trackers` fails with one line when a configured one is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

from detrkit.errors import ConfigError

#: config key -> (module to import, pip extra)
PACKAGES: dict[str, tuple[str, str]] = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
#: MLflow's limit on a parameter value in older servers (newer allow more).
MLFLOW_PARAM_CHARS = 500


class Tracker(Protocol):
    """What :class:`~detrkit.runs.logger.RunLogger` calls on each tracker."""

    name: str

    def ids(self) -> dict[str, Any]:
        """What a resumed run needs to continue this tracker run (kept in ``status.json``)."""
        ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_summary(self, summary: dict[str, Any], step: int) -> None: ...

    def finish(self, state: str) -> None:
        """End the run: ``finished``, ``failed`` or ``interrupted``."""
        ...


def requested(log_cfg: Any) -> list[str]:
    """The trackers a ``log`` section turns on (``["wandb", "mlflow"]``...)."""
    return [name for name in PACKAGES if getattr(log_cfg, name, None) is not None]


def check_trackers(log_cfg: Any, source: str) -> None:
    """Fail with one line when the config asks for a tracker whose package is not installed.

    Raises:
        ConfigError: ``demo.yaml: log.wandb is set but the wandb package is not installed (...)``.
    """
    for name in requested(log_cfg):
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{source}: log.{name} is set but the {module} package is not installed "
                f"(pip install 'detrkit[{extra}]', or remove log.{name})"
            )


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a ``metrics.csv`` row, without ``epoch`` (the step)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def param_value(value: Any) -> str:
    """A config value as a tracker parameter: strings as they are, the rest as JSON (``null``...)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    return {
        f"summary/{k}": float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:300]


class WandbTracker:
    """A Weights & Biases run; local files go under ``WANDB_DIR`` or else the run folder."""

    name = "wandb"

    def __init__(
        self,
        cfg: Any,
        *,
        run_dir: Path,
        params: dict[str, Any],
        source: str,
        previous: dict[str, Any] | None,
    ) -> None:
        import wandb

        run_id = (previous or {}).get("id")
        try:
            self.run = wandb.init(
                project=cfg.project,
                name=cfg.name or run_dir.name,
                mode=cfg.mode,
                dir=os.environ.get("WANDB_DIR") or str(run_dir),
                config=params,
                id=run_id,
                resume="allow" if run_id else None,
            )
        except Exception as err:  # no API key, no network, a bad project name...
            raise ConfigError(
                f"{source}: log.wandb: W&B could not start a run ({_first_line(err)}); "
                "log in with `wandb login` or set log.wandb.mode=offline"
            ) from None
        if run_id:  # a resumed run may have changed keys (e.g. train.epochs)
            self.run.config.update(params, allow_val_change=True)

    def ids(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_summary(self, summary: dict[str, Any], step: int) -> None:
        self.run.summary.update(_summary_scalars(summary))

    def finish(self, state: str) -> None:
        self.run.finish(exit_code={"finished": 0, "interrupted": 130}.get(state, 1))


class MlflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run is touched)."""

    name = "mlflow"

    def __init__(
        self,
        cfg: Any,
        *,
        run_dir: Path,
        params: dict[str, Any],
        source: str,
        previous: dict[str, Any] | None,
        warn: Any = None,
    ) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        where = cfg.tracking_uri or "MLflow's default tracking URI"
        try:
            self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
            run = None
            if (previous or {}).get("run_id"):
                try:
                    run = self.client.get_run(previous["run_id"])  # type: ignore[index]
                    self.client.update_run(run.info.run_id, status="RUNNING")
                except Exception:
                    run = None
            if run is None:
                exp = self.client.get_experiment_by_name(cfg.experiment)
                exp_id = (
                    exp.experiment_id if exp is not None else self.client.create_experiment(cfg.experiment)
                )
                run = self.client.create_run(
                    exp_id,
                    run_name=cfg.run_name or run_dir.name,
                    tags={"detrkit.run_dir": str(run_dir.resolve())},
                )
            self.run_id = run.info.run_id
            self.tracking_uri = self.client.tracking_uri
            have = dict(run.data.params)
            new = {k: param_value(v)[:MLFLOW_PARAM_CHARS] for k, v in params.items()}
            changed = sorted(k for k, v in new.items() if k in have and have[k] != v)
            items = [Param(k, v) for k, v in new.items() if k not in have]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i : i + 100])
            if changed:  # a parameter cannot change value in MLflow: the resumed values become tags
                self.client.log_batch(self.run_id, tags=[RunTag(f"resumed.{k}", new[k]) for k in changed])
                if warn is not None:
                    warn(f"mlflow: {', '.join(changed)} changed on resume; kept as tags resumed.<key>")
        except Exception as err:
            hint = (
                " (set MLFLOW_ALLOW_FILE_STORE=true to keep using a file store)"
                if "MLFLOW_ALLOW_FILE_STORE" in str(err)
                else ""
            )
            raise ConfigError(
                f"{source}: log.mlflow: MLflow could not start a run at {where} ({_first_line(err)}){hint}"
            ) from None

    def ids(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        items = [Metric(k, v, ms, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_summary(self, summary: dict[str, Any], step: int) -> None:
        self.log_metrics(_summary_scalars(summary), step)
        self.client.log_dict(self.run_id, json.loads(json.dumps(summary, default=str)), "metrics.json")

    def finish(self, state: str) -> None:
        status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(self.run_id, status=status)


def open_trackers(
    log_cfg: Any,
    *,
    run_dir: Path,
    params: dict[str, Any],
    source: str,
    previous: dict[str, Any] | None = None,
    warn: Any = None,
) -> list[Tracker]:
    """Start the trackers of the ``log`` section (``previous``: ids of a resumed run's trackers).

    A tracker that fails to start ends those already started (as failed) and raises.

    Raises:
        ConfigError: a package is missing, or a tracker could not start its run.
    """
    check_trackers(log_cfg, source)
    previous = previous or {}
    started: list[Tracker] = []
    try:
        if log_cfg.wandb is not None:
            started.append(
                WandbTracker(
                    log_cfg.wandb,
                    run_dir=run_dir,
                    params=params,
                    source=source,
                    previous=previous.get("wandb"),
                )
            )
        if log_cfg.mlflow is not None:
            started.append(
                MlflowTracker(
                    log_cfg.mlflow,
                    run_dir=run_dir,
                    params=params,
                    source=source,
                    previous=previous.get("mlflow"),
                    warn=warn,
                )
            )
    except BaseException:
        for tracker in started:
            tracker.finish("failed")
        raise
    return started
