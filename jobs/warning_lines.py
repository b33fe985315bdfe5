"""Warnings of the read side printed as one `note:` line each on stderr (never Python's warning
format with a file and line number), for the commands that read a whole archive."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def notes_for(*categories: type[Warning]) -> Iterator[None]:
    """Inside the block, warnings of `categories` are printed as `note: …` lines (each once); any
    other warning is shown as Python would."""
    from pipeline.store.storage import redact
    from pipeline.text import printable

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen: set[str] = set()
            for warning in caught:
                if issubclass(warning.category, categories):
                    text = printable(redact(str(warning.message)))
                    if text not in seen:
                        seen.add(text)
                        print(f"note: {text}", file=sys.stderr)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
