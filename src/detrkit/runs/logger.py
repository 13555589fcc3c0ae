"""What a run shows and logs while it trains: ``log.txt``, ``metrics.csv``, ``status.json``,
TensorBoard, the experiment trackers (W&B, MLflow: :mod:`detrkit.runs.trackers`), the rich progress
bar, plots.

Only the main process creates these; other processes get a :class:`RunLogger` with ``enabled=False``
whose methods do nothing.

The run's life: :meth:`RunLogger.begin` (status ``running``, trackers started with the config as
parameters), :meth:`~RunLogger.csv_row` per epoch (``metrics.csv`` and the trackers),
:meth:`~RunLogger.progress` (epoch and best metric into ``status.json``), then
:meth:`~RunLogger.finish` with the summary or :meth:`~RunLogger.fail` with the exception.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from detrkit.runs import status as run_status
from detrkit.runs.metrics import METRICS_CSV, read_metrics_csv, write_metrics_csv
from detrkit.runs.trackers import Tracker, check_trackers, numeric, open_trackers


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class RunLogger:
    """Console + ``log.txt`` + ``metrics.csv`` + ``status.json`` + TensorBoard + trackers for one run.

    Args:
        run_dir: the run folder (``None``: console only).
        enabled: ``False`` on non-main processes (everything becomes a no-op).
        tensorboard: write TensorBoard scalars under ``run_dir/tb``.
        console: where messages and the live bar go (stderr in ``--json`` mode).
        quiet: no live bar and no per-epoch lines on the console (``log.txt`` still gets them).
        trackers: the config's ``log`` section (:class:`~detrkit.config.schema.LogConfig`): which
            experiment trackers :meth:`begin` starts; ``None``: none.
        source: the config file, for error messages.

    Raises:
        ConfigError: ``trackers`` asks for a tracker whose package is not installed (checked on
            every process, so that all of them stop).
    """

    def __init__(
        self,
        run_dir: Path | None,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        console: Console | None = None,
        quiet: bool = False,
        trackers: Any = None,
        source: str = "<config>",
    ) -> None:
        if trackers is not None:
            check_trackers(trackers, source)
        self.run_dir = run_dir
        self.enabled = enabled
        self.quiet = quiet
        self.console = console or Console(stderr=False)
        self._log = None
        self._tb = None
        self._progress: Progress | None = None
        self._task = None
        self._images = 0
        self._t0 = 0.0
        self._want_tb = bool(enabled and run_dir is not None and tensorboard)
        #: set when resuming: TensorBoard drops events at or after this step (no duplicated curves).
        self.purge_step: int | None = None
        self._tracker_cfg = trackers
        self._source = source
        self._trackers: list[Tracker] = []
        self._finished = False
        if enabled and run_dir is not None:
            self._log = open(run_dir / "log.txt", "a", buffering=1)  # noqa: SIM115 - closed in close()

    def _writer(self) -> Any:
        if self._tb is None and self._want_tb and self.run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.purge_step)
        return self._tb

    # -- messages ---------------------------------------------------------------------------------
    def info(self, message: str, *, console: bool = True) -> None:
        """A line for ``log.txt`` and (unless quiet) the console."""
        if not self.enabled:
            return
        if self._log is not None:
            self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        if console and not self.quiet:
            if self._progress is not None:
                self._progress.console.print(message, highlight=False)
            else:
                self.console.print(message, highlight=False)

    def warn(self, message: str) -> None:
        """A warning: always shown on the console, also in quiet mode."""
        if not self.enabled:
            return
        if self._log is not None:
            self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} warning: {message}\n")
        self.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    # -- scalars ----------------------------------------------------------------------------------
    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """TensorBoard scalars ``prefix/name`` at ``step``."""
        writer = self._writer()
        if writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), step)

    def csv_row(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.csv``; a new column rewrites the file with the wider header."""
        if not self.enabled or self.run_dir is None:
            return
        self.rewrite_csv([*read_metrics_csv(self.run_dir / METRICS_CSV), row])
        if self._trackers and isinstance(row.get("epoch"), int):
            values, step = numeric(row), int(row["epoch"])
            self._to_trackers(lambda t: t.log_metrics(values, step))

    def rewrite_csv(self, rows: list[dict[str, Any]]) -> None:
        """Replace ``metrics.csv`` with ``rows`` (atomically)."""
        if not self.enabled or self.run_dir is None:
            return
        write_metrics_csv(self.run_dir / METRICS_CSV, rows)

    # -- progress ---------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int, total_steps: int, done_steps: int = 0) -> None:
        """Open the live bar for an epoch (``done_steps`` already consumed when resuming)."""
        self._images = 0
        self._t0 = time.perf_counter()
        if not self.enabled or self.quiet:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, completed=done_steps, stats="")

    def advance(self, images: int, *, loss: float, lr: float) -> float:
        """One optimizer step done; returns images/s of this epoch so far."""
        self._images += images
        rate = self._images / max(time.perf_counter() - self._t0, 1e-9)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, advance=1, stats=f"loss {loss:.4f} lr {lr:.2e} {rate:.1f} img/s"
            )
        return rate

    def end_epoch(self) -> float:
        """Close the live bar; returns the epoch's images/s."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        return self._images / max(time.perf_counter() - self._t0, 1e-9)

    def table(self, title: str, rows: dict[str, Any]) -> None:
        """A two-column summary table on the console (and as lines in ``log.txt``)."""
        if not self.enabled:
            return
        for k, v in rows.items():
            if self._log is not None:
                self._log.write(f"{title}: {k} = {_fmt(v)}\n")
        if self.quiet:
            return
        table = Table(title=title, show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", justify="right")
        for k, v in rows.items():
            table.add_row(k, _fmt(v))
        self.console.print(table)

    # -- the run's life (status.json and the trackers) ---------------------------------------------
    @property
    def _records(self) -> bool:
        return self.enabled and self.run_dir is not None

    def begin(
        self,
        *,
        epochs: int,
        epoch: int = 0,
        best_metric: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Training starts (or resumes at ``epoch``): ``status.json`` says ``running`` with this
        process; the trackers start with ``params`` (the nested config, flattened)."""
        if not self._records:
            return
        assert self.run_dir is not None
        previous = (run_status.read_status(self.run_dir) or {}).get("trackers") or {}
        if self._tracker_cfg is not None and not self._trackers:
            from detrkit.runs.folder import flatten

            self._trackers = open_trackers(
                self._tracker_cfg,
                run_dir=self.run_dir,
                params=flatten(params or {}),
                source=self._source,
                previous=previous,
                warn=self.warn,
            )
        run_status.write_status(
            self.run_dir,
            state="running",
            **run_status.process_identity(),
            started=time.time(),
            epochs=epochs,
            epoch=epoch,
            best_metric=best_metric,
            error=None,
            finished=None,
            trackers={**previous, **{t.name: t.ids() for t in self._trackers}},
        )

    def progress(self, *, epoch: int, best: float | None = None, best_epoch: int | None = None) -> None:
        """An epoch is done (its row and checkpoints written): epoch and best into ``status.json``."""
        if self._records:
            run_status.write_status(self.run_dir, epoch=epoch, best=best, best_epoch=best_epoch)  # type: ignore[arg-type]

    def finish(self, summary: dict[str, Any]) -> None:
        """Training ended normally: the trackers get the summary and end; ``status.json`` says
        ``finished``."""
        if not self._records:
            return
        step = int((summary.get("final") or {}).get("epoch") or summary.get("epochs") or 0)
        self._to_trackers(lambda t: t.log_summary(summary, step))
        self._end_trackers("finished")
        run_status.write_status(
            self.run_dir,  # type: ignore[arg-type]
            state="finished",
            best=summary.get("best"),
            best_epoch=summary.get("best_epoch"),
            finished=time.time(),
        )
        self._finished = True

    def fail(self, error: BaseException) -> None:
        """Training stopped with ``error``: ``interrupted`` for Ctrl-C, else ``failed`` with the
        error's first line; the trackers end the same way. Safe after :meth:`close`."""
        if not self._records or self._finished:
            return
        state = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        self._end_trackers(state)
        assert self.run_dir is not None
        if self.run_dir.is_dir():
            run_status.write_status(
                self.run_dir,
                state=state,
                error=None if state == "interrupted" else run_status.error_line(error),
            )

    def _to_trackers(self, call: Any) -> None:
        """``call(tracker)`` for each tracker; one that fails (a server gone) is warned about and
        left out for the rest of the run: the run folder is the record, training goes on."""
        for tracker in list(self._trackers):
            try:
                call(tracker)
            except Exception as err:
                self._trackers.remove(tracker)
                self.warn(f"{tracker.name}: logging failed ({err}); left out for the rest of this run")
                with contextlib.suppress(Exception):  # the same server is likely gone
                    tracker.finish("failed")

    def _end_trackers(self, state: str) -> None:
        trackers, self._trackers = self._trackers, []
        for tracker in trackers:
            try:
                tracker.finish(state)
            except Exception as err:  # a tracker that cannot end its run must not hide the real error
                self.console.print(f"[yellow]warning:[/yellow] {tracker.name}: could not end the run ({err})")

    def close(self) -> None:
        self.end_epoch()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._log is not None:
            self._log.close()
            self._log = None


def plot_curves(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``loss.png`` (train/val loss and its components per epoch) and ``ap.png`` (AP, AP50, AP75),
    drawn by :func:`detrkit.evaluation.plots.training_curves`; returns the files written."""
    from detrkit.evaluation.plots import training_curves

    written = []
    for name, panels in (("loss.png", ("loss", "loss components")), ("ap.png", ("COCO AP",))):
        png = training_curves(rows, panels=panels)
        if png is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_bytes(png)
            written.append(out_dir / name)
    return written


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The one-line summary of an epoch (console and ``log.txt``)."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row.get('train/loss', float('nan')):.4f}"]
    if "val/loss" in row:
        parts.append(f"val loss {row['val/loss']:.4f}")
    for k in ("AP", "AP50", "AP75"):
        if f"val/{k}" in row:
            parts.append(f"{k} {row[f'val/{k}']:.3f}")
    parts += [f"{row['train/images_per_s']:.1f} img/s", f"{row['time_s']:.0f}s"]
    if row.get("memory_mb") is not None:
        parts.append(f"mem {row['memory_mb']:.0f} MB")
    if row.get("nonfinite"):
        parts.append(f"{row['nonfinite']} non-finite steps skipped")
    if row.get("skipped_images"):
        parts.append(f"{row['skipped_images']} unreadable images skipped")
    return "  ".join(parts)
