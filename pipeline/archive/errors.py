"""The write side's user-facing errors: a job that cannot start, and one line for a task's failure."""

from __future__ import annotations

from pipeline import sources
from pipeline.archive.config import ConfigError
from pipeline.storage import redact


class ArchiveError(Exception):
    """The job cannot start or go on (bad options, unreachable storage, codec cannot load); one line."""


def one_line(uri: str, exc: BaseException) -> str:
    """A user-facing line for a task error: the original exception's own message, never a traceback."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, (sources.SourceError, ConfigError)) or text.startswith(uri):
        return redact(text)
    return redact(f"{uri}: {type(cause).__name__}: {text}")
