"""What a run shows and logs while it trains: ``log.txt``, ``metrics.csv``, TensorBoard, the rich progress bar, plots.

Only the main process creates these; other processes get a :class:`RunLogger` with ``enabled=False``
whose methods do nothing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from detrkit.runs.metrics import METRICS_CSV, read_metrics_csv, write_metrics_csv


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class RunLogger:
    """Console + ``log.txt`` + ``metrics.csv`` + TensorBoard for one run.

    Args:
        run_dir: the run folder (``None``: console only).
        enabled: ``False`` on non-main processes (everything becomes a no-op).
        tensorboard: write TensorBoard scalars under ``run_dir/tb``.
        console: where messages and the live bar go (stderr in ``--json`` mode).
        quiet: no live bar and no per-epoch lines on the console (``log.txt`` still gets them).
    """

    def __init__(
        self,
        run_dir: Path | None,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        console: Console | None = None,
        quiet: bool = False,
    ) -> None:
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
