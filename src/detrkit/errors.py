"""User-facing errors.

Every error a user can cause (a missing file, a malformed annotation, a bad option) is raised as a
:class:`DetrkitError` subclass with a one-line message that names the file and what is wrong. The
CLI prints ``error: <message>`` without a traceback and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class DetrkitError(Exception):
    """Base class for errors caused by user input; the message is shown as-is to the user."""

    exit_code: int = 2

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        if path is not None and str(path) not in message:
            message = f"{path}: {message}"
        super().__init__(message)


class DataError(DetrkitError):
    """A dataset, annotation file or image is missing or malformed."""


class ImageError(DataError):
    """An image file is missing, unreadable, corrupt or truncated."""


class AnnotationError(DataError):
    """A COCO annotation or prediction file is malformed."""


class ConfigError(DetrkitError):
    """A config file or a ``key=value`` override is invalid."""


class CheckpointError(DetrkitError):
    """A checkpoint or run folder is missing, incomplete or incompatible."""


class TrainingError(DetrkitError):
    """Training cannot continue (e.g. too many non-finite losses in a row)."""
