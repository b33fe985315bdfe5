"""The write side's user-facing errors: a job that cannot start, and one line for a task's failure."""

from __future__ import annotations

from pipeline.archive.config import ConfigError
from pipeline.sources import media
from pipeline.store.storage import redact
from pipeline.text import printable  # a file may be named "a\nb.mp4"


class ArchiveError(Exception):
    """The job cannot start or go on (bad options, unreachable storage, codec cannot load); one line."""


def one_line(uri: str, exc: BaseException) -> str:
    """A user-facing line for a task error: the original exception's own message, never a traceback."""
    cause = getattr(exc, "cause", None) or exc
    text = one_line_text(str(cause), uri) or type(cause).__name__
    if isinstance(cause, (media.SourceError, ConfigError)) or text.startswith(printable(uri)):
        return redact(text)
    return redact(f"{printable(uri)}: {type(cause).__name__}: {text}")


def one_line_text(message: str, uri: str) -> str:
    """The first line of `message`, where a URI with line breaks in it counts as one line (escaped),
    so a failing file named "a\nb.mp4" keeps its reason instead of losing everything after the break."""
    if uri and uri in message and uri != printable(uri):
        message = message.replace(uri, printable(uri))
    text = message.strip()
    return text.splitlines()[0] if text else ""
