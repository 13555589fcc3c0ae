"""The training loop on Hugging Face Accelerate (CPU, one GPU, DDP across GPUs and nodes).

``Trainer(config).fit()`` builds data and model from the config, creates the run folder, runs the
preflight (one step, one validation batch, a checkpoint round trip, peak memory), then trains:
AdamW with backbone/head and decay/no-decay groups, warm-up + step/cosine schedule, fp32/bf16/fp16,
gradient accumulation and clipping, optional EMA, non-finite-loss skipping, step-level checkpoints,
exact resume (``resume=RUN_DIR``) and Ctrl-C handling (``last.pt`` is saved, then
``KeyboardInterrupt`` is raised). Datasets, model and collate function can be injected for library
use and tests.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detrkit.config import RunConfig
from detrkit.engine.builders import (
    DataSplits,
    build_accelerator,
    build_collate,
    build_data,
    build_detector,
    ensure_shapes,
    loop_settings,
    repeat_factors_for,
    step_settings,
)
from detrkit.engine.ema import ModelEMA
from detrkit.engine.loop import EpochLoop
from detrkit.engine.optim import apply_freezing, build_optimizer, build_scheduler
from detrkit.engine.preflight import auto_batch_size, run_preflight
from detrkit.engine.sampling import EvalBatchSampler, ResumableBatchSampler, SeededDataset
from detrkit.engine.step import TrainStep
from detrkit.engine.validate import validate
from detrkit.errors import ConfigError
from detrkit.runs import checkpoint as ckpt_io
from detrkit.runs import status as run_status
from detrkit.runs.layout import check_resumable, default_run_name, environment, make_run_dir, write_json
from detrkit.runs.logger import RunLogger, epoch_line, plot_curves
from detrkit.runs.metrics import read_metrics_csv


class Trainer:
    """Trains one run.

    Args:
        config: the run config (see :mod:`detrkit.config`).
        resume: a run folder to continue from its ``checkpoints/last.pt`` (its ``config.yaml`` is
            used; ``config`` may override keys such as ``train.epochs``).
        model, train_dataset, val_dataset, classes, val_gt, collate_fn: inject components instead
            of building them from the config (``classes = {"names": [...], "category_ids": [...]}``;
            ``val_gt`` is the COCO ground truth of ``val_dataset``).
        console: where progress and messages go; ``quiet`` turns the console output off.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        resume: str | Path | None = None,
        model: nn.Module | None = None,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        classes: dict[str, list] | None = None,
        val_gt: Any = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        console: Console | None = None,
        quiet: bool = False,
        on_epoch_end: Callable[[int, dict[str, Any]], bool] | None = None,
    ) -> None:
        self.cfg = config
        #: called after each epoch's row (and checkpoints) with ``(epoch, row)``; returning False
        #: stops the run there, like early stopping (a sweep's pruner uses it)
        self.on_epoch_end = on_epoch_end
        self.resume_dir = Path(resume) if resume is not None else None
        self._model_in = model
        self._data_in = (train_dataset, val_dataset, classes, val_gt)
        self._collate = collate_fn
        self.console = console or Console()
        self.quiet = quiet
        self.run_dir: Path | None = None
        self.stop = threading.Event()  # set by Ctrl-C; the training step shares it across processes
        self.created_run_dir = False  # removed again when the start fails or on a dry run
        self.wall_before = 0.0  # seconds trained in earlier segments of a resumed run
        self.segments = 1
        self.t_segment = time.perf_counter()

    # ----------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.acc = acc = build_accelerator(cfg)
        self.device = acc.device
        from accelerate.utils import set_seed

        set_seed(cfg.train.seed)
        self.data = self._build_data()
        self.label_to_cat_id = self.data.category_ids
        num_classes = len(self.data.class_names)
        self.run_dir = self._make_run_dir()
        self.log = RunLogger(
            self.run_dir if acc.is_main_process else None,
            enabled=acc.is_main_process,
            tensorboard=cfg.output.tensorboard,
            console=self.console,
            quiet=self.quiet,
            trackers=cfg.log,
            source=cfg.source,
        )
        model = self._model_in or build_detector(
            cfg.model, num_classes=num_classes, source=cfg.source, log=self.log.info
        )
        frozen = apply_freezing(model, cfg.model, source=cfg.source)
        if frozen:
            self.log.info(
                f"frozen: {len(frozen)} parameter tensors ({', '.join(cfg.model.freeze) or 'stages/bn'})"
            )
        self.model_name = str(getattr(model, "model_name", type(model).__name__))
        model.to(self.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.ema = (
            ModelEMA(model, decay=cfg.train.ema_decay, warmup=cfg.train.ema_warmup) if cfg.train.ema else None
        )
        optimizer = build_optimizer(model, cfg.optim, device_type=self.device.type, source=cfg.source)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.batch_size = self._resolve_batch_size()
        self._build_loaders()
        self.scheduler = build_scheduler(
            self.optimizer.optimizer, cfg.optim, steps_per_epoch=self.steps_per_epoch, epochs=cfg.train.epochs
        )
        self.runner = TrainStep(
            step_settings(cfg, where=str(self.run_dir)),
            accelerator=acc,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ema=self.ema,
            stop=self.stop,
        )
        self.loop = EpochLoop(
            self._loop_settings,
            step=self.runner,
            loader=self.train_loader,
            sampler=self.train_sampler,
            log=self.log,
            save_last=lambda: self.save(["last"]),
            run_dir=self.run_dir,
        )
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stale_evals = 0  # validations in a row without an improvement > train.min_delta
        self.stopped_early_at: int | None = None
        self.history: list[dict[str, Any]] = []
        self.last_metrics: dict[str, Any] = {}

    def _build_data(self) -> DataSplits:
        train, val, classes, val_gt = self._data_in
        if train is not None:
            if classes is None:
                raise ConfigError(
                    f"{self.cfg.source}: an injected train_dataset needs classes={{'names', 'category_ids'}}"
                )
            rare = classes.get("rare")
            return DataSplits(
                train,
                val,
                list(classes["names"]),
                list(classes["category_ids"]),
                val_gt,
                rare=list(rare) if rare else None,
            )
        self.cfg.data = ensure_shapes(self.cfg.data, main_process=self.acc.is_main_process)
        self.acc.wait_for_everyone()
        return build_data(self.cfg)

    def _make_run_dir(self) -> Path:
        out = self.cfg.output
        if self.resume_dir is not None:
            check_resumable(self.resume_dir)
            return self.resume_dir
        path = None
        if self.acc.is_main_process:
            name = default_run_name(out.name, self.cfg.source)
            path = make_run_dir(root=out.root, name=name, explicit=out.dir, source=self.cfg.source)
            self.created_run_dir = True
        from accelerate.utils import broadcast_object_list

        return Path(broadcast_object_list([str(path) if path else None])[0])

    def _resolve_batch_size(self) -> int:
        bs = self.cfg.train.batch_size
        if bs != "auto":
            return int(bs)
        return auto_batch_size(
            model=self.model,
            dataset=self.data.train,
            acc=self.acc,
            log=self.log,
            collate=self._collate,
            where=self.cfg.source,
        )

    def _build_loaders(self) -> None:
        cfg, acc = self.cfg, self.acc
        collate = self._collate or build_collate(cfg.data.size_divisibility)
        workers = cfg.data.num_workers
        common = {
            "collate_fn": collate,
            "num_workers": workers,
            "pin_memory": cfg.data.pin_memory and self.device.type == "cuda",
        }
        if workers > 0:
            common["persistent_workers"] = True
        self.train_sampler = ResumableBatchSampler(
            len(self.data.train),
            self.batch_size,
            seed=cfg.train.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            shuffle=True,
            drop_last=True,
            weights=repeat_factors_for(cfg.data, self.data.train, cfg.source, self.log.info),
        )
        if self.train_sampler.batches_per_epoch() == 0:
            raise ConfigError(
                f"{cfg.source}: train.batch_size={self.batch_size} x {acc.num_processes} process(es) is larger "
                f"than the training set ({len(self.data.train)} images)"
            )
        self.train_loader = DataLoader(
            SeededDataset(self.data.train), batch_sampler=self.train_sampler, **common
        )
        self.val_loader = None
        if self.data.val is not None:
            eval_bs = cfg.eval.batch_size or self.batch_size
            sampler = EvalBatchSampler(
                len(self.data.val), eval_bs, rank=acc.process_index, world_size=acc.num_processes
            )
            # its own generator: iterating a DataLoader draws a seed, which from the global RNG would
            # shift the dropout masks of the following training steps with the evaluation schedule
            self.val_loader = DataLoader(
                self.data.val, batch_sampler=sampler, generator=torch.Generator().manual_seed(0), **common
            )
        step_settings(cfg, where=str(self.run_dir))  # train.grad_accum >= 1
        if cfg.train.patience < 0 or cfg.train.min_delta < 0:
            raise ConfigError(
                f"{cfg.source}: train.patience and train.min_delta must be >= 0 (0: no early stopping), got "
                f"{cfg.train.patience} and {cfg.train.min_delta}"
            )
        main = acc.is_main_process and self.run_dir is not None
        self._loop_settings = loop_settings(
            cfg,
            batches_per_epoch=self.train_sampler.batches_per_epoch(),
            profile_dir=self.run_dir / "profile" if main else None,
        )
        self.steps_per_epoch = self._loop_settings.steps_per_epoch

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def unwrapped(self) -> nn.Module:
        return self.acc.unwrap_model(self.model)

    @property
    def stop_requested(self) -> bool:
        return self.stop.is_set()

    def state(self) -> dict[str, Any]:
        """The checkpoint dict (collective: every process must call it)."""
        rng = ckpt_io.rng_state()
        if self.acc.num_processes > 1:
            from accelerate.utils import gather_object

            rng = gather_object([rng])
        else:
            rng = [rng]
        return {
            "model": self.unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.runner.global_step,
            "epoch_step": self.loop.epoch_batches,
            "rng": rng,
            "config": self.cfg.to_dict(),
            "classes": self.data.classes,
            "model_name": self.model_name,
            "metrics": self.last_metrics,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stale_evals": self.stale_evals,
            "wall_s": self.wall_before + (time.perf_counter() - self.t_segment),
            "segments": self.segments,
            "runner": {**self.runner.state_dict(), **self.loop.state_dict()},
            "world_size": self.acc.num_processes,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`state` saved, including this process's RNG streams."""
        self.unwrapped.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.acc.scaler is not None and state.get("scaler"):
            self.acc.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.loop.epoch_batches = int(state["epoch_step"])
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.stale_evals = int(state.get("stale_evals") or 0)
        self.last_metrics = state.get("metrics") or {}
        self.runner.load_state_dict(state["runner"])
        self.loop.load_state_dict(state["runner"])
        rngs = state["rng"]
        if len(rngs) != self.acc.num_processes:
            self.log.warn(
                f"checkpoint from {len(rngs)} process(es) resumed on {self.acc.num_processes}: random streams differ"
            )
        ckpt_io.set_rng_state(rngs[min(self.acc.process_index, len(rngs) - 1)])

    def save(self, names: list[str]) -> None:
        """Write the current state as ``checkpoints/<name>.pt`` for each name (main process)."""
        state = self.state()
        if not self.acc.is_main_process or self.run_dir is None:
            return
        folder = self.run_dir / "checkpoints"
        first = ckpt_io.atomic_save(state, folder / f"{names[0]}.pt")
        for name in names[1:]:
            ckpt_io.atomic_copy(first, folder / f"{name}.pt")

    # ------------------------------------------------------------------------------ the run
    def fit(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Preflight, then train (unless ``dry_run``); returns the final summary.

        A start that fails (model, weights, data, preflight) removes the run folder it created, and
        a dry run keeps none: ``runs/NAME2``, ``NAME3``... appear only for runs that trained.
        """
        keep = False
        try:
            summary = self._fit(dry_run=dry_run)
            keep = not dry_run
            return summary
        except BaseException as err:
            log = getattr(self, "log", None)
            if log is not None and not dry_run:
                log.fail(err)  # status.json and the trackers say failed (interrupted for Ctrl-C)
            raise
        finally:
            if not keep:
                self._remove_created_run_dir(always=dry_run)

    def _remove_created_run_dir(self, *, always: bool) -> None:
        """Remove the folder this run created unless it holds a ``last.pt`` to resume from."""
        acc = getattr(self, "acc", None)
        if not self.created_run_dir or self.run_dir is None or acc is None or not acc.is_main_process:
            return
        log = getattr(self, "log", None)
        if log is not None:
            log.close()
        detached = (run_status.read_status(self.run_dir) or {}).get("detached")
        if always or not (detached or (self.run_dir / "checkpoints" / "last.pt").is_file()):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _fit(self, *, dry_run: bool) -> dict[str, Any]:
        self._setup()
        acc, cfg = self.acc, self.cfg
        if self.resume_dir is not None:
            stale = ckpt_io.remove_stale_temp_files(self.run_dir / "checkpoints")
            if stale:
                self.log.info(
                    f"removed {len(stale)} temp file(s) of an interrupted save: {', '.join(p.name for p in stale)}"
                )
            state = ckpt_io.load_checkpoint(check_resumable(self.resume_dir))
            self.load_state(state)
            self.wall_before = float(state.get("wall_s") or 0.0)  # earlier segments, summed
            self.segments = int(state.get("segments") or 1) + 1
            self.history = read_metrics_csv(self.run_dir / "metrics.csv")
            self.history = [r for r in self.history if int(r["epoch"]) <= self.epoch]
            self.log.rewrite_csv(self.history)
            self.log.purge_step = self.runner.global_step + 1
            where = (
                f"epoch {self.epoch + 1} was interrupted after batch {self.loop.epoch_batches}; continuing it"
                if self.loop.epoch_batches
                else f"continuing at the start of epoch {self.epoch + 1}"
            )
            self.log.info(
                f"resuming {self.run_dir} (segment {self.segments}, {self.wall_before:.1f} s trained before): {where}"
            )
        elif acc.is_main_process:
            cfg.save(self.run_dir / "config.yaml")
            write_json(self.run_dir / "classes.json", self.data.classes)
        if acc.is_main_process:
            write_json(
                self.run_dir / "env.json",
                environment(self.device, num_processes=acc.num_processes, precision=cfg.train.precision),
            )
        self.log.info(
            f"run {self.run_dir}: {self.model_name}, {len(self.data.train)} train images, "
            f"batch {self.batch_size} x {acc.num_processes} process(es) x {cfg.train.grad_accum} accum, "
            f"{self.steps_per_epoch} steps/epoch, device {self.device}, {cfg.train.precision}"
        )
        if not dry_run:
            self.log.begin(
                epochs=cfg.train.epochs,
                epoch=self.epoch,
                best_metric=cfg.eval.best_metric,
                params=cfg.to_dict(),
            )
        preflight = None
        if cfg.train.preflight or dry_run:
            preflight = run_preflight(
                run_dir=self.run_dir,
                state=self.state,
                load_state=self.load_state,
                step=self.runner,
                loop=self.loop,
                epoch=self.epoch,
                evaluate=self.evaluate if self.val_loader is not None else None,
                log=self.log,
                batch_size=self.batch_size,
            )
        if dry_run:
            self.log.close()
            return {"run_dir": str(self.run_dir), "preflight": preflight, "dry_run": True}
        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            previous = None
        try:
            summary = self._train()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.log.close()
        summary["preflight"] = preflight
        return summary

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop.set()

    def _train(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.acc
        self.t_segment = time.perf_counter()  # the wall time counts training, not setup/preflight
        for epoch in range(self.epoch, cfg.train.epochs):
            self.epoch = epoch
            row = self.loop.run_epoch(epoch)
            if row is None:  # interrupted: last.pt already saved
                raise KeyboardInterrupt
            self.epoch, self.loop.epoch_batches = epoch + 1, 0
            is_last = epoch + 1 == cfg.train.epochs
            if self.val_loader is not None and ((epoch + 1) % max(cfg.eval.every, 1) == 0 or is_last):
                metrics, losses = self.evaluate()
                row.update({f"val/{k}": v for k, v in losses.items()})
                row.update({f"val/{k}": v for k, v in metrics.items() if k != "per_class"})
                self.last_metrics = metrics
            names = ["last"]
            key = f"val/{cfg.eval.best_metric}"
            if key in row:
                improved = self.best is None or row[key] > self.best + cfg.train.min_delta
                self.stale_evals = 0 if improved else self.stale_evals + 1
                if self.best is None or row[key] > self.best:
                    self.best, self.best_epoch = row[key], epoch + 1
                    names.append("best")
            if cfg.train.checkpoint_every and (epoch + 1) % cfg.train.checkpoint_every == 0:
                names.append(f"epoch_{epoch + 1}")
            self.history.append(row)
            self.log.csv_row(row)  # before the checkpoint: a resume drops rows past its epoch
            self.log.info(epoch_line(row, cfg.train.epochs))  # before it too: a kill while saving keeps it
            self.save(names)
            self.log.scalars(
                {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("val/")}, epoch + 1, "val"
            )
            self.log.scalars({"images_per_s": row["train/images_per_s"]}, epoch + 1, "train")
            self.log.progress(epoch=epoch + 1, best=self.best, best_epoch=self.best_epoch)
            if self.on_epoch_end is not None and not self.on_epoch_end(epoch + 1, row) and not is_last:
                self.stopped_early_at = epoch + 1
                self.log.info(f"stopped at epoch {epoch + 1} by the caller (e.g. a sweep's pruner)")
                break
            if cfg.train.patience and self.stale_evals >= cfg.train.patience and not is_last:
                self.stopped_early_at = epoch + 1
                self.log.info(
                    f"early stopping at epoch {epoch + 1}: {cfg.eval.best_metric} has not improved by more than "
                    f"{cfg.train.min_delta} for {self.stale_evals} validation(s) (best {self.best:.4f}, epoch "
                    f"{self.best_epoch})"
                )
                break
        wall = self.wall_before + (time.perf_counter() - self.t_segment)
        final = {k: v for k, v in (self.history[-1] if self.history else {}).items()}
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": cfg.train.epochs,
            "wall_s": round(wall, 3),
            "segments": self.segments,
            "best": self.best,
            "best_metric": cfg.eval.best_metric,
            "best_epoch": self.best_epoch,
            "stopped_early_at_epoch": self.stopped_early_at,
            "patience": cfg.train.patience,
            "nonfinite_steps": self.runner.nonfinite_total,
            "skipped_images": int(sum(int(r.get("skipped_images") or 0) for r in self.history)),
            "final": final,
            "per_class": self.last_metrics.get("per_class"),
        }
        if acc.is_main_process:
            write_json(self.run_dir / "metrics.json", summary)
            if cfg.output.plots:
                plot_curves(self.history, self.run_dir / "plots")
            self.log.table(
                f"{self.model_name}: {self.run_dir}",
                {
                    k: v
                    for k, v in final.items()
                    if k.startswith(("val/AP", "train/loss", "val/loss")) and k.count("_") < 1
                }
                | {
                    "best " + cfg.eval.best_metric: self.best if self.best is not None else "n/a",
                    "best epoch": (
                        f"{self.best_epoch} (trained epochs only)" if self.best_epoch is not None else "n/a"
                    ),
                    "early stop": (
                        f"epoch {self.stopped_early_at} of {cfg.train.epochs} (patience {cfg.train.patience},"
                        f" min_delta {cfg.train.min_delta})"
                        if self.stopped_early_at is not None
                        else ("not triggered" if cfg.train.patience else "off")
                    ),
                    "wall s": round(wall, 1),
                },
            )
        self.log.finish(summary)  # status.json says finished; the trackers get the summary and end
        return summary

    def evaluate(self, *, max_batches: int | None = None) -> tuple[dict[str, Any], dict[str, float]]:
        """COCO metrics and mean losses on the validation set (EMA weights when kept)."""
        from accelerate.utils import broadcast_object_list, gather_object

        model = self.ema.module if self.ema is not None else self.unwrapped
        multi = self.acc.num_processes > 1
        metrics, losses = validate(
            model,
            self.val_loader,
            device=self.device,
            label_to_cat_id=self.label_to_cat_id,
            gt=self.data.val_ann,
            score_threshold=self.cfg.eval.score_threshold,
            gather=gather_object if multi else None,
            is_main=self.acc.is_main_process,
            broadcast=(lambda m: broadcast_object_list([m])[0]) if multi else None,
            max_batches=max_batches,
        )
        if multi:
            keys = sorted(losses)
            t = self.acc.reduce(torch.tensor([losses[k] for k in keys], device=self.device), reduction="mean")
            losses = dict(zip(keys, t.tolist(), strict=False))
        return metrics, losses
