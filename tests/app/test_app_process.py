"""``detrkit app`` as a process: a signal stops the whole server, a taken port is one line.

The server is started as a user would (``python -m detrkit.cli.main app``), then sent SIGTERM or
SIGHUP; afterwards no process serving that port may be alive (``/proc`` scanned for the port in
its command line) and the port must be free again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="scans /proc"),
    pytest.mark.timeout(300),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_serving(port: int) -> list[int]:
    """PIDs whose command line carries ``--server.port PORT`` (the Streamlit server of the app)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(
            a == b"--server.port" and b == str(port).encode() for a, b in zip(args, args[1:], strict=False)
        ):
            pids.append(int(entry.name))
    return pids


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"detrkit app exited early with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"port {port} not healthy after {timeout:.0f} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_stops_the_server_and_leaves_nothing(app_checkpoint: Path, sig: signal.Signals) -> None:
    pytest.importorskip("streamlit")
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "detrkit.cli.main",
        "app",
        "--port",
        str(port),
        "--model",
        str(app_checkpoint),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, proc)
        assert _processes_serving(port), "the server process was not found by the scan"
        proc.send_signal(sig)
        proc.wait(timeout=30)
        end = time.monotonic() + 10
        while _processes_serving(port) and time.monotonic() < end:
            time.sleep(0.2)
        assert _processes_serving(port) == [], f"left running after {sig.name}"
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        for pid in [proc.pid, *_processes_serving(port)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_port_in_use_is_one_line_before_anything_starts(app_checkpoint: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "detrkit.cli.main",
                "app",
                "--port",
                str(port),
                "--model",
                str(app_checkpoint),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2
    assert out.stdout == ""  # not even the "detrkit app on ..." banner
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "in use" in lines[0], out.stderr
    assert _processes_serving(port) == []
