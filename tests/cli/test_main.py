"""The ``detrkit`` command root: version, help of every command, one-line user errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from detrkit import __version__
from detrkit.cli.main import app

DETRKIT = [sys.executable, "-m", "detrkit.cli.main"]


def _all_command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            paths.extend(_all_command_paths(sub, (*prefix, name)))
    return paths


def test_version() -> None:
    out = subprocess.run([*DETRKIT, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"detrkit {__version__}"


@pytest.mark.parametrize("path", _all_command_paths(typer.main.get_command(app)), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    # Every command documents itself: the help text has more than the usage line.
    assert len(result.output.strip().splitlines()) > 3


def test_unknown_command_is_a_usage_error() -> None:
    out = subprocess.run([*DETRKIT, "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
