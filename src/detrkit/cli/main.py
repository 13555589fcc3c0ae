"""The ``detrkit`` command: a thin typer front over the library.

Each command group lives in its own module under ``detrkit.cli`` and exposes
``register(app: typer.Typer) -> None``. Command modules parse options, call the library and print;
they hold no logic of their own. User errors (:class:`detrkit.errors.DetrkitError`) are printed as
one line on stderr, without a traceback, and the process exits with status 2.
"""

from __future__ import annotations

import functools
import os
import sys
from importlib import import_module

import click
import typer

from detrkit import __version__
from detrkit.errors import DetrkitError

# Command modules, in the order their commands appear in --help. Add a module here when it exists.
COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "models",
    "train",
    "runs",
    "evaluate",
    "predict",
    "export",
    "benchmark",
    "sweep",
    "aerial",
    "app",
    "synth",
    "analyze",
    "compare",
    "ablate",
)

app = typer.Typer(
    name="detrkit",
    help=(
        "Train, evaluate, analyse and deploy DETR-family detectors on COCO-format data, "
        "synthesize training data for rare classes, and measure built-up area from aerial images."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"detrkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """detrkit: DETR-family detection, rare-class synthesis and aerial building area."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        import_module(f"detrkit.cli.{name}").register(app)


_register_all()


@functools.cache
def build_command() -> typer.core.TyperGroup:
    """The click command of the app, with on/off flags shown without a value placeholder.

    typer prints ``<bool>`` beside every flag although ``--json true`` is not accepted; a flag's
    help shows its name (and ``--no-...``) only. Built once per process (it takes ~0.2 s).
    """
    command = typer.main.get_command(app)
    help_names = command.context_settings.get("help_option_names", ["--help"])
    stack = [command]
    while stack:
        cmd = stack.pop()
        stack.extend(getattr(cmd, "commands", {}).values())
        help_option = cmd.get_help_option(click.Context(cmd, help_option_names=help_names))
        for param in [*cmd.params, *([help_option] if help_option is not None else [])]:
            if getattr(param, "is_flag", False):
                param.metavar = ""
    return command  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``detrkit`` script.

    Click's standalone mode handles usage errors (exit 2) and ``--help``; user errors raised by the
    library (:class:`DetrkitError`) become one line on stderr and exit status 2, with no traceback.
    Set ``DETRKIT_DEBUG=1`` to see the traceback of a user error.
    """
    try:
        build_command().main(args=argv, prog_name="detrkit", standalone_mode=True)
    except DetrkitError as err:
        if os.environ.get("DETRKIT_DEBUG"):
            raise
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
