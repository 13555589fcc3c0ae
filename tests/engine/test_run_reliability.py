"""What a killed, restarted or failing run leaves behind (issue 14), on the test double."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from detrkit.errors import CheckpointError, DataError, DetrkitError
from detrkit.runs import checkpoint as ckpt_io


class _Unreadable(torch.utils.data.Dataset):
    """The double's squares, with the images of ``bad`` indices unreadable (``None``, as CocoDetection)."""

    def __init__(self, base: Any, bad: set[int]) -> None:
        self.base, self.bad = base, bad
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        return None if i in self.bad else self.base[i]


def _trainer_with(conf: Any, cfg: Any, train: Any) -> Any:
    from detrkit.engine.trainer import Trainer

    torch.manual_seed(cfg.train.seed)
    val = conf.SquaresDataset(8, seed=2)
    return Trainer(cfg, model=conf.TinyDetector(), train_dataset=train, val_dataset=val, classes=conf.CLASSES,
                   val_gt=val.coco(), collate_fn=conf.collate, quiet=True)  # fmt: skip


def test_same_permissions_for_every_checkpoint(conf: Any, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        conf.make_trainer(conf.double_config(tmp_path / "run", train={"epochs": 1})).fit()
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run" / "checkpoints").glob("*.pt")}
    assert set(modes) >= {"last.pt", "best.pt", "epoch_1.pt"}
    assert set(modes.values()) == {0o640}, modes  # 0666 & ~umask, mkstemp's 0600 gone


def test_resume_cleans_temp_files_sums_wall_time_and_says_where(conf: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = conf.make_trainer(conf.double_config(run, train={"epochs": 1})).fit()
    assert first["segments"] == 1 and first["wall_s"] > 0
    folder = run / "checkpoints"
    (folder / ".best.pt.copy").write_bytes(b"x" * 1000)  # what kill -9 during the copy left
    (folder / ".last.pt.k3j2.tmp").write_bytes(b"y" * 1000)
    again = conf.make_trainer(
        conf.double_config(run, train={"epochs": 1}), resume=run
    ).fit()  # nothing left to do
    import torch

    saved = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)["wall_s"]
    # not 0.0: the earlier segment, as recorded when last.pt was written, counts
    assert saved > 0 and again["wall_s"] >= round(saved, 3) - 0.0005
    assert not list(folder.glob(".*"))
    second = conf.make_trainer(conf.double_config(run, train={"epochs": 2}), resume=run).fit()
    # the resume with nothing left to train saved no checkpoint: the last.pt segment count stays
    assert second["segments"] == 2 and second["wall_s"] > again["wall_s"]
    assert json.loads((run / "metrics.json").read_text())["wall_s"] == second["wall_s"]
    log = (run / "log.txt").read_text()
    assert "removed 2 temp file(s) of an interrupted save: .best.pt.copy, .last.pt.k3j2.tmp" in log
    assert "resuming" in log and "continuing at the start of epoch 2" in log
    epoch_lines = [line for line in log.splitlines() if "epoch 1/" in line or "epoch 2/" in line]
    assert any(
        "epoch 2/2" in line and "mem " in line for line in epoch_lines
    )  # the epoch line reports memory


def test_corrupt_last_pt_is_one_line_and_falls_back_when_asked(conf: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    conf.make_trainer(conf.double_config(run, train={"epochs": 2})).fit()
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(CheckpointError) as info:
        ckpt_io.ensure_resumable_last(run)
    msg = str(info.value)
    assert str(last) in msg and "\n" not in msg and "--fallback to resume from epoch_2.pt" in msg
    used = ckpt_io.ensure_resumable_last(run, fallback=True)
    assert used == run / "checkpoints" / "epoch_2.pt"
    assert (run / "checkpoints" / "last.pt.corrupt").stat().st_size == len(data) // 3
    assert ckpt_io.load_checkpoint(last)["epoch"] == 2
    summary = conf.make_trainer(conf.double_config(run, train={"epochs": 3}), resume=run).fit()
    assert summary["final"]["epoch"] == 3


_SAVE_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, sys, torch
    from detrkit.runs.checkpoint import atomic_save
    from detrkit.errors import CheckpointError
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # like `ulimit -f 195`
    try:
        atomic_save({"model": torch.zeros(1_000_000)}, sys.argv[1])
    except CheckpointError as err:
        print(err)
        sys.exit(2)
    """
)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    ckpt_io.atomic_save({"model": torch.ones(10), "epoch": 4}, last)
    before = last.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run([sys.executable, "-c", _SAVE_UNDER_LIMIT, str(last)], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and str(last) in lines[0] and "the previous last.pt is intact" in lines[0]
    assert "Traceback" not in out.stderr
    assert last.read_bytes() == before and sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot save the checkpoint"):
            ckpt_io.atomic_save({"model": torch.ones(2)}, folder / "last.pt")
    finally:
        folder.chmod(0o700)


def test_dry_run_and_failed_start_leave_no_run_folder(conf: Any, tmp_path: Path, monkeypatch) -> None:
    from detrkit.engine.trainer import Trainer

    out = {"dir": None, "root": str(tmp_path / "runs"), "name": "r"}
    summary = conf.make_trainer(conf.double_config(tmp_path, output=out)).fit(dry_run=True)
    assert summary["dry_run"] and summary["preflight"]["total_s"] > 0
    assert not (tmp_path / "runs" / "r").exists()

    def fail(self: Any) -> int:
        raise DetrkitError("pretrained weights cannot be fetched offline")

    monkeypatch.setattr(Trainer, "_resolve_batch_size", fail)
    for _ in range(2):
        with pytest.raises(DetrkitError, match="offline"):
            conf.make_trainer(conf.double_config(tmp_path, output=out)).fit()
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_unreadable_images_are_skipped_and_counted(conf: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = _Unreadable(conf.SquaresDataset(32, seed=1), bad=set(range(8)))
    summary = _trainer_with(conf, conf.double_config(run, train={"epochs": 2}), train).fit()
    assert summary["skipped_images"] == 16  # 8 per epoch, every image once per epoch
    from detrkit.runs.metrics import read_metrics_csv

    assert [int(r["skipped_images"]) for r in read_metrics_csv(run / "metrics.csv")] == [8, 8]
    assert "8 unreadable images skipped" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["skipped_images"] == 16


@pytest.mark.parametrize("preflight", [True, False])
def test_no_readable_image_stops_before_training(conf: Any, tmp_path: Path, preflight: bool) -> None:
    train = _Unreadable(conf.SquaresDataset(16, seed=1), bad=set(range(16)))
    cfg = conf.double_config(tmp_path / "run", train={"epochs": 1, "preflight": preflight})
    with pytest.raises(DataError) as info:
        _trainer_with(conf, cfg, train).fit()
    assert "could be read" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # a failed start keeps no folder
