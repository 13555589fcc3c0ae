"""``detrkit app``: the Streamlit web app for building area (serves on 127.0.0.1 only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import typer

from detrkit.errors import CheckpointError, DetrkitError


def register(app: typer.Typer) -> None:
    """Add the ``app`` command to the root app."""
    app.command("app")(app_cmd)


def streamlit_command(port: int, model: str | None = None) -> list[str]:
    """The ``python -m streamlit run ...`` command line for the app (headless, localhost, no telemetry)."""
    script = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    if model:
        cmd += ["--", "--model", model]
    return cmd


def app_cmd(
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port on 127.0.0.1."),
    model: str | None = typer.Option(
        None, "--model", help="Aerial run folder or checkpoint (default: built-in tiny model)."
    ),
) -> None:
    """Start the web app: upload an image, get buildings, areas, GeoJSON and CSV."""
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise DetrkitError("the web app needs streamlit: pip install 'detrkit[app]'") from None
    if model and not Path(model).exists():
        raise CheckpointError("no such run folder or checkpoint", path=model)
    ensure_port_free(port)
    typer.echo(f"detrkit app on http://127.0.0.1:{port}  (Ctrl+C to stop)")
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    cmd = streamlit_command(port, model)
    if os.name == "posix":
        # exec: the server *is* this process, so SIGTERM/SIGHUP/SIGINT sent to `detrkit app` reach
        # Streamlit itself and nothing is left running, re-parented to init, after a kill.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)
    proc = subprocess.Popen(cmd, env=env)  # Windows: no exec; stop the child on Ctrl+C
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        rc = proc.wait(timeout=10)
    raise typer.Exit(rc)


def ensure_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise one line when ``host:port`` is taken, before anything starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            raise DetrkitError(
                f"port {port} on {host} is already in use (another detrkit app?); choose one with --port"
            ) from None
