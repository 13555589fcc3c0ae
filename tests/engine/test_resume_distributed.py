"""Exact resume after SIGKILL, Ctrl-C handling, and 2-process DDP (gloo) against one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detrkit.runs.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("_run_double.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SECTIONS = {
    "train": {"epochs": 3, "checkpoint_every_steps": 2, "checkpoint_every": 0, "batch_size": 4},
    "optim": {"schedule": "cosine", "warmup_steps": 3},
}


def _run(
    out: Path, sections: dict, *extra: str, env: dict | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), json.dumps(sections), *extra],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(out: Path, sections: dict, *extra: str, sleep: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), json.dumps(sections), *extra],
        env={**ENV, "TINY_SLEEP": str(sleep)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_mid_epoch_checkpoint(
    proc: subprocess.Popen, last: Path, *, epoch: int, timeout: float = 180
) -> dict:
    """Poll ``last.pt`` until it was saved inside ``epoch`` (0-based) with some batches consumed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"training ended before the kill: {proc.stdout.read() if proc.stdout else ''}"
        )
        if last.is_file():
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
            if ckpt["epoch"] == epoch and ckpt["epoch_step"] > 0:
                return ckpt
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    ref = _run(tmp_path / "ref", SECTIONS, "--save-final", str(tmp_path / "ref.pt"))
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    proc = _start(out, SECTIONS, sleep=0.15)
    try:
        ckpt = _wait_for_mid_epoch_checkpoint(proc, out / "checkpoints" / "last.pt", epoch=1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < ckpt["epoch_step"] < 8
    resumed = _run(out, SECTIONS, "--resume", "--save-final", str(tmp_path / "resumed.pt"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_weights(torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt"))
    final = load_checkpoint(out / "checkpoints" / "last.pt")
    assert final["epoch"] == 3 and final["step"] == 24
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + one row per epoch, none duplicated by the resume
    ref_rows = (tmp_path / "ref" / "metrics.csv").read_text().strip().splitlines()
    for got, want in zip(rows[1:], ref_rows[1:], strict=True):  # same losses; only timings differ
        g, w = got.split(","), want.split(",")
        header = rows[0].split(",")
        for name, x, y in zip(header, g, w, strict=True):
            if name.startswith(("train/loss", "val/")):
                assert float(x) == pytest.approx(float(y), rel=1e-6), name


@pytest.mark.slow
def test_ctrl_c_saves_last_then_exits_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "int"
    sections = {**SECTIONS, "train": {**SECTIONS["train"], "checkpoint_every_steps": 0, "epochs": 2}}
    proc = _start(out, sections, "--no-val", sleep=0.15)
    try:
        deadline = time.monotonic() + 120
        log = out / "log.txt"
        while not log.is_file() or "preflight ok" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.6)  # a few steps into epoch 1
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in output
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 0 and 0 < ckpt["epoch_step"] < 8
    assert "interrupted: saved" in (out / "log.txt").read_text()
    resumed = _run(out, sections, "--resume", "--no-val")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(conf, tmp_path: Path) -> None:
    common = {"epochs": 1, "max_steps_per_epoch": 2, "checkpoint_every": 0, "clip_grad_norm": 0.5}
    single = {"train": {**common, "batch_size": 8}, "model": {"freeze_bn": True}}
    ddp = {"train": {**common, "batch_size": 4}, "model": {"freeze_bn": True}}
    one = _run(tmp_path / "one", single, "--no-val", "--save-final", str(tmp_path / "one.pt"))
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(SCRIPT),
        str(tmp_path / "two"),
        json.dumps(ddp),
        "--no-val",
        "--save-final",
        str(tmp_path / "two.pt"),
    ]
    two = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    env = json.loads((tmp_path / "two" / "env.json").read_text())
    assert env["num_processes"] == 2
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    torch.manual_seed(3)  # the seed make_trainer builds the double with
    init = conf.TinyDetector().state_dict()
    assert a.keys() == b.keys() == init.keys()
    assert any(not torch.equal(a[k], init[k]) for k in a)  # two steps did change the weights
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    ckpt = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 2
