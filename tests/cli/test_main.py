"""The ``detrkit`` command root: version, help of every command, one-line user errors."""

from __future__ import annotations

import os
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


#: numeric options without a natural bound
UNBOUNDED_OPTIONS = {"--seed"}


def test_every_numeric_option_declares_its_range() -> None:
    from detrkit.cli.main import build_command

    root = build_command()
    missing = []
    for path in _all_command_paths(root):
        cmd = root
        for name in path:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        for param in cmd.params:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            numeric = annotation in (int, float, int | None, float | None)
            bounded = getattr(param, "min", None) is not None or getattr(param, "max", None) is not None
            if numeric and not bounded and not set(param.opts) & UNBOUNDED_OPTIONS:
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert len(_all_command_paths(root)) > 15
    assert missing == [], f"numeric options without min/max: {missing}"


def _run_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from detrkit.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["val", "--run", "r", "--batch-size", "0"],
        ["data", "subset", "--ann", "a.json", "--classes", "cat", "--out", "o.json", "--max-images", "-3"],
        ["aerial", "predict", "--source", "x.tif", "--out", "o", "--threshold", "-1"],
        ["aerial", "area", "--mask", "m.tif", "--gsd", "0"],
        ["predict", "--run", "r", "--source", "s", "--out", "o", "--batch-size", "0"],
        ["predict", "--run", "r", "--source", "s", "--out", "o", "--threshold", "1.5"],
        ["analyze", "--run", "r", "--iou", "0"],
        ["data", "shapes", "--train", "0"],
        ["eval", "--gt", "g", "--pred", "p", "--max-dets", "5"],
    ],
    ids=lambda a: " ".join(a[:2]) + " " + a[-2],
)
def test_out_of_range_option_is_a_usage_error_naming_it(
    args: list[str], tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run_in_process(args, capsys)
    assert code == 2
    assert "Traceback" not in err and f"Invalid value for '{args[-2]}'" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.epochs=-1", "data.shapes.trian=64"])
def test_bad_config_value_on_the_command_line_is_one_line(
    override: str, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run_in_process(["train", "--config", "demo", override], capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and override.split("=")[0] in lines[0], err
    assert list(tmp_path.iterdir()) == []  # no data generated, no run folder


def test_flags_show_no_value_placeholder() -> None:
    out = subprocess.run(
        [*DETRKIT, "predict", "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"}
    )
    flag_lines = [line for line in out.stdout.splitlines() if "--json" in line or "--no-draw" in line]
    assert len(flag_lines) == 2 and not any("<bool>" in line for line in flag_lines), out.stdout
    assert "<bool>" not in out.stdout
    assert "<float range> [0.0<=x<=1.0]" in out.stdout  # ranges are shown in the help


def test_config_with_resume_is_refused_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run_in_process(["train", "--config", "demo", "--resume", str(tmp_path / "run")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "drop --config" in lines[0] and "config.yaml" in lines[0], err
